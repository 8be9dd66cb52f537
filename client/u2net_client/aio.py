"""AsyncU2NetClient: the asyncio twin of U2NetClient, over grpc.aio."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TypeVar

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
from u2net_client._concurrency import aordered_map
from u2net_client._errors import U2NetError
from u2net_client._generated import inference_pb2_grpc, management_pb2, management_pb2_grpc
from u2net_client._generated import open_inference_grpc_pb2 as v2pb
from u2net_client._image import ImageInput
from u2net_client._protocol import Protocol
from u2net_client._request import CUTOUT, MASK, ResultT
from u2net_client._retry import RetryPolicy, acall
from u2net_client._types import CutoutResult, MaskResult, ModelInfo
from u2net_client._v2 import ModelMetadata, V2Stub, metadata_from
from u2net_client._video import DEFAULT_CONCURRENCY, Progress, VideoJob, VideoResult, video_options
from u2net_client._video import arun as arun_video
from u2net_client.imaging import DEFAULT_MAX_PIXELS
from u2net_client.options import Color, Options

T = TypeVar("T")
R = TypeVar("R")

_NO_RETRY = RetryPolicy(max_attempts=1)
log = logging.getLogger(__name__)


class AsyncU2NetClient:
    """An asyncio client for u2serve's gRPC API: U2NetClient's methods, awaited.

    Create it inside the event loop that uses it (grpc.aio channels belong to one loop). Every
    call takes a `timeout` (seconds, overriding the client's), retries
    UNAVAILABLE and RESOURCE_EXHAUSTED with backoff within that deadline, and raises
    `U2NetError` for anything that goes wrong.

    Example:
        >>> async with AsyncU2NetClient() as client:
        ...     (await client.cutout("photo.jpg")).image.save("photo.png")

    Args:
        target: host:port of TorchServe's gRPC inference API.
        management_target: host:port of TorchServe's gRPC management API.
        token: The inference key; by default read from the key file.
        management_token: The management key; by default read from the key file.
        key_file: TorchServe's key_file.json; by default $U2SERVE_KEY_FILE, else ./var/key_file.json
            if it exists (where `make serve` puts it), else no token is sent.
        timeout: Default deadline of each call in seconds, retries included; None waits forever.
        retry: When and how to retry; RetryPolicy() by default.
        max_send_bytes: The largest request; keep it at the server's max_request_size.
        max_receive_bytes: The largest response; keep it at the server's max_response_size.
        tls: Connect over TLS, trusting the system's roots unless `ca_file`/`root_certificates` say otherwise.
        ca_file: PEM file of the CA (or the self-signed certificate) to trust; needs tls=True.
        root_certificates: The same as PEM bytes; needs tls=True.
        tls_server_name: The name to expect in the server's certificate when it differs from the
            target's host (e.g. through a port-forward).
        channel_credentials: Any other grpc.ChannelCredentials, instead of `tls`.
        protocol: "torchserve" (TorchServe's gRPC API), "v2" (the Open Inference Protocol: Triton's segment
            model, or TorchServe with ts_open_inference_protocol=true), or "triton" (KServe v2 tensors to the
            `<model>_network` that `python -m handler.triton` exports; pre/postprocessing run on the client).
            Same results on all three. With "v2" and "triton" the key file is looked for in
            ./var/triton/key_file.json first, and models()/describe() read a Triton's repository and configs.

    Raises:
        U2NetError: INVALID_ARGUMENT for settings that cannot work, e.g. a key file that does not exist.
    """

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
        self._channel = _channel(target, options, security.credentials)
        self._management_channel = _channel(management_target, options, security.credentials)
        self._inference = inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)
        self._management = management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel)
        self._v2 = V2Stub(self._channel, self._protocol.v2_services)
        self._repository = _triton.RepositoryStub(self._channel)

    @property
    def target(self) -> str:
        """host:port of the inference API."""
        return self._settings.target

    @property
    def management_target(self) -> str:
        """host:port of the management API."""
        return self._settings.management_target

    async def __aenter__(self) -> AsyncU2NetClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close both channels; calls in flight are cancelled."""
        await self._channel.close()
        await self._management_channel.close()

    async def mask(
        self,
        image: ImageInput,
        model: str = "u2netp",
        *,
        version: str | None = None,
        threshold: float | None = None,
        crop: bool = False,
        crop_margin: int = 0,
        box_threshold: float | None = None,
        png_compression: int | None = None,
        refine: str | None = None,
        matting_foreground_threshold: int | None = None,
        matting_background_threshold: int | None = None,
        matting_erode_size: int | None = None,
        output_format: str | None = None,
        quality: int | None = None,
        timeout: float | None = None,
    ) -> MaskResult:
        """As `U2NetClient.mask`, awaited."""
        options = Options(  # checked here, before any call
            None, threshold, crop, crop_margin, box_threshold, png_compression, refine=refine,
            matting_foreground_threshold=matting_foreground_threshold,
            matting_background_threshold=matting_background_threshold, matting_erode_size=matting_erode_size,
            output_format=output_format, quality=quality,
        )  # fmt: skip
        return await self._segment(MASK, image, model, version, options, timeout, MaskResult)

    async def cutout(
        self,
        image: ImageInput,
        model: str = "u2netp",
        *,
        version: str | None = None,
        background: Color | None = None,
        threshold: float | None = None,
        crop: bool = False,
        crop_margin: int = 0,
        box_threshold: float | None = None,
        png_compression: int | None = None,
        background_image: ImageInput | None = None,
        background_fit: str | None = None,
        effect: str | None = None,
        blur_radius: float | None = None,
        refine: str | None = None,
        matting_foreground_threshold: int | None = None,
        matting_background_threshold: int | None = None,
        matting_erode_size: int | None = None,
        output_format: str | None = None,
        quality: int | None = None,
        timeout: float | None = None,
    ) -> CutoutResult:
        """As `U2NetClient.cutout`, awaited."""
        options = Options(  # checked here, before any call
            background, threshold, crop, crop_margin, box_threshold, png_compression,
            background_image=background_image, background_fit=background_fit, effect=effect,
            blur_radius=blur_radius, refine=refine, matting_foreground_threshold=matting_foreground_threshold,
            matting_background_threshold=matting_background_threshold, matting_erode_size=matting_erode_size,
            output_format=output_format, quality=quality,
        )  # fmt: skip
        return await self._segment(CUTOUT, image, model, version, options, timeout, CutoutResult)

    def map(
        self, fn: Callable[[T], Awaitable[R]], items: Iterable[T], *, concurrency: int = 4
    ) -> AsyncGenerator[R | U2NetError, None]:
        """As `U2NetClient.map`, for coroutine functions: `async for` over the results, in input order."""
        return aordered_map(fn, items, concurrency)

    async def mask_many(
        self,
        images: Iterable[ImageInput],
        model: str = "u2netp",
        *,
        concurrency: int = 4,
        version: str | None = None,
        threshold: float | None = None,
        crop: bool = False,
        crop_margin: int = 0,
        box_threshold: float | None = None,
        png_compression: int | None = None,
        refine: str | None = None,
        matting_foreground_threshold: int | None = None,
        matting_background_threshold: int | None = None,
        matting_erode_size: int | None = None,
        output_format: str | None = None,
        quality: int | None = None,
        timeout: float | None = None,
    ) -> list[MaskResult | U2NetError]:
        """As `U2NetClient.mask_many`, awaited."""

        options = Options(  # checked here, before any call
            None, threshold, crop, crop_margin, box_threshold, png_compression, refine=refine,
            matting_foreground_threshold=matting_foreground_threshold,
            matting_background_threshold=matting_background_threshold, matting_erode_size=matting_erode_size,
            output_format=output_format, quality=quality,
        )  # fmt: skip

        async def one(image: ImageInput) -> MaskResult:
            return await self._segment(MASK, image, model, version, options, timeout, MaskResult)

        return [r async for r in self.map(one, images, concurrency=concurrency)]

    async def cutout_many(
        self,
        images: Iterable[ImageInput],
        model: str = "u2netp",
        *,
        concurrency: int = 4,
        version: str | None = None,
        background: Color | None = None,
        threshold: float | None = None,
        crop: bool = False,
        crop_margin: int = 0,
        box_threshold: float | None = None,
        png_compression: int | None = None,
        background_image: ImageInput | None = None,
        background_fit: str | None = None,
        effect: str | None = None,
        blur_radius: float | None = None,
        refine: str | None = None,
        matting_foreground_threshold: int | None = None,
        matting_background_threshold: int | None = None,
        matting_erode_size: int | None = None,
        output_format: str | None = None,
        quality: int | None = None,
        timeout: float | None = None,
    ) -> list[CutoutResult | U2NetError]:
        """As `U2NetClient.cutout_many`, awaited."""

        options = Options(  # checked here, before any call
            background, threshold, crop, crop_margin, box_threshold, png_compression,
            background_image=background_image, background_fit=background_fit, effect=effect,
            blur_radius=blur_radius, refine=refine, matting_foreground_threshold=matting_foreground_threshold,
            matting_background_threshold=matting_background_threshold, matting_erode_size=matting_erode_size,
            output_format=output_format, quality=quality,
        )  # fmt: skip

        async def one(image: ImageInput) -> CutoutResult:
            return await self._segment(CUTOUT, image, model, version, options, timeout, CutoutResult)

        return [r async for r in self.map(one, images, concurrency=concurrency)]

    async def video(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        model: str = "u2netp",
        *,
        version: str | None = None,
        background: Color | None = None,
        threshold: float | None = None,
        background_image: ImageInput | None = None,
        effect: str | None = None,
        refine: str | None = None,
        options: Options | None = None,
        format: str | None = None,
        smooth: float = 0.0,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> VideoResult:
        """As `U2NetClient.video`, awaited; decoding and encoding run in a worker thread."""
        options = video_options(options, background, threshold, background_image, effect, refine)
        job = await asyncio.to_thread(VideoJob, src, dst, options, format, smooth, max_pixels)
        return await arun_video(
            job, lambda png: self.mask(png, model, version=version, timeout=timeout), concurrency, progress
        )

    async def ping(self, *, timeout: float | None = 5.0) -> bool:
        """As `U2NetClient.ping`, awaited."""
        try:
            reply = await self._call(self._inference.Ping, empty_pb2.Empty(), "inference", timeout, _NO_RETRY)
        except U2NetError as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                raise
            log.info("ping %s: %s", self._settings.target, exc)
            return False
        return healthy(reply.health)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """As `U2NetClient.models`, awaited."""
        if await self._on_triton(timeout):
            index = await self._call(self._repository.RepositoryIndex, _triton.index_request(), "management", timeout)
            return [await self.describe(name, timeout=timeout) for name in _triton.served_names(index)]
        names: list[str] = []
        page: int | None = 0
        while page is not None:
            request = management_pb2.ListModelsRequest(limit=mgmt.PAGE_SIZE, next_page_token=page)
            reply = await self._call(self._management.ListModels, request, "management", timeout)
            found, page = mgmt.parse_model_list(reply.msg)
            names += found
        return [await self.describe(name, timeout=timeout) for name in names]

    async def describe(self, model: str, version: str | None = None, *, timeout: float | None = None) -> ModelInfo:
        """As `U2NetClient.describe`, awaited."""
        if await self._on_triton(timeout):
            mgmt.describe_request(model, version)  # the same checks
            reply = await self._call(
                self._repository.ModelConfig, _triton.config_request(model, version), "management", timeout
            )
            meta = await self.model_metadata(model, version, timeout=timeout)
            ready = await self.model_ready(model, version, timeout=timeout)
            return _triton.model_info(reply.config, version or (meta.versions or ("",))[-1], ready)
        request = mgmt.describe_request(model, version)
        reply = await self._call(self._management.DescribeModel, request, "management", timeout)
        return mgmt.parse_description(reply.msg)[0]

    async def scale(
        self,
        model: str,
        min_workers: int,
        max_workers: int | None = None,
        *,
        version: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """As `U2NetClient.scale`, awaited."""
        deadline = self._settings.deadline(timeout)
        request = mgmt.scale_request(model, min_workers, max_workers, version, wait, deadline)
        await self._call(self._management.ScaleWorker, request, "management", deadline)

    async def set_default(self, model: str, version: str, *, timeout: float | None = None) -> None:
        """As `U2NetClient.set_default`, awaited."""
        await self._call(self._management.SetDefault, mgmt.set_default_request(model, version), "management", timeout)

    async def register(
        self,
        mar: str,
        *,
        model: str | None = None,
        initial_workers: int = 1,
        batch_size: int | None = None,
        max_batch_delay_ms: int | None = None,
        response_timeout_s: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """As `U2NetClient.register`, awaited."""
        request = mgmt.register_request(
            mar, model, initial_workers, batch_size, max_batch_delay_ms, response_timeout_s, wait
        )
        await self._call(self._management.RegisterModel, request, "management", timeout)

    async def unregister(self, model: str, version: str | None = None, *, timeout: float | None = None) -> None:
        """As `U2NetClient.unregister`, awaited."""
        request = mgmt.unregister_request(model, version)
        await self._call(self._management.UnregisterModel, request, "management", timeout)

    async def _segment(
        self,
        task: int,
        image: ImageInput,
        model: str,
        version: str | None,
        options: Options,
        timeout: float | None,
        result_type: type[ResultT],
    ) -> ResultT:
        plan = self._protocol.segment(task, image, model, version, options, self._settings.max_send_bytes, result_type)
        stub = self._v2 if plan.v2 else self._inference
        reply = await self._call(getattr(stub, plan.method), plan.message, "inference", timeout)
        return plan.finish(reply)

    async def server_live(self, *, timeout: float | None = None) -> bool:
        """KServe v2 ServerLive (protocol "v2" or "triton"; TorchServe needs ts_open_inference_protocol=true)."""
        return (await self._call(self._v2.ServerLive, v2pb.ServerLiveRequest(), "inference", timeout)).live

    async def server_ready(self, *, timeout: float | None = None) -> bool:
        """KServe v2 ServerReady: whether the server takes inference requests."""
        return (await self._call(self._v2.ServerReady, v2pb.ServerReadyRequest(), "inference", timeout)).ready

    async def model_ready(self, model: str, version: str | None = None, *, timeout: float | None = None) -> bool:
        """KServe v2 ModelReady: whether `model` has a ready instance (TorchServe: a healthy worker)."""
        request = v2pb.ModelReadyRequest(name=self._protocol.v2_model(model), version=version or "")
        return (await self._call(self._v2.ModelReady, request, "inference", timeout)).ready

    async def model_metadata(
        self, model: str, version: str | None = None, *, timeout: float | None = None
    ) -> ModelMetadata:
        """KServe v2 ModelMetadata: name, versions, platform and tensors.

        Raises:
            U2NetError: NOT_FOUND for an unknown model.
        """
        request = v2pb.ModelMetadataRequest(name=self._protocol.v2_model(model), version=version or "")
        return metadata_from(await self._call(self._v2.ModelMetadata, request, "inference", timeout))

    async def _on_triton(self, timeout: float | None) -> bool:
        """Whether the server is Triton: protocol "triton", or "v2" once ServerLive found Triton's service."""
        if self._protocol.name == "torchserve":
            return False
        await self.server_live(timeout=timeout)  # settles which v2 service the server implements
        return self._v2.is_triton

    async def _call(
        self,
        method: Callable[..., Awaitable[R]],
        request: object,
        api: str,
        timeout: float | None,
        retry: RetryPolicy | None = None,
    ) -> R:
        deadline = self._settings.deadline(timeout)
        metadata = self._settings.metadata(api)
        return await acall(
            lambda left: method(request, timeout=left, metadata=metadata),
            retry or self._settings.retry,
            deadline,
            self._settings.error_mapper(api, deadline),
        )


def _channel(
    target: str, options: Iterable[tuple[str, int | str]], credentials: grpc.ChannelCredentials | None
) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, credentials, options=list(options))
