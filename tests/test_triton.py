"""The Triton export and the SDK's tensor path (protocol="triton"), without a Triton server.

Each config.pbtxt must parse into Triton's own ModelConfig (tritonclient's protobuf); the network's
model.pt must be the archive's network. The client's tensor path runs the server's own pipeline
(u2net_client.imaging): the same hostile and unusual inputs through the handler's Segmenter and through
the SDK must give identical masks or the same INVALID_ARGUMENT. A small in-process KServe v2 server
running model.pt stands in for Triton, so the SDK's tensor calls are checked over gRPC without one
(tests/test_triton_server.py runs the real one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import sys
import zipfile
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml
from google.protobuf import json_format, text_format
from PIL import Image

from handler import cpu, engine, precision, triton
from handler.model import VARIANTS
from handler.pipeline import Segmenter, SegmentRequest, Task
from handler.settings import HandlerSettings, worker_threads
from tests import servekit as sk
from u2net_client import AsyncU2NetClient, Options, U2NetClient, U2NetError, _v2
from u2serve.core import imaging
from u2serve.core._generated import open_inference_grpc_pb2 as pb
from u2serve.core.errors import Code

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
    return torch.jit.load(str(repo / "u2netp_network" / "1" / "model.pt"), map_location="cpu").eval()


def parse_config(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_config_parses_into_tritons_model_config(repo, name):
    config = parse_config(repo / f"{name}{triton.NETWORK_SUFFIX}" / "config.pbtxt")
    size = VARIANTS[name].input_size
    assert config.name == f"{name}_network" == _v2.network_model(name) and config.platform == "pytorch_libtorch"
    assert config.max_batch_size == triton.TritonSettings().max_batch_size > 1
    # The segment model's batcher waits (10 ms on a GPU); the network, called with a whole batch, waits no more.
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), inp.data_type) == (_v2.TENSOR_INPUT, [3, size, size], model_config_pb2.TYPE_FP32)
    assert (out.name, list(out.dims), out.data_type) == (_v2.TENSOR_OUTPUT, [1, size, size], model_config_pb2.TYPE_FP32)
    assert config.parameters["INFERENCE_MODE"].string_value == "true"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_segment_config_parses_and_names_its_network(repo, name):
    config = parse_config(repo / name / "config.pbtxt")
    assert (config.name, config.backend, config.platform) == (name, triton.SEGMENT_BACKEND, "")
    assert config.max_batch_size > 1 and config.dynamic_batching.max_queue_delay_microseconds == 10_000
    assert [(t.name, t.data_type, list(t.dims), t.optional) for t in config.input] == [
        (_v2.IMAGE_INPUT, model_config_pb2.TYPE_STRING, [1], False),
        (_v2.REQUEST_INPUT, model_config_pb2.TYPE_STRING, [1], True),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        (_v2.RESPONSE_OUTPUT, model_config_pb2.TYPE_STRING, [1])
    ]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["network"] == f"{name}_network" and params["variant"] == name and params["device"] == "cuda"
    for backend in (triton.SEGMENT_BACKEND, triton.CPU_NETWORK_BACKEND):
        assert (Path(triton.__file__).parent / "triton_backends" / backend / "model.py").is_file()


def test_cpu_repository_runs_the_network_in_the_stand_in(tmp_path, model_store):
    settings = triton.TritonSettings.for_serving("cpu")
    triton.export_from_archive("u2netp", tmp_path, model_store / "u2netp.mar", settings)
    network = parse_config(tmp_path / "u2netp_network" / "config.pbtxt")
    assert (network.backend, network.platform) == (triton.CPU_NETWORK_BACKEND, "")
    assert [g.kind for g in network.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    segment = parse_config(tmp_path / "u2netp" / "config.pbtxt")
    assert segment.parameters["device"].string_value == "cpu"
    # describe() names the engine the stand-in loads on this CPU (the TorchServe worker's pick), and the
    # configured one when that is a fallback.
    configured = network.parameters["engine"].string_value
    runs = engine.runnable(engine.TORCHSCRIPT_BF16, torch.device("cpu"))
    also = "" if runs == configured else f"; configured: {configured}"
    stand_in = f"{triton.CPU_NETWORK_BACKEND}, CPU stand-in for libtorch"
    assert segment.parameters["engine"].string_value == f"{runs} ({stand_in}{also})"
    # TorchServe's CPU batching defaults (handler/build.py): batches of 8 after 20 ms, waited for once (by the
    # segment model's batcher), as TorchServe waits once per batch.
    assert segment.max_batch_size == network.max_batch_size == 8
    assert segment.dynamic_batching.max_queue_delay_microseconds == 20_000
    assert network.dynamic_batching.max_queue_delay_microseconds == 0


def test_cpu_stand_in_picks_the_engine_the_handler_picks(tmp_path, model_store, monkeypatch):
    """The CPU repository carries the archive's engine files and settings; load_network (the stand-in's
    choice) picks what the TorchServe handler picks on this CPU, and falls back the same way."""
    mar = model_store / "u2netp.mar"
    with zipfile.ZipFile(mar) as archive:
        handler = HandlerSettings.from_yaml(yaml.safe_load(archive.read("model-config.yaml"))["handler"])
        archived = {name: archive.read(name) for name in archive.namelist()}
    folder = triton.export_from_archive("u2netp", tmp_path, mar, triton.TritonSettings.for_serving("cpu"))
    # The config as Triton hands it to a Python-based backend: JSON with the proto's field names.
    config = json_format.MessageToDict(parse_config(folder / "config.pbtxt"), preserving_proto_field_name=True)
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params == {"engine": handler.engine, "threads": str(handler.threads)}
    assert handler.engine == engine.TORCHSCRIPT_BF16  # the CPU archives' default for the authors' U2NETP
    version = folder / triton.MODEL_VERSION
    files = {p.name: p.read_bytes() for p in version.iterdir()}
    assert files == {
        engine.file_name(each, triton.ENGINE_STEM): archived[engine.file_name(each, "u2netp")]
        for each in engine.chain(handler.engine)
    }
    assert "model.pt" in files  # libtorch's file name, as on a GPU

    # Threads as the handler's: the share of the cores per instance (per TorchServe worker), for both
    # models of the pair; a GPU repository's segment model keeps one.
    threads = worker_threads(handler.threads, 1)
    segment = json_format.MessageToDict(
        parse_config(tmp_path / "u2netp" / "config.pbtxt"), preserving_proto_field_name=True
    )
    assert triton.instance_threads(segment) == triton.instance_threads(config) == threads
    assert triton.instance_threads({**config, "instance_group": [{"count": 2}]}) == worker_threads(handler.threads, 2)
    gpu = triton.segment_config_pbtxt("u2netp", triton.TritonSettings(), "w")
    gpu_segment = json_format.MessageToDict(
        text_format.Parse(gpu, model_config_pb2.ModelConfig()), preserving_proto_field_name=True
    )
    assert triton.instance_threads(gpu_segment) == 1

    written = dataclasses.replace(triton.TritonSettings.for_serving("cpu"), engine=handler.engine)

    def load(changes: dict[str, str] | None = None) -> tuple[engine.Engine, int]:
        parameters = {k: {"string_value": v} for k, v in {**params, **(changes or {})}.items()}
        loaded = triton.load_network({**config, "parameters": parameters}, version)
        # The segment model's config (describe) names what the stand-in then loads from the same folder.
        assert changes or triton.stand_in_engine(written, version) == loaded[0].name
        return loaded

    try:
        fp32_pick = engine.runnable(engine.MNN, torch.device("cpu"))
        assert triton.load_network(config, version)[0].name == engine.runnable(handler.engine, torch.device("cpu"))
        assert load()[1] == threads and load({"threads": "1"})[1] == 1
        with monkeypatch.context() as m:
            m.setattr(precision, "native_bf16", lambda: False)
            m.setattr(cpu, "intel_avx512", lambda: False)  # an AVX2-only or AMD CPU: MNN
            assert load()[0].name == engine.MNN
            m.setattr(cpu, "intel_avx512", lambda: True)  # an Intel CPU with AVX-512, no AMX: OpenVINO
            assert load()[0].name == engine.OPENVINO
        (version / "model.bf16.pt").unlink()
        assert load()[0].name == fp32_pick
        (version / "model.mnn").unlink()
        assert load()[0].name == engine.OPENVINO
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "openvino", None)  # a server without OpenVINO: onnxruntime
            assert load()[0].name == engine.ONNXRUNTIME
        (version / "model.onnx").unlink()
        assert load()[0].name == engine.TORCHSCRIPT
        with pytest.raises(engine.EngineError, match="unknown engine"):
            load({"engine": "tensorrt"})
    finally:
        torch.set_num_threads(threads)
    line = triton.network_log_line("u2netp_network", engine.ONNXRUNTIME, handler.engine, threads)
    log_text = f"I1202 stub] {line}\nI1202 other: torchscript engine (configured: x)\n"
    assert triton.loaded_engine(log_text, "u2netp_network") == engine.ONNXRUNTIME
    assert triton.loaded_engine(log_text, "u2net_network") is None


def test_settings_fail_at_once():
    with pytest.raises(ValueError, match="max_batch_size"):
        triton.TritonSettings(max_batch_size=0)
    with pytest.raises(ValueError, match="KIND_CPU"):
        triton.TritonSettings(kind="KIND_TPU")
    with pytest.raises(ValueError, match="threads"):
        triton.TritonSettings(threads=-1)
    with pytest.raises(engine.EngineError, match="unknown engine"):
        triton.TritonSettings(engine="tensorrt")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_model_pt_gives_the_archives_d0(repo, model_store, name):
    exported = torch.jit.load(str(repo / f"{name}_network" / "1" / "model.pt"), map_location="cpu").eval()
    size = VARIANTS[name].input_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(7))
    # Unoptimised execution skips TorchScript's profiling runs; the graph, and so d0, stays the same.
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        d0 = exported(x)
        assert d0.shape == (1, 1, size, size)
        assert torch.equal(d0, archived_model(model_store, name)(x))


def test_client_pipeline_reproduces_the_authors_masks(u2netp, reference_dir):
    paths = sorted((reference_dir / "images").iterdir())
    assert len(paths) == 18
    errors = {}
    for start in range(0, len(paths), 6):
        chunk = paths[start : start + 6]
        decoded = [imaging.decode_image(p.read_bytes(), imaging.DEFAULT_MAX_PIXELS) for p in chunk]
        pixels = imaging.preprocess([d.rgb for d in decoded], imaging.INPUT_SIZE, imaging.MEAN, imaging.STD)
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            d0 = u2netp(torch.from_numpy(pixels)).numpy()
        masks = imaging.masks_from_output(d0, [d.size for d in decoded])
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
    server.add_generic_rpc_handlers((FakeTriton("u2netp_network", u2netp).handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture(scope="module")
def triton_client(fake_triton):
    with U2NetClient(fake_triton, fake_triton, token="unused", timeout=60, protocol="triton") as client:
        yield client


def handler_outcome(u2netp, image: bytes, task: Task, options: Options):
    """What u2serve's handler makes of a request, run in-process."""
    segmenter = Segmenter(u2netp, VARIANTS["u2netp"], torch.device("cpu"), imaging.DEFAULT_MAX_PIXELS)
    with torch.jit.optimized_execution(False):
        (outcome,), _ = segmenter.run([SegmentRequest(task, image, options)])
    return outcome


def served_by_torchserve(u2netp, image: bytes, task: Task, options: Options):
    outcome = handler_outcome(u2netp, image, task, options)
    assert outcome.error is None
    return outcome


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _unusual_inputs(reference_dir: Path) -> dict[str, bytes]:
    photo = Image.open(reference_dir / "images" / "girl.png").convert("RGB").resize((160, 120))
    grey = np.asarray(photo.convert("L"))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return {
        "float TIFF (0..1)": _save(Image.fromarray(grey.astype(np.float32) / 255.0, "F"), "TIFF"),
        "16-bit PNG": _save(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "CMYK JPEG": _save(photo.convert("CMYK"), "JPEG", quality=95),
        "palette PNG with transparency": _save(palette, "PNG", transparency=0),
        "EXIF-rotated JPEG": _save(photo, "JPEG", quality=95, exif=exif),
        "decompression bomb": sk.png_declaring(60000, 60000),
        "text": b"this is not an image",
    }


def test_sdk_v2_metadata_against_triton(triton_client):
    assert triton_client.server_live() and triton_client.server_ready() and triton_client.model_ready("u2netp")
    meta = triton_client.model_metadata("u2netp")
    assert meta.platform == "pytorch_libtorch" and meta.inputs[0].shape == (-1, 3, 320, 320)


def test_sdk_mask_and_cutout_over_the_tensor_path_equal_the_handlers(triton_client, u2netp, reference_dir):
    image = (reference_dir / "images" / "girl.png").read_bytes()
    mask = triton_client.mask(image, crop=True, crop_margin=4)
    want = served_by_torchserve(u2netp, image, Task.MASK, Options(crop=True, crop_margin=4))
    assert mask.image.mode == "L" and mask.model == "u2netp" and mask.model_version == "1"
    assert mask.input_size == (want.width, want.height)
    assert (mask.box.x, mask.box.y, mask.box.width, mask.box.height) == (
        want.box.x, want.box.y, want.box.width, want.box.height,
    )  # fmt: skip
    got, ref = mask.array.astype(int), np.asarray(Image.open(io.BytesIO(want.image))).astype(int)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1 and np.abs(got - ref).mean() < 0.01
    cutout = triton_client.cutout(image, background=(0, 0, 255))
    want = served_by_torchserve(u2netp, image, Task.CUTOUT, Options(background=(0, 0, 255)))
    got, ref = cutout.array.astype(int), np.asarray(Image.open(io.BytesIO(want.image))).astype(int)
    assert cutout.image.mode == "RGB" and got.shape == ref.shape and np.abs(got - ref).max() <= 2


def test_same_inputs_through_the_handler_and_the_sdk_tensor_path(triton_client, u2netp, reference_dir):
    """One pipeline: the handler and the SDK's tensor path give identical masks, or the same refusal."""
    for name, data in _unusual_inputs(reference_dir).items():
        served = handler_outcome(u2netp, data, Task.MASK, Options())
        try:
            mask = triton_client.mask(data)
        except U2NetError as exc:
            assert served.error is not None, f"{name}: the SDK refused ({exc}), the handler served"
            assert (exc.code, served.error.code) == (grpc.StatusCode.INVALID_ARGUMENT, Code.INVALID_ARGUMENT), name
            assert exc.message == served.error.message, name
            continue
        assert served.error is None, f"{name}: the handler refused ({served.error}), the SDK served"
        want = np.asarray(Image.open(io.BytesIO(served.image)))
        assert mask.array.shape == want.shape, name
        assert np.array_equal(mask.array, want), f"{name}: {np.abs(mask.array.astype(int) - want).max()}"
        assert mask.input_size == (served.width, served.height), name


def test_sdk_tensor_path_errors(triton_client):
    with pytest.raises(U2NetError, match="not a recognised image") as err:  # the server's own message
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
