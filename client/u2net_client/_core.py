"""Both clients written once: the constructor, and every call as the RPCs it makes, without I/O.

A call is a generator ("steps"): it yields an `Rpc`, is sent the reply (or thrown the U2NetError the RPC
failed with) and returns the method's typed result. `U2NetClient` makes the RPCs blocking and
`AsyncU2NetClient` awaits them; argument checks, request building, reply parsing and error mapping all
live here (and in the modules this one calls), so the twins cannot drift apart.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import empty_pb2

from u2net_client import _management as mgmt
from u2net_client import _triton
from u2net_client._base import (
    DEFAULT_MANAGEMENT_TARGET,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    MAX_RECEIVE_BYTES,
    MAX_SEND_BYTES,
    ClientSettings,
    channel_security,
    healthy,
)
from u2net_client._errors import U2NetError, sdk_errors
from u2net_client._protocol import Protocol
from u2net_client._request import CUTOUT, MASK, ResultT
from u2net_client._retry import ErrorMapper, RetryPolicy
from u2net_client._types import CutoutResult, MaskResult, ModelInfo
from u2net_client._v2 import ModelMetadata, V2Stub, metadata_from
from u2net_client.options import CutoutKeywords, MaskKeywords, Options
from u2serve.core._generated import inference_pb2_grpc, management_pb2, management_pb2_grpc
from u2serve.core._generated import open_inference_grpc_pb2 as v2pb
from u2serve.core.image import ImageInput

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

INFERENCE, MANAGEMENT = "inference", "management"
_NO_RETRY = RetryPolicy(max_attempts=1)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rpc:
    """One unary RPC: `method` of the stub named `stub` ("inference", "management", "v2" or "repository")
    with `request`, sent with the key of `api` ("inference" or "management")."""

    stub: str
    method: str
    request: Any
    api: str
    timeout: float | None
    retry: RetryPolicy | None = None


Steps = Generator[Rpc, Any, T]
"""A call: yields the RPCs it needs one at a time, is sent each reply, returns the result."""


@dataclass(frozen=True)
class Done(Generic[T]):
    """What steps returned."""

    value: T


def resume(steps: Steps[T], outcome: Any) -> Rpc | Done[T]:
    """Hands `steps` the outcome of its last RPC (the reply, or the U2NetError it failed with; None to
    start) and says what comes next: another RPC, or the call's result."""
    with sdk_errors():  # the steps run the core (options, the tensor path's pixels): its errors leave as ours
        try:
            return steps.throw(outcome) if isinstance(outcome, U2NetError) else steps.send(outcome)
        except StopIteration as done:
            return Done(done.value)


def check_keywords(method: str, keywords: Mapping[str, object], accepted: frozenset[str]) -> None:
    """Refuses an option keyword the method does not take, as Python refuses any unknown argument.

    Raises:
        TypeError: Naming the keyword and the options the method takes.
    """
    for name in keywords:
        if name not in accepted:
            raise TypeError(
                f"{method}() got an unexpected keyword argument {name!r}; its options: {', '.join(sorted(accepted))}"
            )


def option_keywords(accepted: frozenset[str]) -> Callable[[F], F]:
    """Spells out a method's `**keywords` in its run-time signature: one keyword-only parameter per option
    it takes, with the `Options` field's type and default, where `help()`, `inspect.signature` (the web
    gateway's form reads it) and editors without a type checker look; type checkers read `Unpack[...]`."""

    def spell_out(method: F) -> F:
        signature = inspect.signature(method)
        named = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        options = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in fields(Options)
            if f.name in accepted
        ]
        method.__signature__ = signature.replace(parameters=[*named, *options])  # type: ignore[attr-defined]
        return method

    return spell_out


@dataclass(frozen=True)
class SegmentTask(Generic[ResultT]):
    """A segment task as the SDK's methods ask for it: its wire value, result type and option keywords."""

    code: int
    result: type[ResultT]
    keywords: frozenset[str]

    def options(self, method: str, given: Options | None, keywords: Mapping[str, object]) -> Options:
        """The call's options (`Options.from_call`), checked against the task before any RPC.

        Raises:
            TypeError: For a keyword that is no option of this task.
            U2NetError: INVALID_ARGUMENT for options= and keywords at once, or a bad option.
        """
        check_keywords(method, keywords, self.keywords)
        with sdk_errors():
            options = Options.from_call(given, keywords)
            options.check_task(self.code == MASK)
        return options


MASK_TASK = SegmentTask(MASK, MaskResult, frozenset(MaskKeywords.__annotations__))
CUTOUT_TASK = SegmentTask(CUTOUT, CutoutResult, frozenset(CutoutKeywords.__annotations__))


def options_of_video(given: Options | None, keywords: Mapping[str, object]) -> Options:
    """The cutout options of a video call (`Options.from_call`); the video checks them against its format.

    Raises:
        TypeError: For a keyword that is no cutout option.
        U2NetError: INVALID_ARGUMENT for options= and keywords at once, or a bad option.
    """
    check_keywords("video", keywords, CUTOUT_TASK.keywords)
    with sdk_errors():
        return Options.from_call(given, keywords)


class Calls:
    """Every call of the SDK as steps, for one client's protocol and settings."""

    def __init__(self, protocol: Protocol, settings: ClientSettings, v2: V2Stub) -> None:
        self._protocol = protocol
        self._settings = settings
        self._v2 = v2

    def segment(
        self,
        task: SegmentTask[ResultT],
        image: ImageInput,
        model: str,
        version: str | None,
        options: Options,
        timeout: float | None,
    ) -> Steps[ResultT]:
        plan = self._protocol.segment(
            task.code, image, model, version, options, self._settings.max_send_bytes, task.result
        )
        reply = yield Rpc("v2" if plan.v2 else "inference", plan.method, plan.message, INFERENCE, timeout)
        return plan.finish(reply)

    def segments(
        self, task: SegmentTask[ResultT], model: str, version: str | None, options: Options, timeout: float | None
    ) -> Callable[[ImageInput], Steps[ResultT]]:
        """`segment` for one image after another, the other arguments the same (the `_many` methods)."""
        return lambda image: self.segment(task, image, model, version, options, timeout)

    def ping(self, timeout: float | None) -> Steps[bool]:
        try:
            reply = yield Rpc("inference", "Ping", empty_pb2.Empty(), INFERENCE, timeout, _NO_RETRY)
        except U2NetError as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                raise
            log.info("ping %s: %s", self._settings.target, exc)
            return False
        return healthy(reply.health)

    def models(self, timeout: float | None) -> Steps[list[ModelInfo]]:
        if (yield from self._on_triton(timeout)):
            index = yield Rpc("repository", "RepositoryIndex", _triton.index_request(), MANAGEMENT, timeout)
            names = _triton.served_names(index)
        else:
            names = yield from self._model_names(timeout)
        infos = []
        for name in names:
            infos.append((yield from self.describe(name, None, timeout)))
        return infos

    def _model_names(self, timeout: float | None) -> Steps[list[str]]:
        """The names TorchServe serves, page by page."""
        names: list[str] = []
        page: int | None = 0
        while page is not None:
            request = management_pb2.ListModelsRequest(limit=mgmt.PAGE_SIZE, next_page_token=page)
            reply = yield Rpc("management", "ListModels", request, MANAGEMENT, timeout)
            found, page = mgmt.parse_model_list(reply.msg)
            names += found
        return names

    def describe(
        self, model: str, version: str | None, timeout: float | None, handler: bool = True
    ) -> Steps[ModelInfo]:
        if (yield from self._on_triton(timeout)):
            mgmt.describe_request(model, version)  # the same checks
            config = yield Rpc("repository", "ModelConfig", _triton.config_request(model, version), MANAGEMENT, timeout)
            meta = yield from self.model_metadata(model, version, timeout)
            ready = yield from self.model_ready(model, version, timeout)
            return _triton.model_info(config.config, version or (meta.versions or ("",))[-1], ready)
        request = mgmt.describe_request(model, version, handler)
        reply = yield Rpc("management", "DescribeModel", request, MANAGEMENT, timeout)
        return mgmt.parse_description(reply.msg)[0]

    def scale(
        self,
        model: str,
        min_workers: int,
        max_workers: int | None,
        version: str | None,
        wait: bool,
        timeout: float | None,
    ) -> Steps[None]:
        deadline = self._settings.deadline(timeout)
        request = mgmt.scale_request(model, min_workers, max_workers, version, wait, deadline)
        yield Rpc("management", "ScaleWorker", request, MANAGEMENT, deadline)

    def set_default(self, model: str, version: str, timeout: float | None) -> Steps[None]:
        yield Rpc("management", "SetDefault", mgmt.set_default_request(model, version), MANAGEMENT, timeout)

    def register(
        self,
        mar: str,
        model: str | None,
        initial_workers: int,
        batch_size: int | None,
        max_batch_delay_ms: int | None,
        response_timeout_s: int | None,
        wait: bool,
        timeout: float | None,
    ) -> Steps[None]:
        request = mgmt.register_request(
            mar, model, initial_workers, batch_size, max_batch_delay_ms, response_timeout_s, wait
        )
        yield Rpc("management", "RegisterModel", request, MANAGEMENT, timeout)

    def unregister(self, model: str, version: str | None, timeout: float | None) -> Steps[None]:
        yield Rpc("management", "UnregisterModel", mgmt.unregister_request(model, version), MANAGEMENT, timeout)

    def server_live(self, timeout: float | None) -> Steps[bool]:
        return (yield Rpc("v2", "ServerLive", v2pb.ServerLiveRequest(), INFERENCE, timeout)).live

    def server_ready(self, timeout: float | None) -> Steps[bool]:
        return (yield Rpc("v2", "ServerReady", v2pb.ServerReadyRequest(), INFERENCE, timeout)).ready

    def model_ready(self, model: str, version: str | None, timeout: float | None) -> Steps[bool]:
        request = v2pb.ModelReadyRequest(name=self._protocol.v2_model(model), version=version or "")
        return (yield Rpc("v2", "ModelReady", request, INFERENCE, timeout)).ready

    def model_metadata(self, model: str, version: str | None, timeout: float | None) -> Steps[ModelMetadata]:
        request = v2pb.ModelMetadataRequest(name=self._protocol.v2_model(model), version=version or "")
        return metadata_from((yield Rpc("v2", "ModelMetadata", request, INFERENCE, timeout)))

    def _on_triton(self, timeout: float | None) -> Steps[bool]:
        """Whether the server is Triton: protocol "triton", or "v2" once ServerLive found Triton's service."""
        if self._protocol.name == "torchserve":
            return False
        yield from self.server_live(timeout)  # settles which v2 service the server implements
        return self._v2.is_triton


class ClientBase:
    """What both clients are besides their transport: the constructor, settings, stubs and calls.

    A subclass names its grpc API (`_grpc`: grpc, or grpc.aio, whose channels it opens) and makes the
    RPCs that `_calls` asks for, each through `_attempt`.
    """

    _grpc: Any

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        management_target: str = DEFAULT_MANAGEMENT_TARGET,
        *,
        token: str | None = None,
        management_token: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_send_bytes: int = MAX_SEND_BYTES,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
        tls: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        root_certificates: bytes | None = None,
        tls_server_name: str | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        protocol: str = "torchserve",
    ) -> None:
        self._protocol = Protocol(protocol)
        self._settings = ClientSettings(
            target, management_target, token, management_token, key_file, timeout, retry,
            max_send_bytes, max_receive_bytes, triton=protocol != "torchserve",
        )  # fmt: skip
        security = channel_security(tls, ca_file, root_certificates, tls_server_name, channel_credentials)
        options = [*self._settings.channel_options, *security.options]
        self._channel = self._open_channel(target, options, security.credentials)
        self._management_channel = self._open_channel(management_target, options, security.credentials)
        self._v2 = V2Stub(self._channel, self._protocol.v2_services)
        self._stubs: dict[str, Any] = {
            "inference": inference_pb2_grpc.InferenceAPIsServiceStub(self._channel),
            "management": management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel),
            "v2": self._v2,
            "repository": _triton.RepositoryStub(self._channel),
        }
        self._calls = Calls(self._protocol, self._settings, self._v2)

    @property
    def target(self) -> str:
        """host:port of the inference API."""
        return self._settings.target

    @property
    def management_target(self) -> str:
        """host:port of the management API."""
        return self._settings.management_target

    def _open_channel(
        self, target: str, options: Iterable[tuple[str, int | str]], credentials: grpc.ChannelCredentials | None
    ) -> Any:
        """A channel of the subclass's grpc API (`_grpc`: grpc, or grpc.aio)."""
        if credentials is None:
            return self._grpc.insecure_channel(target, options=list(options))
        return self._grpc.secure_channel(target, credentials, options=list(options))

    def _attempt(self, rpc: Rpc) -> tuple[Callable[[float | None], Any], RetryPolicy, float | None, ErrorMapper]:
        """`_retry.call`'s (or `acall`'s) arguments for `rpc`: one attempt given the time left, the retry
        policy, the deadline and the mapping of a failed attempt to a U2NetError."""
        method = getattr(self._stubs[rpc.stub], rpc.method)
        deadline = self._settings.deadline(rpc.timeout)
        metadata = self._settings.metadata(rpc.api)

        def attempt(left: float | None) -> Any:
            return method(rpc.request, timeout=left, metadata=metadata)

        return attempt, rpc.retry or self._settings.retry, deadline, self._settings.error_mapper(rpc.api, deadline)
