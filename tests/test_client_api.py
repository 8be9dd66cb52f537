"""The SDK's surface: the sync and asyncio twins agree, and options come as keywords or as one Options.

The calls go to an in-process gRPC server that records what it is sent, so nothing here needs TorchServe.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import re
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import grpc
import pytest
from PIL import Image

from u2net_client import (
    AsyncU2NetClient,
    CutoutKeywords,
    CutoutResult,
    MaskKeywords,
    MaskResult,
    Options,
    RetryPolicy,
    U2NetClient,
    U2NetError,
)
from u2serve.core._generated import inference_pb2, inference_pb2_grpc, u2serve_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
BACKGROUND_OPTIONS = {"background", "background_image", "background_fit", "effect", "blur_radius"}


def png(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (4, 3)).save(buf, "PNG")
    return buf.getvalue()


IMAGE = png("RGB")


class FakeInference(inference_pb2_grpc.InferenceAPIsServiceServicer):
    """Answers every segment request with a small image and keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, u2serve_pb2.SegmentRequest]] = []
        self.healthy = True

    def Ping(self, request: Any, context: grpc.ServicerContext) -> inference_pb2.TorchServeHealthResponse:
        if not self.healthy:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "token refused")
        return inference_pb2.TorchServeHealthResponse(health='{"status": "Healthy"}')

    def Predictions(self, request: inference_pb2.PredictionsRequest, context: Any) -> inference_pb2.PredictionResponse:
        segment = u2serve_pb2.SegmentRequest.FromString(request.input["u2serve"])
        self.sent.append((request.model_name, segment))
        mode = "L" if segment.task == u2serve_pb2.MASK else "RGBA"
        reply = u2serve_pb2.SegmentResponse(image=png(mode), model_name=request.model_name, width=4, height=3)
        return inference_pb2.PredictionResponse(prediction=reply.SerializeToString())


@dataclass
class FakeServer:
    target: str
    fake: FakeInference

    def client(self) -> U2NetClient:
        return U2NetClient(self.target, self.target, token="t", management_token="m", retry=RetryPolicy(max_attempts=1))

    def aclient(self) -> AsyncU2NetClient:
        return AsyncU2NetClient(
            self.target, self.target, token="t", management_token="m", retry=RetryPolicy(max_attempts=1)
        )

    def take(self) -> list[tuple[str, u2serve_pb2.SegmentRequest]]:
        sent, self.fake.sent = self.fake.sent, []
        return sent


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    fake = FakeInference()
    grpc_server = grpc.server(ThreadPoolExecutor(4))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(fake, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield FakeServer(f"127.0.0.1:{port}", fake)
    finally:
        grpc_server.stop(None)


# ---- the twins ---------------------------------------------------------------------------------


def _public(cls: type) -> dict[str, Any]:
    return {name: inspect.getattr_static(cls, name) for name in dir(cls) if not name.startswith("_")}


def _as_sync(signature: str) -> str:
    """An asyncio method's signature as its blocking twin's: what is awaited there is returned here."""
    signature = re.sub(r"Awaitable\[(\w+)\]", r"\1", signature)
    signature = re.sub(r"AsyncGenerator\[(.*), None\]", r"Generator[\1, None, None]", signature)
    return signature.replace("AsyncU2NetClient", "U2NetClient")


def test_the_twins_have_the_same_methods_and_signatures():
    sync, aio = _public(U2NetClient), _public(AsyncU2NetClient)
    assert sync.keys() == aio.keys()
    assert str(inspect.signature(U2NetClient)) == str(inspect.signature(AsyncU2NetClient))
    for name, member in sync.items():
        twin = aio[name]
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        assert not inspect.iscoroutinefunction(member), name
        # map hands back an async generator, so it is a plain function in both
        assert inspect.iscoroutinefunction(twin) == (name != "map"), name
        assert _as_sync(str(inspect.signature(twin))) == str(inspect.signature(member)), name
    assert str(inspect.signature(U2NetClient.__exit__)) == str(inspect.signature(AsyncU2NetClient.__aexit__))
    assert inspect.iscoroutinefunction(AsyncU2NetClient.__aenter__)


def test_option_keywords_are_the_fields_of_options():
    hints = typing.get_type_hints(Options)
    assert typing.get_type_hints(CutoutKeywords) == {f.name: hints[f.name] for f in fields(Options)}
    mask = typing.get_type_hints(MaskKeywords)
    assert mask.keys() == hints.keys() - BACKGROUND_OPTIONS


@pytest.mark.parametrize("client_type", [U2NetClient, AsyncU2NetClient])
def test_run_time_signatures_spell_out_each_option_keyword(client_type):
    # help(), inspect and the web gateway's form (u2serve.web.fields) read the options from here
    for name, keywords in [("mask", MaskKeywords), ("mask_many", MaskKeywords), ("cutout", CutoutKeywords),
                           ("cutout_many", CutoutKeywords), ("video", CutoutKeywords)]:  # fmt: skip
        parameters = inspect.signature(getattr(client_type, name)).parameters
        spelled = {n: p for n, p in parameters.items() if n in keywords.__annotations__}
        assert spelled.keys() == keywords.__annotations__.keys(), name
        defaults = {f.name: f.default for f in fields(Options)}
        assert all(p.kind is p.KEYWORD_ONLY and p.default == defaults[n] for n, p in spelled.items()), name
        assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values()), name


# ---- options as keywords or as one Options -----------------------------------------------------

SEGMENT_CASES = [
    ("mask", {"threshold": 0.5, "crop": True, "crop_margin": 3, "output_format": "webp"}),
    ("cutout", {"background": "#102030", "refine": "matting", "matting_erode_size": 4, "png_compression": 1}),
    ("mask_many", {"crop": True, "box_threshold": 0.25}),
    ("cutout_many", {"background_image": png("RGB"), "background_fit": "contain", "effect": "blur"}),
]


def _call(client: Any, method: str, **kwargs: Any) -> Any:
    if method.endswith("_many"):
        return getattr(client, method)([IMAGE, IMAGE], "u2net", concurrency=2, **kwargs)
    return getattr(client, method)(IMAGE, "u2net", **kwargs)


def _results(outcome: Any) -> list[Any]:
    return outcome if isinstance(outcome, list) else [outcome]


@pytest.mark.parametrize(("method", "keywords"), SEGMENT_CASES)
def test_options_as_keywords_or_as_one_options_send_the_same_request(fake_server, method, keywords):
    result_type = MaskResult if method.startswith("mask") else CutoutResult
    with fake_server.client() as client:
        by_keyword = _results(_call(client, method, **keywords))
        sent = fake_server.take()
        by_options = _results(_call(client, method, options=Options(**keywords)))
        assert fake_server.take() == sent

    async def run() -> list[Any]:
        async with fake_server.aclient() as aclient:
            return _results(await _call(aclient, method, options=Options(**keywords)))

    by_async = asyncio.run(run())
    assert fake_server.take() == sent
    assert sent and all(model == "u2net" for model, _ in sent)
    assert sent[0][1].options == Options(**keywords).to_proto()
    for result in by_keyword + by_options + by_async:
        assert isinstance(result, result_type) and result.model == "u2net"


BOTH: dict[str, Any] = {"options": Options(crop=True), "crop": True}
CALLS_WITH_BOTH: dict[str, Callable[[Any], Any]] = {
    "mask": lambda c: c.mask(IMAGE, **BOTH),
    "cutout": lambda c: c.cutout(IMAGE, **BOTH),
    "mask_many": lambda c: c.mask_many([IMAGE], **BOTH),
    "cutout_many": lambda c: c.cutout_many([IMAGE], **BOTH),
    "video": lambda c: c.video("in.mp4", "out.webm", **BOTH),
}


@pytest.mark.parametrize("method", CALLS_WITH_BOTH)
def test_options_and_keywords_at_once_are_refused_before_any_request(fake_server, method):
    call = CALLS_WITH_BOTH[method]
    pattern = r"either as options=Options\(\.\.\.\) or as keywords \(crop\), not both"
    with fake_server.client() as client, pytest.raises(U2NetError, match=pattern) as caught:
        call(client)
    assert caught.value.code == INVALID

    async def run() -> None:
        async with fake_server.aclient() as aclient:
            await call(aclient)

    with pytest.raises(U2NetError, match=pattern):
        asyncio.run(run())
    assert fake_server.take() == []


def test_a_keyword_that_is_no_option_of_the_method_is_a_type_error(fake_server):
    with fake_server.client() as client:
        with pytest.raises(TypeError, match=r"mask\(\) got an unexpected keyword argument 'background'; its options"):
            client.mask(IMAGE, background="#ffffff")
        with pytest.raises(TypeError, match=r"cutout_many\(\) got an unexpected keyword argument 'colour'"):
            client.cutout_many([IMAGE], colour="#ffffff")
        with pytest.raises(TypeError, match=r"video\(\) got an unexpected keyword argument 'crop_box'"):
            client.video("in.mp4", "out.webm", crop_box=True)

    async def run() -> None:
        async with fake_server.aclient() as aclient:
            await aclient.mask_many([IMAGE], effect="blur")

    with pytest.raises(TypeError, match=r"mask_many\(\) got an unexpected keyword argument 'effect'"):
        asyncio.run(run())
    assert fake_server.take() == []


def test_options_a_mask_cannot_use_fail_once_before_any_request(fake_server):
    with fake_server.client() as client:
        with pytest.raises(U2NetError, match="background apply to the cutout"):
            client.mask_many([IMAGE, IMAGE], options=Options(background="#ffffff"))
        with pytest.raises(U2NetError, match=r"options=\{'crop': True\}; accepted: an Options"):
            client.cutout(IMAGE, options={"crop": True})  # type: ignore[arg-type]
    assert fake_server.take() == []


def test_video_takes_every_cutout_option_either_way():
    client = U2NetClient("127.0.0.1:1", "127.0.0.1:1", token="t", management_token="m")
    # checked before the input is opened (or PyAV imported): no server, no video needed
    with client:
        with pytest.raises(U2NetError, match="crop changes the size"):
            client.video("in.mp4", "out.webm", crop=True)
        with pytest.raises(U2NetError, match="crop changes the size"):
            client.video("in.mp4", "out.webm", options=Options(crop=True))
        with pytest.raises(U2NetError, match=r"\.mp4 cannot carry transparency"):
            client.video("in.mp4", "out.mp4", options=Options())
        with pytest.raises(U2NetError, match=r"\.mp4 cannot carry transparency"):
            client.video("in.mp4", "out.mp4")


def test_ping_is_one_try_and_only_a_refused_token_raises(fake_server):
    with fake_server.client() as client:
        assert client.ping()
        fake_server.fake.healthy = False
        with pytest.raises(U2NetError) as caught:
            client.ping()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    with U2NetClient("127.0.0.1:1", "127.0.0.1:1", token="t", management_token="m") as nowhere:
        assert nowhere.ping(timeout=2.0) is False
