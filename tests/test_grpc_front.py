"""The gateway's gRPC front against a fake TorchServe (raw bytes, in process): keys, metadata, deadlines,
cancellation, statuses, streams, the management calls it serves and refuses, metrics, settings.

The front in front of a real TorchServe, through the SDK, is tests/test_grpc_front_integration.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

pytest.importorskip("fastapi", reason="the web extra: pip install -e '.[web]' (make test installs it)")

from fastapi.testclient import TestClient

from u2net_client import U2NetClient, U2NetError
from u2serve.core._generated import inference_pb2
from u2serve.web import Settings, create_app
from u2serve.web.auth import InferenceKey
from u2serve.web.grpc_front import GrpcFront, deadline, forwarded, methods
from u2serve.web.metrics import Metrics
from u2serve.web.settings import GRPC_PORT_ENV, SettingsError, from_args, parser

INFERENCE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService"
MANAGEMENT = "/org.pytorch.serve.grpc.management.ManagementAPIsService"
KEY = "caller-key-1234"
AUTH = (("authorization", f"Bearer {KEY}"),)
MANAGEMENT_METHODS = ("ListModels", "DescribeModel", "RegisterModel", "UnregisterModel", "ScaleWorker", "SetDefault")
OVERLOADED = 'Model "u2netp" has no worker to serve inference request. Please use scale workers API to add workers.'


class FakeTorchServe:
    """TorchServe's two gRPC services over raw bytes: records what each call brought, answers by its request."""

    def __init__(self) -> None:
        self.seen: list[dict[str, object]] = []
        self.cancelled = threading.Event()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        handlers = {
            INFERENCE: {
                "Ping": grpc.unary_unary_rpc_method_handler(self.ping),
                "Predictions": grpc.unary_unary_rpc_method_handler(self.predictions),
                "StreamPredictions": grpc.unary_stream_rpc_method_handler(self.stream),
                "StreamPredictions2": grpc.stream_stream_rpc_method_handler(self.echo),
            },
            MANAGEMENT: {name: grpc.unary_unary_rpc_method_handler(self.management) for name in MANAGEMENT_METHODS},
        }
        for service, table in handlers.items():
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service[1:], table),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _record(self, context: grpc.ServicerContext, request: object) -> None:
        self.seen.append({"metadata": dict(context.invocation_metadata()), "remaining": context.time_remaining(),
                          "request": request})  # fmt: skip

    def ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context, request)
        return inference_pb2.TorchServeHealthResponse(health=json.dumps({"status": "Healthy"})).SerializeToString()

    def predictions(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context, request)
        if request == b"slow":
            context.add_callback(self.cancelled.set)
            while context.is_active():
                time.sleep(0.02)
            return b""
        if request == b"overloaded":
            context.abort(grpc.StatusCode.INTERNAL, OVERLOADED)
        context.set_trailing_metadata((("x-torchserve", "trailing"),))
        return b"answer to " + request

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context, request)
        for i in range(3):
            yield request + str(i).encode()

    def echo(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context, None)
        for request in requests:
            yield b"echo " + request

    def management(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context, request)
        return b"management answer"

    def stop(self) -> None:
        self.server.stop(0).wait()


@pytest.fixture
def upstream() -> Iterator[FakeTorchServe]:
    fake = FakeTorchServe()
    yield fake
    fake.stop()


def caller_keys(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    return keys


def front_for(settings: Settings, metrics: Metrics | None = None) -> GrpcFront:
    key_path = settings.caller_keys or settings.key_file
    assert key_path is not None
    front = GrpcFront(settings, InferenceKey(key_path, settings.caller_keys is not None), metrics or Metrics())
    front.start()
    return front


def pod_settings(upstream: FakeTorchServe, tmp_path: Path, **kwargs: object) -> Settings:
    """As in the pod: caller keys from a Secret's file, TorchServe without token authorization."""
    return Settings(key_file=None, caller_keys=caller_keys(tmp_path), target=upstream.target,
                    management_target=upstream.target, grpc_port=0, **kwargs)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
def front(upstream: FakeTorchServe, tmp_path: Path) -> Iterator[GrpcFront]:
    served = front_for(pod_settings(upstream, tmp_path, max_body_bytes=64 * 1024))
    yield served
    served.stop(0)


def call(front: GrpcFront, path: str, request: bytes, key: str | None = KEY, **kwargs: object) -> bytes:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with grpc.insecure_channel(front.address) as channel:
        return channel.unary_unary(path)(request, metadata=metadata + kwargs.pop("extra", ()), **kwargs)  # type: ignore[no-any-return, operator]


def failure(fn, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def test_a_call_passes_as_bytes_with_the_callers_metadata_but_not_its_key(front, upstream):
    extra = (("x-request-id", "r1"), ("trace-bin", b"\xff\x00"))
    reply = call(front, f"{INFERENCE}/Predictions", b"\x00\x01 any bytes", extra=extra)
    assert reply == b"answer to \x00\x01 any bytes"
    (seen,) = upstream.seen
    assert seen["request"] == b"\x00\x01 any bytes"
    metadata = seen["metadata"]
    assert metadata["x-request-id"] == "r1" and metadata["trace-bin"] == b"\xff\x00"  # type: ignore[index]
    assert "authorization" not in metadata  # type: ignore[operator]  # TorchServe in the pod has no key


def test_a_missing_or_wrong_key_is_refused_as_torchserve_refuses_it_and_never_reaches_it(front, upstream):
    for key in (None, "not-the-key"):
        error = failure(call, front, f"{INFERENCE}/Predictions", b"x", key=key)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details().startswith("Token Authorization failed")
    assert upstream.seen == []
    # The SDK reports it as against TorchServe: UNAUTHENTICATED, the token refused; the right key passes.
    with U2NetClient(front.address, front.address, token="not-the-key", management_token="x") as sdk:
        with pytest.raises(U2NetError, match="refused the token") as info:
            sdk.ping()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with U2NetClient(front.address, front.address, token=KEY, management_token=KEY) as sdk:
        assert sdk.ping()


def test_the_callers_deadline_goes_upstream_and_none_stays_none(front, upstream):
    call(front, f"{INFERENCE}/Predictions", b"x", timeout=7.0)
    call(front, f"{INFERENCE}/Predictions", b"y")
    with_deadline, without = (seen["remaining"] for seen in upstream.seen)
    assert 5.0 < with_deadline < 7.5  # type: ignore[operator]  # the wire rounds a deadline up a little
    assert deadline(without) is None  # type: ignore[arg-type]  # gRPC's far future: no deadline upstream either


def test_a_deadline_shorter_than_the_call_ends_it_upstream_too(front, upstream):
    error = failure(call, front, f"{INFERENCE}/Predictions", b"slow", timeout=0.5)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert upstream.cancelled.wait(5), "TorchServe's call outlived the caller's deadline"


def test_a_cancelled_call_is_cancelled_upstream(front, upstream):
    with grpc.insecure_channel(front.address) as channel:
        future = channel.unary_unary(f"{INFERENCE}/Predictions").future(b"slow", metadata=AUTH)
        deadline_s = time.monotonic() + 5
        while not upstream.seen and time.monotonic() < deadline_s:
            time.sleep(0.02)
        future.cancel()
        assert upstream.cancelled.wait(5), "TorchServe's call outlived the cancelled one"


def test_torchserves_status_and_details_come_back_unchanged(front, upstream):
    error = failure(call, front, f"{INFERENCE}/Predictions", b"overloaded")
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, OVERLOADED)


def test_torchserves_trailing_metadata_comes_back(front):
    with grpc.insecure_channel(front.address) as channel:
        _, answer = channel.unary_unary(f"{INFERENCE}/Predictions").with_call(b"x", metadata=AUTH)
    assert ("x-torchserve", "trailing") in answer.trailing_metadata()


def test_streams_pass_both_ways(front, upstream):
    metadata = AUTH
    with grpc.insecure_channel(front.address) as channel:
        server_stream = channel.unary_stream(f"{INFERENCE}/StreamPredictions")(b"frame", metadata=metadata)
        assert list(server_stream) == [b"frame0", b"frame1", b"frame2"]
        both = channel.stream_stream(f"{INFERENCE}/StreamPredictions2")(iter([b"a", b"b"]), metadata=metadata)
        assert list(both) == [b"echo a", b"echo b"]
        refused = channel.unary_stream(f"{INFERENCE}/StreamPredictions")(b"frame")
        assert failure(list, refused).code() == grpc.StatusCode.PERMISSION_DENIED


def test_only_the_read_only_management_calls_are_served(front, upstream):
    assert call(front, f"{MANAGEMENT}/ListModels", b"") == b"management answer"
    assert call(front, f"{MANAGEMENT}/DescribeModel", b"") == b"management answer"
    for name in ("RegisterModel", "UnregisterModel", "ScaleWorker", "SetDefault"):
        assert failure(call, front, f"{MANAGEMENT}/{name}", b"").code() == grpc.StatusCode.UNIMPLEMENTED, name
    assert len(upstream.seen) == 2
    served = {m.path.rsplit("/", 1)[1] for m in methods()}
    assert served == {"Ping", "Predictions", "StreamPredictions", "StreamPredictions2", "ListModels", "DescribeModel"}


def test_an_unreachable_torchserve_is_unavailable_which_the_sdk_retries(upstream, tmp_path):
    upstream.stop()  # its port is closed now
    settings = pod_settings(upstream, tmp_path)
    front = front_for(settings)
    try:
        error = failure(call, front, f"{INFERENCE}/Predictions", b"x", timeout=10)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "TorchServe behind the gateway" in error.details()
    finally:
        front.stop(0)


def test_a_message_over_the_body_limit_is_refused_at_the_front(front, upstream):
    error = failure(call, front, f"{INFERENCE}/Predictions", b"\0" * (65 * 1024))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and upstream.seen == []


def test_torchserves_own_keys_go_upstream_per_api_where_it_has_them(upstream, tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "inf-key"}, "management": {"key": "mgmt-key"}}))
    settings = Settings(key_file=key_file, target=upstream.target, management_target=upstream.target, grpc_port=0)
    front = front_for(settings)
    try:
        error = failure(call, front, f"{INFERENCE}/Predictions", b"x", key="mgmt-key")  # callers use the inference key
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        call(front, f"{INFERENCE}/Predictions", b"x", key="inf-key")
        call(front, f"{MANAGEMENT}/ListModels", b"", key="inf-key")  # as /v1/models answers the inference key
    finally:
        front.stop(0)
    assert [seen["metadata"]["authorization"] for seen in upstream.seen] == ["Bearer inf-key", "Bearer mgmt-key"]  # type: ignore[index]


def test_calls_count_in_the_gateways_in_flight_gauge_and_requests(upstream, tmp_path):
    metrics = Metrics()
    settings = pod_settings(upstream, tmp_path)
    front = front_for(settings, metrics)
    gauge = metrics.registry.get_sample_value
    try:
        with grpc.insecure_channel(front.address) as channel:
            slow = channel.unary_unary(f"{INFERENCE}/Predictions").future(b"slow", timeout=1.0, metadata=AUTH)
            deadline_s = time.monotonic() + 5
            while not upstream.seen and time.monotonic() < deadline_s:
                time.sleep(0.02)
            assert gauge("u2serve_web_requests_in_flight") == 1
            assert failure(slow.result).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        failure(call, front, f"{INFERENCE}/Predictions", b"x", key=None)
    finally:
        front.stop(0)
    assert gauge("u2serve_web_requests_in_flight") == 0
    route = f"{INFERENCE}/Predictions"
    assert gauge("u2serve_web_requests_total", {"route": route, "method": "GRPC", "status": "PERMISSION_DENIED"}) == 1
    assert gauge("u2serve_web_request_seconds_count", {"route": route}) == 2


def test_forwarded_metadata_drops_credentials_and_transport_headers():
    given = (("authorization", "Bearer caller"), ("triton-grpc-protocol-authorization", "Bearer caller"),
             ("user-agent", "grpc-python"), ("grpc-accept-encoding", "gzip"), ("x-a", "1"))  # fmt: skip
    assert forwarded(given, None) == (("x-a", "1"),)
    assert forwarded(given, "ts") == (("x-a", "1"), ("authorization", "Bearer ts"))


def test_the_app_runs_the_front_in_its_lifespan_with_the_same_keys(upstream, tmp_path):
    settings = pod_settings(upstream, tmp_path)

    class NoClient:
        async def close(self) -> None:
            pass

    with TestClient(create_app(settings, lambda _: NoClient())) as client:  # type: ignore[arg-type, return-value]
        front = client.app.state.grpc_front  # type: ignore[attr-defined]
        assert call(front, f"{INFERENCE}/Predictions", b"x") == b"answer to x"
        (caller_keys(tmp_path)).write_text("rotated-key-99\n")  # the Secret rotated: both sides follow
        assert failure(call, front, f"{INFERENCE}/Predictions", b"x").code() == grpc.StatusCode.PERMISSION_DENIED
        assert call(front, f"{INFERENCE}/Predictions", b"x", key="rotated-key-99") == b"answer to x"
    error = failure(call, front, f"{INFERENCE}/Predictions", b"x", timeout=2)
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # stopped with the app


def test_grpc_port_settings(tmp_path):
    keys = str(caller_keys(tmp_path))
    assert from_args(parser().parse_args(["--caller-keys", keys]), {}).grpc_port is None  # off by default
    on = from_args(parser().parse_args(["--caller-keys", keys, "--grpc-port", "7001", "--host", "0.0.0.0"]), {})
    assert (on.grpc_port, on.grpc_host) == (7001, "0.0.0.0")
    assert from_args(parser().parse_args(["--caller-keys", keys]), {GRPC_PORT_ENV: "7001"}).grpc_port == 7001
    with pytest.raises(SettingsError, match=r"grpc port 'x7' \(--grpc-port or \$U2SERVE_GRPC_PORT\); accepted"):
        from_args(parser().parse_args(["--caller-keys", keys]), {GRPC_PORT_ENV: "x7"})
    with pytest.raises(SettingsError, match="grpc_port=70000; accepted: a port 1-65535"):
        from_args(parser().parse_args(["--caller-keys", keys, "--grpc-port", "70000"]), {})
