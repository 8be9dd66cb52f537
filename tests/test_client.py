"""The client SDK without a server: requests, responses, errors, retries, auth, images, the command line."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from handler import codec
from handler.pipeline import Task
from u2net_client import KEY_FILE_ENV, CutoutResult, MaskResult, RetryPolicy, U2NetClient, U2NetError, _retry, cli
from u2net_client import _management as mgmt
from u2net_client._auth import Credentials, find_key_file
from u2net_client._concurrency import aordered_map, ordered_map
from u2net_client._errors import from_rpc_error
from u2net_client._request import CUTOUT, MASK, build_request, parse_response
from u2net_client.options import Options, parse_color
from u2serve.core._generated import inference_pb2, u2serve_pb2
from u2serve.core.errors import Code, CoreError
from u2serve.core.image import image_bytes

INVALID = grpc.StatusCode.INVALID_ARGUMENT
LIMIT = 32 * 1024 * 1024


class FakeRpcError(grpc.RpcError):
    """What a failed stub call raises: an RpcError that is also a grpc.Call."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


# ---- requests ----------------------------------------------------------------------------------


def test_request_carries_every_option_in_the_form_the_handler_parses():
    options = Options(
        background="#102030", threshold=0.4, crop=True, crop_margin=7, box_threshold=0.25, png_compression=9
    )
    req = build_request(CUTOUT, b"imagebytes", "u2net", "2.0", options, LIMIT)
    assert (req.model_name, req.model_version, list(req.input)) == ("u2net", "2.0", ["u2serve"])
    parsed = codec.for_row(dict(req.input)).parse()
    assert parsed.task == Task.CUTOUT
    assert parsed.image == b"imagebytes"
    assert parsed.options.threshold == pytest.approx(0.4)  # a float32 on the wire
    assert replace(parsed.options, threshold=0.4) == Options(
        background=(16, 32, 48), threshold=0.4, crop=True, crop_margin=7, box_threshold=0.25, png_compression=9
    )


def test_request_defaults_leave_options_unset():
    req = build_request(MASK, b"x", "u2netp", None, Options(), LIMIT)
    msg = u2serve_pb2.SegmentRequest.FromString(req.input["u2serve"])
    assert msg.task == u2serve_pb2.MASK and req.model_version == ""
    assert not msg.options.HasField("background") and not msg.options.HasField("threshold")
    assert not msg.options.HasField("png_compression")
    assert codec.for_row(dict(req.input)).parse().options == Options()


@pytest.mark.parametrize("color", [(1, 2, 3), "#010203", "010203", "1,2,3", " 1, 2, 3 "])
def test_colours_in_every_accepted_form(color):
    assert parse_color(color) == (1, 2, 3)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"background": (0, 0, 256)}, r"background=\(0, 0, 256\).*0-255"),
        ({"background": "red"}, r"background='red'.*#rrggbb"),
        ({"background": (1, 2)}, r"background"),
        ({"threshold": 1.5}, r"threshold=1.5.*0.0 to 1.0"),
        ({"threshold": True}, r"threshold=True"),
        ({"box_threshold": -0.1}, r"box_threshold=-0.1"),
        ({"crop_margin": -1}, r"crop_margin=-1.*>= 0"),
        ({"png_compression": 10}, r"png_compression=10.*0 \(fastest\) to 9"),
    ],
)
def test_bad_options_fail_before_sending(options, pattern):
    # Options are checked where they enter, on construction: nothing is built or sent.
    with pytest.raises(U2NetError, match=pattern) as info:
        build_request(CUTOUT, b"x", "u2netp", None, Options(**options), LIMIT)
    assert info.value.code == INVALID


def test_empty_image_empty_model_and_oversize_request_are_invalid():
    with pytest.raises(U2NetError, match="empty"):
        build_request(MASK, b"", "u2netp", None, Options(), LIMIT)
    with pytest.raises(U2NetError, match="model is empty"):
        build_request(MASK, b"x", "", None, Options(), LIMIT)
    with pytest.raises(U2NetError, match=r"over the server's request limit of 100 bytes.*max_request_size") as info:
        build_request(MASK, b"x" * 200, "u2netp", None, Options(), 100)
    assert info.value.code == INVALID


# ---- responses ---------------------------------------------------------------------------------


def reply(**fields: object) -> inference_pb2.PredictionResponse:
    return inference_pb2.PredictionResponse(prediction=u2serve_pb2.SegmentResponse(**fields).SerializeToString())


def test_mask_response_becomes_a_typed_result():
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    result = parse_response(
        reply(
            task=u2serve_pb2.MASK, image=png(mask), width=4, height=3, model_name="u2netp", model_version="1.0",
            weights="random (seed 0)", box=u2serve_pb2.Box(x=1, y=0, width=3, height=2),
            timings_ms={"inference": 12.5}, batch_size=3, output_width=4, output_height=3,
        ),
        "u2netp",
        MaskResult,
    )  # fmt: skip
    assert isinstance(result, MaskResult)
    assert result.image.mode == "L" and result.image.size == (4, 3) == result.input_size
    np.testing.assert_array_equal(result.array, mask)
    assert (result.model, result.model_version, result.weights, result.batch_size) == (
        "u2netp", "1.0", "random (seed 0)", 3
    )  # fmt: skip
    assert result.box is not None and result.box.as_ltrb() == (1, 0, 4, 2)
    assert result.timings == {"inference": 12.5}


def test_cutout_response_without_box():
    rgba = np.zeros((2, 2, 4), np.uint8)
    result = parse_response(reply(task=u2serve_pb2.CUTOUT, image=png(rgba), width=2, height=2), "m", CutoutResult)
    assert result.box is None and result.image.mode == "RGBA" and result.array.shape == (2, 2, 4)
    assert result.model == "m"


@pytest.mark.parametrize(
    ("number", "code"),
    [(3, INVALID), (5, grpc.StatusCode.NOT_FOUND), (8, grpc.StatusCode.RESOURCE_EXHAUSTED),
     (13, grpc.StatusCode.INTERNAL), (99, grpc.StatusCode.UNKNOWN)],
)  # fmt: skip
def test_error_in_the_response_is_raised_with_its_code(number, code):
    with pytest.raises(U2NetError, match="not a recognised image") as info:
        parse_response(reply(error=u2serve_pb2.Error(code=number, message="not a recognised image")), "m", MaskResult)
    assert info.value.code == code and info.value.message == "not a recognised image"


def test_garbage_response_is_internal():
    garbage = inference_pb2.PredictionResponse(prediction=b"\xff\xff\xff")
    with pytest.raises(U2NetError, match=r"not a u2serve.v1.SegmentResponse") as info:
        parse_response(garbage, "m", MaskResult)
    assert info.value.code == grpc.StatusCode.INTERNAL
    with pytest.raises(U2NetError, match="without an image"):
        parse_response(reply(width=3), "m", MaskResult)


# ---- errors ------------------------------------------------------------------------------------


def mapped(code: grpc.StatusCode, details: str, **kw: object) -> U2NetError:
    return from_rpc_error(FakeRpcError(code, details), target="host:7070", credentials="the key file k.json", **kw)


def test_refused_token_says_which_key_was_used_and_how_to_fix_it():
    err = mapped(grpc.StatusCode.PERMISSION_DENIED, "Token Authorization failed. Token either incorrect")
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert "host:7070 refused the token (the key file k.json)" in err.message
    assert "U2SERVE_KEY_FILE" in err.message and "key_file.json" in err.message


def test_unknown_model_is_not_found_without_the_java_class():
    err = mapped(
        grpc.StatusCode.INTERNAL, "Model not found: nosuch\norg.pytorch.serve.archive.model.ModelNotFoundException"
    )
    assert (err.code, err.message) == (grpc.StatusCode.NOT_FOUND, "Model not found: nosuch")
    err = mapped(grpc.StatusCode.INTERNAL, "Model version: 9 does not exist\norg.x.ModelVersionNotFoundException")
    assert err.code == grpc.StatusCode.NOT_FOUND


def test_disabled_model_api_says_how_to_enable_it():
    err = mapped(
        grpc.StatusCode.PERMISSION_DENIED, "Model API disabled\norg.pytorch.serve.archive.model.ModelException"
    )
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert "enable_model_api=true" in err.message and "org.pytorch" not in err.message


def test_unavailable_and_deadline_messages():
    err = mapped(grpc.StatusCode.UNAVAILABLE, "failed to connect", attempts=4)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.message == "cannot reach u2serve at host:7070 after 4 attempts: failed to connect"
    err = mapped(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", timeout=2.5)
    assert "within 2.5 s" in err.message
    assert str(err).startswith("DEADLINE_EXCEEDED: ")


def test_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(U2NetError(INVALID, "bad")))
    assert (err.code, err.message) == (INVALID, "bad")


# ---- retries -----------------------------------------------------------------------------------


class Flaky:
    """Fails with the given codes, in turn, then answers "ok"."""

    def __init__(self, *codes: grpc.StatusCode, details: str = "") -> None:
        self.codes, self.details, self.timeouts = list(codes), details, []

    def __call__(self, timeout: float | None) -> str:
        self.timeouts.append(timeout)
        if self.codes:
            raise FakeRpcError(self.codes.pop(0), self.details)
        return "ok"


def no_jitter(**kw: object) -> RetryPolicy:
    return RetryPolicy(jitter=0.0, **kw)


def to_error(exc: grpc.RpcError, attempts: int) -> U2NetError:
    return U2NetError(exc.code(), f"after {attempts}")


def test_unavailable_and_resource_exhausted_are_retried_with_growing_backoff():
    sleeps: list[float] = []
    flaky = Flaky(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
    policy = no_jitter(max_attempts=4, initial_backoff=0.1, multiplier=2.0, max_backoff=0.3)
    assert _retry.call(flaky, policy, 60.0, to_error, sleep=sleeps.append) == "ok"
    assert sleeps == pytest.approx([0.1, 0.2, 0.3])
    assert all(t is not None and 0 < t <= 60.0 for t in flaky.timeouts)


@pytest.mark.parametrize(
    "code", [INVALID, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL]
)
def test_other_codes_are_never_retried(code):
    flaky, sleeps = Flaky(code), []
    with pytest.raises(U2NetError, match="after 1"):
        _retry.call(flaky, no_jitter(), 60.0, to_error, sleep=sleeps.append)
    assert len(flaky.timeouts) == 1 and sleeps == []


def test_oversize_message_is_not_retried():
    flaky = Flaky(grpc.StatusCode.RESOURCE_EXHAUSTED, details="Received message larger than max (9 vs. 4)")
    with pytest.raises(U2NetError):
        _retry.call(flaky, no_jitter(), 60.0, to_error, sleep=lambda s: None)
    assert len(flaky.timeouts) == 1


def test_retries_stop_after_max_attempts_and_at_the_deadline():
    flaky = Flaky(*[grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(U2NetError, match="after 3"):
        _retry.call(flaky, no_jitter(max_attempts=3, initial_backoff=0.0), 60.0, to_error, sleep=lambda s: None)
    flaky = Flaky(*[grpc.StatusCode.UNAVAILABLE] * 10)
    started = time.monotonic()
    with pytest.raises(U2NetError):
        _retry.call(flaky, no_jitter(max_attempts=10, initial_backoff=0.05), 0.12, to_error)
    assert time.monotonic() - started < 0.5 and len(flaky.timeouts) < 10


def test_async_retry_loop_matches():
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    flaky = Flaky(grpc.StatusCode.UNAVAILABLE)

    async def attempt(timeout: float | None) -> str:
        return flaky(timeout)

    assert asyncio.run(_retry.acall(attempt, no_jitter(initial_backoff=0.1), None, to_error, sleep=sleep)) == "ok"
    assert sleeps == [0.1] and flaky.timeouts == [None, None]


def test_jitter_stays_within_its_fraction_and_bad_policies_are_refused():
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=1.0, jitter=0.2)
    assert all(0.8 <= policy.backoff(1) <= 1.2 for _ in range(100))
    with pytest.raises(U2NetError, match="max_attempts=0"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(U2NetError, match="initial_backoff <= max_backoff"):
        RetryPolicy(initial_backoff=5.0, max_backoff=1.0)


# ---- auth --------------------------------------------------------------------------------------


def write_keys(path: Path, inference: str = "inf", management: str = "mgmt") -> Path:
    keys = {
        "management": {"key": management, "expiration time": "x"},
        "inference": {"key": inference},
        "API": {"key": "a"},
    }
    path.write_text(json.dumps(keys))
    return path


def test_key_file_discovery_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_key_file(None, environ={}) is None
    (tmp_path / "var").mkdir()
    default = write_keys(tmp_path / "var" / "key_file.json")
    assert find_key_file(None, environ={}) == Path("var/key_file.json")
    env_file = write_keys(tmp_path / "env.json")
    assert find_key_file(None, environ={KEY_FILE_ENV: str(env_file)}) == env_file
    assert find_key_file(default, environ={KEY_FILE_ENV: str(env_file)}) == default


def test_a_named_key_file_must_exist(tmp_path):
    with pytest.raises(U2NetError, match=r"key_file='.*nope.json': no such file") as info:
        find_key_file(tmp_path / "nope.json", environ={})
    assert info.value.code == INVALID
    with pytest.raises(U2NetError, match=f"{KEY_FILE_ENV}="):
        find_key_file(None, environ={KEY_FILE_ENV: str(tmp_path / "nope.json")})


def test_each_api_gets_its_own_key_and_tokens_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./var/key_file.json here, even after `make serve` wrote the checkout's
    creds = Credentials.resolve(key_file=write_keys(tmp_path / "k.json"), environ={})
    assert creds.metadata("inference") == (("authorization", "Bearer inf"),)
    assert creds.metadata("management") == (("authorization", "Bearer mgmt"),)
    assert "the management key from" in creds.describe("management")
    creds = Credentials.resolve(token="t1", key_file=tmp_path / "k.json", environ={})
    assert creds.metadata("inference") == (("authorization", "Bearer t1"),)
    assert creds.metadata("management") == (("authorization", "Bearer mgmt"),)
    assert Credentials.resolve(environ={}).metadata("inference") == ()


def test_key_file_is_reread_when_the_server_restarts(tmp_path):
    path = write_keys(tmp_path / "k.json", inference="old")
    creds = Credentials.resolve(key_file=path, environ={})
    assert creds.metadata("inference") == (("authorization", "Bearer old"),)
    write_keys(path, inference="new")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert creds.metadata("inference") == (("authorization", "Bearer new"),)


# ---- images ------------------------------------------------------------------------------------


def test_bytes_and_paths_go_unchanged(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"jpegbytes")
    assert image_bytes(b"raw") == b"raw"
    assert image_bytes(bytearray(b"raw")) == b"raw"
    assert image_bytes(tmp_path / "a.jpg") == image_bytes(str(tmp_path / "a.jpg")) == b"jpegbytes"


def test_pil_images_are_encoded_losslessly_with_their_exif():
    arr = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    im.getexif()[0x0112] = 6  # Orientation: rotate 90° when displayed
    decoded = Image.open(io.BytesIO(image_bytes(im)))
    assert decoded.format == "PNG" and decoded.getexif().get(0x0112) == 6
    np.testing.assert_array_equal(np.asarray(decoded), arr)
    assert Image.open(io.BytesIO(image_bytes(Image.fromarray(arr).convert("CMYK")))).format == "TIFF"


def test_unreadable_or_unsupported_inputs_are_invalid(tmp_path):
    with pytest.raises(CoreError, match=r"cannot read image file .*missing.jpg") as info:
        image_bytes(tmp_path / "missing.jpg")
    assert info.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(CoreError, match="image of type int; accepted: bytes, a path"):
        image_bytes(42)  # type: ignore[arg-type]


# ---- many at once ------------------------------------------------------------------------------


def test_ordered_map_keeps_order_bounds_concurrency_and_returns_errors_in_place():
    running, peak, lock = 0, 0, threading.Lock()

    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02 * (5 - i % 5))
        with lock:
            running -= 1
        if i == 3:
            raise U2NetError(INVALID, "item 3")
        return i * 10

    out = list(ordered_map(work, range(10), concurrency=3))
    assert [o if isinstance(o, int) else o.message for o in out] == [0, 10, 20, "item 3", 40, 50, 60, 70, 80, 90]
    assert peak <= 3


def test_async_ordered_map():
    async def work(i: int) -> int:
        await asyncio.sleep(0.01 * (3 - i % 3))
        if i == 1:
            raise U2NetError(grpc.StatusCode.NOT_FOUND, "no")
        return i

    async def collect() -> list[object]:
        return [o async for o in aordered_map(work, range(6), concurrency=2)]

    out = asyncio.run(collect())
    assert out[0] == 0 and isinstance(out[1], U2NetError) and out[2:] == [2, 3, 4, 5]
    with pytest.raises(U2NetError, match="concurrency=0"):
        list(ordered_map(work, [], concurrency=0))


# ---- management --------------------------------------------------------------------------------

DESCRIBE = """[{"modelName": "u2net", "modelVersion": "1.0", "modelUrl": "u2net.mar", "minWorkers": 1,
"maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 20, "deviceType": "cpu",
"workers": [{"id": "9000", "status": "READY", "memoryUsage": 5, "pid": 42, "gpu": false},
            {"id": "9001", "status": "UNLOADING", "memoryUsage": 0, "pid": 43, "gpu": false}],
"customizedMetadata": {"variant": "u2net", "weights": "random (seed 0)", "weights_random": true,
                       "input_size": 320, "device": "cpu", "max_pixels": 25000000, "engine": "onnxruntime"}}]"""


def test_describe_answer_becomes_model_info():
    (info,) = mgmt.parse_description(DESCRIBE)
    assert (info.name, info.version, info.min_workers, info.max_workers, info.batch_size) == ("u2net", "1.0", 1, 2, 8)
    assert (info.weights, info.weights_random, info.variant, info.max_pixels) == (
        "random (seed 0)",
        True,
        "u2net",
        25_000_000,
    )
    assert info.ready_workers == 1 and info.workers[0].pid == 42
    assert info.engine == "onnxruntime"


def test_customized_metadata_as_a_string_or_absent():
    raw = json.loads(DESCRIBE)
    raw[0]["customizedMetadata"] = json.dumps(raw[0]["customizedMetadata"])
    assert mgmt.parse_description(json.dumps(raw))[0].weights == "random (seed 0)"
    del raw[0]["customizedMetadata"]
    info = mgmt.parse_description(json.dumps(raw))[0]
    assert info.weights is None and info.device == "cpu"


def test_model_list_pages():
    assert mgmt.parse_model_list('{"nextPageToken": "1", "models": [{"modelName": "a"}]}') == (["a"], 1)
    assert mgmt.parse_model_list('{"models": [{"modelName": "b"}]}') == (["b"], None)
    with pytest.raises(U2NetError, match="not JSON") as info:
        mgmt.parse_model_list("oops")
    assert info.value.code == grpc.StatusCode.INTERNAL


def test_scale_request_checks_bounds():
    req = mgmt.scale_request("u2netp", 2, None, None, True, 30.0)
    assert (req.min_worker, req.max_worker, req.synchronous, req.timeout) == (2, 2, True, 30)
    with pytest.raises(U2NetError, match="min_workers=3, max_workers=1"):
        mgmt.scale_request("u2netp", 3, 1, None, True, None)


def test_client_settings_are_checked_in_the_constructor(tmp_path):
    with pytest.raises(U2NetError, match="timeout=0"):
        U2NetClient(token="t", management_token="m", timeout=0)
    with pytest.raises(U2NetError, match="no such file"):
        U2NetClient(key_file=tmp_path / "nope.json")


# ---- command line ------------------------------------------------------------------------------


def test_inputs_from_files_folders_and_globs(tmp_path):
    for name in ("b.jpg", "a.PNG", "notes.txt", "a.cutout.png", "sub/c.webp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = cli.expand_inputs([str(tmp_path), str(tmp_path / "b.jpg")], recursive=False, output_suffix=".cutout")
    assert [p.name for p in found] == ["a.PNG", "b.jpg"]
    found = cli.expand_inputs([str(tmp_path / "**" / "*.webp")], recursive=True, output_suffix=".cutout")
    assert [p.name for p in found] == ["c.webp"]
    assert len(cli.expand_inputs([str(tmp_path)], recursive=True, output_suffix=".cutout")) == 3
    with pytest.raises(cli.UsageError, match=r"nope.jpg: no such file"):
        cli.expand_inputs([str(tmp_path / "nope.jpg")], recursive=False, output_suffix=".mask")


def test_outputs_beside_inputs_or_in_a_folder_and_collisions_refused(tmp_path):
    assert cli.output_path(Path("d/x.jpg"), None, ".mask") == Path("d/x.mask.png")
    assert cli.output_path(Path("d/x.jpg"), tmp_path, ".cutout") == tmp_path / "x.cutout.png"
    with pytest.raises(cli.UsageError, match="would both be written"):
        cli.plan([Path("a/x.jpg"), Path("b/x.png")], tmp_path, ".mask")


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [(grpc.StatusCode.UNAVAILABLE, 3), (grpc.StatusCode.DEADLINE_EXCEEDED, 3), (grpc.StatusCode.UNAUTHENTICATED, 4),
     (grpc.StatusCode.NOT_FOUND, 5), (grpc.StatusCode.INTERNAL, 5)],
)  # fmt: skip
def test_exit_codes_say_what_failed(code, exit_code):
    assert cli.exit_code(U2NetError(code, "x")) == exit_code


def test_bad_option_on_the_command_line_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"x")
    argv = ["cutout", str(tmp_path), "--threshold", "2", "--token", "t", "--management-token", "m"]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "threshold=2.0" in capsys.readouterr().err
    assert cli.main(["mask", str(tmp_path / "none"), "--token", "t", "--management-token", "m"]) == cli.EXIT_USAGE


def test_progress_bar_without_tqdm_writes_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    out = io.StringIO()
    bar = cli.Progress(4, enabled=True, stream=out)
    for _ in range(4):
        bar.update()
    bar.close()
    assert out.getvalue().rstrip("\n").split("\r")[-1].startswith("[" + "#" * 30 + "] 4/4")
    quiet = io.StringIO()
    cli.Progress(4, enabled=False, stream=quiet).update()
    assert quiet.getvalue() == ""


OVERLOADED = (
    'Model "u2netp" has no worker to serve inference request. Please use scale workers API to add workers.'
    "\nInternalServerException.()"
)


def test_full_job_queue_is_resource_exhausted_and_retried():
    # TorchServe's gRPC API says INTERNAL when the job queue is full; it means "try later".
    err = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INTERNAL, OVERLOADED), target="h:7070", credentials="k", attempts=3
    )
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "u2netp is overloaded" in err.message and "after 3 attempts" in err.message
    assert RetryPolicy().retryable(FakeRpcError(grpc.StatusCode.INTERNAL, OVERLOADED))
    assert not RetryPolicy().retryable(FakeRpcError(grpc.StatusCode.INTERNAL, "boom"))
