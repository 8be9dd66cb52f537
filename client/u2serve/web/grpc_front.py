"""The gateway's gRPC front: TorchServe's gRPC inference API behind the gateway's keys, passed on as bytes.

In a cluster it is the SDK's way in (`U2NetClient("<service>:7001", "<service>:7001", token=key,
management_token=key)`): each call's `authorization: Bearer <key>` is checked against the keys the HTTP side
accepts (the same `InferenceKey`: TorchServe's key file, or a Secret's file re-read when it changes), then it
goes on to the TorchServe in the same pod with the caller's other metadata, its deadline and its cancellation,
and TorchServe's answer, or its status code and details, come back as they were. Messages are never decoded,
so every field passes. Of the management API only the read-only calls the SDK's `models()` and `describe()`
make are served; registering, unregistering, scaling and set-default answer UNIMPLEMENTED.

A thread-pool server with blocking upstream calls, not grpc.aio: uvicorn's loop (uvloop) stays the HTTP side's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from u2serve.core._generated import inference_pb2, management_pb2
from u2serve.web.auth import InferenceKey, KeyUnavailable, bearer
from u2serve.web.metrics import Metrics
from u2serve.web.settings import Settings

log = logging.getLogger(__name__)

INFERENCE = inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
MANAGEMENT = management_pb2.DESCRIPTOR.services_by_name["ManagementAPIsService"]
# What U2NetClient.models() and .describe() call (the HTTP side's /v1/models answers the same to the same keys).
READ_ONLY_MANAGEMENT = frozenset({"DescribeModel", "ListModels"})
# TorchServe's own answer to a missing or wrong key over gRPC: the SDK reports it as UNAUTHENTICATED, saying
# that the token was refused, exactly as against TorchServe itself.
REFUSED = grpc.StatusCode.PERMISSION_DENIED
TOKEN_REFUSED = "Token Authorization failed"
# The caller's credentials end here; TorchServe gets the gateway's own key, if it has one.
CREDENTIALS = frozenset({"authorization", "triton-grpc-protocol-authorization"})
# Metadata the transport writes itself, on each hop.
TRANSPORT = frozenset({"user-agent", "content-type", "te", "host"})
RICH_STATUS = "grpc-status-details-bin"  # google.rpc.Status details: the one grpc- key an answer may carry on
# gRPC reports a call without a deadline as one in the far future.
NO_DEADLINE_S = 1e8
GRACE_S = 5.0

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Method:
    """One method the front serves: its wire path, its API (which upstream channel and key) and its shape."""

    path: str  # "/package.Service/Name"
    api: str  # "inference" or "management"
    client_streaming: bool
    server_streaming: bool

    @property
    def service(self) -> str:
        return self.path.split("/")[1]

    @property
    def name(self) -> str:
        return self.path.split("/")[2]


def methods() -> tuple[Method, ...]:
    """Every method served, read from the vendored protos' descriptors: all of the inference API, and
    READ_ONLY_MANAGEMENT of the management API."""
    served = (("inference", INFERENCE, None), ("management", MANAGEMENT, READ_ONLY_MANAGEMENT))
    return tuple(
        Method(f"/{service.full_name}/{m.name}", api, m.client_streaming, m.server_streaming)
        for api, service, allowed in served
        for m in service.methods
        if allowed is None or m.name in allowed
    )


def caller_key(metadata: Metadata) -> str | None:
    """The key of the caller's `authorization: Bearer <key>` (what the SDK sends); None without one."""
    return next((bearer(v) for k, v in metadata if k == "authorization" and isinstance(v, str)), None)


def forwarded(metadata: Metadata, upstream_key: str | None) -> tuple[tuple[str, str | bytes], ...]:
    """The caller's metadata for TorchServe: without its credentials and the transport's own headers, with
    the gateway's key for TorchServe when it has one."""
    kept = tuple(
        (k, v) for k, v in metadata if k not in CREDENTIALS and k not in TRANSPORT and not k.startswith((":", "grpc-"))
    )
    return kept + ((("authorization", f"Bearer {upstream_key}"),) if upstream_key else ())


def answered(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...]:
    """TorchServe's trailing metadata for the caller: its own keys and rich status details, not the transport's."""
    return tuple(
        (k, v) for k, v in metadata or () if k == RICH_STATUS or not (k in TRANSPORT or k.startswith((":", "grpc-")))
    )


def deadline(remaining: float | None) -> float | None:
    """The timeout of the upstream call: what is left of the caller's deadline; None when it had none."""
    return None if remaining is None or remaining > NO_DEADLINE_S else remaining


def refusal(key: InferenceKey, token: str | None) -> tuple[grpc.StatusCode, str] | None:
    """Why a call with `token` may not pass (status code, details), as TorchServe words it; None if it may."""
    try:
        if key.accepts(token):
            return None
    except KeyUnavailable as exc:
        return grpc.StatusCode.UNAVAILABLE, f"{exc}; retry shortly"
    if token is None:
        return REFUSED, f"{TOKEN_REFUSED}: no key; send the metadata `authorization: Bearer <key>` with a caller key"
    return REFUSED, f"{TOKEN_REFUSED}: the key is not a current one (keys change at rotation: the keys Secret)"


class _Abort(Exception):
    """A status to end the call with (the key check's, or TorchServe's own)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.trailing = code, details, trailing


def upstream_failure(error: grpc.RpcError) -> _Abort:
    """TorchServe's status, passed on as it is (the SDK reads its code and words); where TorchServe cannot be
    reached, UNAVAILABLE (which the SDK retries) saying so."""
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]  # a grpc.Call too
    if code == grpc.StatusCode.UNAVAILABLE:
        details = f"TorchServe behind the gateway: {details}"
    return _Abort(code, details, answered(error.trailing_metadata()))  # type: ignore[attr-defined]


class GrpcFront:
    """The gRPC server of `settings.grpc_port`, started and stopped by the app's lifespan.

    Args:
        settings: Where to listen (grpc_host, grpc_port), TorchServe's targets and key file, message and
            concurrency limits (max_body_bytes, max_in_flight: beyond it a call gets RESOURCE_EXHAUSTED at once,
            which the SDK retries, as HTTP gets 503).
        key: The keys callers may send: the HTTP side's own object.
        metrics: The app's metrics: a call counts in the same in-flight gauge as an HTTP request.
    """

    def __init__(self, settings: Settings, key: InferenceKey, metrics: Metrics) -> None:
        if settings.grpc_port is None:
            raise ValueError("settings.grpc_port is None: no gRPC front wanted")
        self._key = key
        self._metrics = metrics
        # TorchServe's keys, re-read when it rewrites its key file; none where it runs without token authorization.
        self._upstream_keys = {
            api: InferenceKey(settings.key_file, api=api) for api in ("inference", "management")
        } if settings.key_file is not None else {}  # fmt: skip
        upstream_options = [
            ("grpc.max_send_message_length", settings.max_body_bytes),
            ("grpc.max_receive_message_length", -1),  # TorchServe's max_response_size bounds its answers
            ("grpc.max_reconnect_backoff_ms", 2000),  # back within seconds of a TorchServe restart
        ]
        self._channels = {
            "inference": grpc.insecure_channel(settings.target, upstream_options),
            "management": grpc.insecure_channel(settings.management_target, upstream_options),
        }
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="grpc-front"),
            handlers=self._handlers(),
            options=[
                # TorchServe's max_request_size, as the HTTP side's body limit; answers as large as TorchServe's.
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
            ],
            maximum_concurrent_rpcs=settings.max_in_flight,
        )
        host = f"[{settings.grpc_host}]" if ":" in settings.grpc_host else settings.grpc_host
        self.address = f"{host}:{settings.grpc_port}"
        try:
            self.port = self._server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"the gRPC front cannot listen on {self.address} (is the port taken?): {exc}") from exc
        self.address = f"{host}:{self.port}"
        self._targets = settings.target, settings.management_target

    def start(self) -> None:
        self._server.start()
        log.info("gRPC front on %s, to TorchServe at %s and %s", self.address, *self._targets)

    def stop(self, grace: float = GRACE_S) -> None:
        """Refuse new calls, give those in flight `grace` seconds, then close the upstream channels."""
        self._server.stop(grace).wait()
        for channel in self._channels.values():
            channel.close()

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for method in methods():
            by_service.setdefault(method.service, {})[method.name] = self._handler(method)
        return [grpc.method_handlers_generic_handler(s, handlers) for s, handlers in by_service.items()]

    def _handler(self, method: Method) -> grpc.RpcMethodHandler:
        """A handler of raw bytes (no (de)serializers) calling the same path upstream."""
        channel = self._channels[method.api]
        shape = (method.client_streaming, method.server_streaming)
        upstream: Any = {
            (False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream,
        }[shape](method.path)  # fmt: skip
        # The same two bodies serve one request or a stream of them: upstream takes either.
        behaviour = functools.partial(self._stream if method.server_streaming else self._single, method, upstream)
        factory: Callable[..., grpc.RpcMethodHandler] = {
            (False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler,
        }[shape]  # fmt: skip
        return factory(behaviour)

    def _single(self, method: Method, upstream: Any, request: Any, context: grpc.ServicerContext) -> bytes:
        with self._call(method, context) as (metadata, timeout):
            future = upstream.future(request, timeout=timeout, metadata=metadata)
            context.add_callback(future.cancel)  # the caller gone: so is TorchServe's call
            reply: bytes = future.result()
            context.set_trailing_metadata(answered(future.trailing_metadata()))
            return reply

    def _stream(self, method: Method, upstream: Any, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        with self._call(method, context) as (metadata, timeout):
            call = upstream(request, timeout=timeout, metadata=metadata)
            context.add_callback(call.cancel)
            yield from call
            context.set_trailing_metadata(answered(call.trailing_metadata()))

    @contextmanager
    def _call(self, method: Method, context: grpc.ServicerContext) -> Iterator[tuple[Metadata, float | None]]:
        """The key check, then the upstream call's metadata and timeout; TorchServe's failure becomes the
        call's own status. Counted in the app's metrics while it runs."""
        with self._metrics.answering("GRPC") as answer:
            answer.route, answer.status = method.path, grpc.StatusCode.OK.name
            try:
                try:
                    metadata = context.invocation_metadata()
                    denied = refusal(self._key, caller_key(metadata))
                    if denied is not None:
                        raise _Abort(*denied)
                    yield forwarded(metadata, self._upstream_key(method.api)), deadline(context.time_remaining())
                except grpc.RpcError as exc:
                    raise upstream_failure(exc) from exc
                except grpc.FutureCancelledError as exc:  # cancelled by the caller, who hears nothing more
                    raise _Abort(grpc.StatusCode.CANCELLED, "cancelled by the caller") from exc
            except _Abort as stop:
                answer.status = stop.code.name
                context.set_trailing_metadata(tuple(stop.trailing))
                context.abort(stop.code, stop.details)
            except GeneratorExit:  # a streaming call's caller went away
                answer.status = grpc.StatusCode.CANCELLED.name
                raise

    def _upstream_key(self, api: str) -> str | None:
        if api not in self._upstream_keys:
            return None
        try:
            return self._upstream_keys[api].current()[0]
        except KeyUnavailable as exc:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry shortly") from exc
