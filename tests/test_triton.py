"""The Triton export and the SDK's tensor path (protocol="triton"), without a Triton server.

config.pbtxt must parse into Triton's own ModelConfig (tritonclient's protobuf); model.pt must be the
archive's network; the client's numpy pre/postprocessing must match the handler's torch versions and
the authors' masks. A small in-process KServe v2 server running model.pt stands in for Triton, so the
SDK's mask/cutout calls are checked end to end over gRPC.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image

from handler import transforms as T
from handler import triton
from handler.model import VARIANTS
from handler.pipeline import Segmenter
from handler.requests import Options as HandlerOptions
from handler.requests import SegmentRequest, Task
from u2net_client import AsyncU2NetClient, U2NetClient, U2NetError, _tensor, _v2
from u2net_client._generated import open_inference_grpc_pb2 as pb
from u2net_client._request import Options

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="pip install --no-deps tritonclient==2.73.0 python-rapidjson"
)


def archived_model(store: Path, name: str) -> torch.jit.ScriptModule:
    with zipfile.ZipFile(store / f"{name}.mar") as mar:
        serialized = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        return torch.jit.load(io.BytesIO(mar.read(serialized)), map_location="cpu").eval()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, model_store) -> Path:
    out = tmp_path_factory.mktemp("triton_repo")
    for name in VARIANTS:
        triton.export_from_archive(name, out, model_store / f"{name}.mar", triton.TritonSettings())
    return out


@pytest.fixture(scope="module")
def u2netp(repo) -> torch.jit.ScriptModule:
    return torch.jit.load(str(repo / "u2netp" / "1" / "model.pt"), map_location="cpu").eval()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_config_parses_into_tritons_model_config(repo, name):
    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    size = VARIANTS[name].input_size
    assert config.name == name and config.platform == "pytorch_libtorch"
    assert config.max_batch_size == triton.TritonSettings().max_batch_size > 1
    assert config.dynamic_batching.max_queue_delay_microseconds == 10_000
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), inp.data_type) == (_v2.TENSOR_INPUT, [3, size, size], model_config_pb2.TYPE_FP32)
    assert (out.name, list(out.dims), out.data_type) == (_v2.TENSOR_OUTPUT, [1, size, size], model_config_pb2.TYPE_FP32)
    assert config.parameters["INFERENCE_MODE"].string_value == "true"


def test_settings_fail_at_once():
    with pytest.raises(ValueError, match="max_batch_size"):
        triton.TritonSettings(max_batch_size=0)
    with pytest.raises(ValueError, match="KIND_CPU"):
        triton.TritonSettings(kind="KIND_TPU")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_model_pt_gives_the_archives_d0(repo, model_store, name):
    exported = torch.jit.load(str(repo / name / "1" / "model.pt"), map_location="cpu").eval()
    size = VARIANTS[name].input_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(7))
    # Unoptimised execution skips TorchScript's profiling runs; the graph, and so d0, stays the same.
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        d0 = exported(x)
        assert d0.shape == (1, 1, size, size)
        assert torch.equal(d0, archived_model(model_store, name)(x))


def test_client_preprocess_matches_the_handlers(reference_dir):
    for path in sorted((reference_dir / "images").iterdir()):
        data = path.read_bytes()
        ours, theirs = _tensor.decode(data), T.decode_image(data, 25_000_000)
        assert np.array_equal(ours.rgb, theirs.rgb), path.name
        assert (ours.alpha is None) == (theirs.alpha is None), path.name
        want = T.preprocess([theirs.rgb], 320, _tensor.MEAN, _tensor.STD).numpy()
        assert np.abs(_tensor.preprocess([ours.rgb]) - want).max() < 1e-4, path.name


def test_client_postprocess_matches_the_handlers():
    d0 = torch.rand(3, 1, 320, 320, generator=torch.Generator().manual_seed(1))
    d0[2] = 0.25  # a flat map: all zeros, not a division by zero
    sizes = [(500, 333), (37, 81), (64, 64)]
    for ours, theirs in zip(_tensor.masks_from_output(d0.numpy(), sizes), T.masks_from_output(d0, sizes), strict=True):
        assert np.array_equal(ours, theirs)


@pytest.mark.parametrize(
    "options",
    [Options(), Options(threshold=0.5), Options(crop=True, crop_margin=7), Options(background="#10ff20", crop=True)],
)
def test_client_compose_matches_the_pipeline(options):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = rng.integers(100, 256, (20, 30), dtype=np.uint8)
    decoded = _tensor.Decoded(rgb, alpha)
    for cutout in (False, True):
        ours, box = _tensor.compose(decoded, mask, cutout, options)
        ref_box = T.bounding_box(mask, 0.5)
        assert box == (ref_box.x, ref_box.y, ref_box.width, ref_box.height)
        m = T.apply_threshold(mask, options.threshold) if options.threshold is not None else mask
        bg = tuple(int(options.background[i : i + 2], 16) for i in (1, 3, 5)) if options.background else None
        want = T.cutout(rgb, m, alpha, bg) if cutout else m
        if options.crop:
            want = T.crop(want, T.expand_box(ref_box, options.crop_margin, 64, 48))
        assert np.array_equal(ours, want)


def test_client_pipeline_reproduces_the_authors_masks(u2netp, reference_dir):
    paths = sorted((reference_dir / "images").iterdir())
    assert len(paths) == 18
    errors = {}
    for start in range(0, len(paths), 6):
        chunk = paths[start : start + 6]
        decoded = [_tensor.decode(p.read_bytes()) for p in chunk]
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            d0 = u2netp(torch.from_numpy(_tensor.preprocess([d.rgb for d in decoded]))).numpy()
        masks = _tensor.masks_from_output(d0, [d.size for d in decoded])
        for path, mask in zip(chunk, masks, strict=True):
            published = np.asarray(Image.open(reference_dir / "u2netp_masks" / f"{path.stem}.png").convert("L"))
            assert mask.shape == published.shape
            errors[path.name] = float(np.abs(mask.astype(np.float64) - published).mean() / 255.0)
    worst = max(errors, key=errors.get)
    assert sum(errors.values()) / len(errors) <= 0.001, errors
    assert errors[worst] <= 0.002, f"{worst}: {errors[worst]:.5f}"


# ---- the SDK over gRPC, against a stand-in for Triton ---------------------------------------------


class FakeTriton:
    """Triton's GRPCInferenceService for one libtorch model: raw FP32 in, raw FP32 out, as Triton does it."""

    def __init__(self, name: str, model: torch.jit.ScriptModule) -> None:
        self.name, self.model = name, model

    def infer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        if request.model_name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.model_name}' is not found")
        (tensor,) = request.inputs
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(tuple(tensor.shape))
        with torch.inference_mode():
            d0 = self.model(torch.from_numpy(x.copy())).numpy()
        out = pb.ModelInferResponse.InferOutputTensor(name=_v2.TENSOR_OUTPUT, datatype="FP32", shape=list(d0.shape))
        return pb.ModelInferResponse(
            model_name=self.name, model_version="1", outputs=[out], raw_output_contents=[d0.astype("<f4").tobytes()]
        )

    def metadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        spec = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.name,
            versions=["1"],
            platform="pytorch_libtorch",
            inputs=[spec(name=_v2.TENSOR_INPUT, datatype="FP32", shape=[-1, 3, 320, 320])],
            outputs=[spec(name=_v2.TENSOR_OUTPUT, datatype="FP32", shape=[-1, 1, 320, 320])],
        )

    def ready(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self.name)

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, request_type):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request_type.FromString, response_serializer=lambda m: m.SerializeToString()
            )

        return grpc.method_handlers_generic_handler(
            _v2.TRITON_SERVICE,
            {
                "ServerLive": unary(lambda r, c: pb.ServerLiveResponse(live=True), pb.ServerLiveRequest),
                "ServerReady": unary(lambda r, c: pb.ServerReadyResponse(ready=True), pb.ServerReadyRequest),
                "ModelReady": unary(self.ready, pb.ModelReadyRequest),
                "ModelMetadata": unary(self.metadata, pb.ModelMetadataRequest),
                "ModelInfer": unary(self.infer, pb.ModelInferRequest),
            },
        )


@pytest.fixture(scope="module")
def fake_triton(u2netp):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((FakeTriton("u2netp", u2netp).handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture(scope="module")
def triton_client(fake_triton):
    with U2NetClient(fake_triton, fake_triton, token="unused", timeout=60, protocol="triton") as client:
        yield client


def served_by_torchserve(u2netp, image: bytes, task: Task, options: HandlerOptions):
    """What u2serve's handler answers for the same request, run in-process."""
    segmenter = Segmenter(u2netp, VARIANTS["u2netp"], torch.device("cpu"), 25_000_000)
    (outcome,), _ = segmenter.run([SegmentRequest(task, image, options)])
    assert outcome.error is None
    return outcome


def test_sdk_v2_metadata_against_triton(triton_client):
    assert triton_client.server_live() and triton_client.server_ready() and triton_client.model_ready("u2netp")
    meta = triton_client.model_metadata("u2netp")
    assert meta.platform == "pytorch_libtorch" and meta.inputs[0].shape == (-1, 3, 320, 320)


def test_sdk_mask_and_cutout_over_the_tensor_path_equal_the_handlers(triton_client, u2netp, reference_dir):
    image = (reference_dir / "images" / "girl.png").read_bytes()
    mask = triton_client.mask(image, crop=True, crop_margin=4)
    want = served_by_torchserve(u2netp, image, Task.MASK, HandlerOptions(crop=True, crop_margin=4))
    assert mask.image.mode == "L" and mask.model == "u2netp" and mask.model_version == "1"
    assert mask.input_size == (want.width, want.height)
    assert (mask.box.x, mask.box.y, mask.box.width, mask.box.height) == (
        want.box.x, want.box.y, want.box.width, want.box.height,
    )  # fmt: skip
    got, ref = mask.array.astype(int), np.asarray(Image.open(io.BytesIO(want.png))).astype(int)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1 and np.abs(got - ref).mean() < 0.01
    cutout = triton_client.cutout(image, background=(0, 0, 255))
    want = served_by_torchserve(u2netp, image, Task.CUTOUT, HandlerOptions(background=(0, 0, 255)))
    got, ref = cutout.array.astype(int), np.asarray(Image.open(io.BytesIO(want.png))).astype(int)
    assert cutout.image.mode == "RGB" and got.shape == ref.shape and np.abs(got - ref).max() <= 2


def test_sdk_tensor_path_errors(triton_client):
    with pytest.raises(U2NetError, match="could not decode") as err:
        triton_client.mask(b"not an image")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(U2NetError, match="threshold") as err:
        triton_client.mask(_png(), threshold=2.0)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(U2NetError) as err:
        triton_client.mask(_png(), model="u2nope")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_async_sdk_tensor_path(fake_triton):
    async def go():
        async with AsyncU2NetClient(fake_triton, fake_triton, token="unused", protocol="triton") as client:
            return await client.mask_many([_png(), _png()], concurrency=2), await client.server_ready()

    results, ready = asyncio.run(go())
    assert ready and all(r.array.shape == (48, 64) for r in results)


def test_unknown_protocol_says_what_is_accepted():
    with pytest.raises(U2NetError, match="accepted: 'torchserve'"):
        U2NetClient(protocol="grpc")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()
