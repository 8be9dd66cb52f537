"""AsyncU2NetClient: the asyncio twin of U2NetClient, over grpc.aio; every call's logic is in `_core`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc

from u2net_client._concurrency import aordered_map, check_concurrency
from u2net_client._core import CUTOUT_TASK, MASK_TASK, ClientBase, Rpc, Steps, option_keywords, options_of_video, resume
from u2net_client._errors import U2NetError, sdk_errors
from u2net_client._request import ResultT
from u2net_client._retry import acall
from u2net_client._types import CutoutResult, MaskResult, ModelInfo
from u2net_client._v2 import ModelMetadata
from u2net_client.options import CutoutKeywords, MaskKeywords, Options
from u2serve.apps.video import DEFAULT_CONCURRENCY, Progress, VideoJob, VideoResult
from u2serve.apps.video import arun as arun_video
from u2serve.core.image import ImageInput
from u2serve.core.imaging import DEFAULT_MAX_PIXELS

if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:  # Python 3.10: the annotations stay strings at run time
    from typing_extensions import Unpack

T = TypeVar("T")
R = TypeVar("R")


class AsyncU2NetClient(ClientBase):
    """An asyncio client for u2serve's gRPC API: U2NetClient's methods, awaited.

    It takes U2NetClient's arguments. Create it inside the event loop that uses it (grpc.aio channels
    belong to one loop). Every call takes a `timeout` (seconds, overriding the client's), retries
    UNAVAILABLE and RESOURCE_EXHAUSTED with backoff within that deadline, and raises `U2NetError` for
    anything that goes wrong.

    Example:
        >>> async with AsyncU2NetClient() as client:
        ...     (await client.cutout("photo.jpg")).image.save("photo.png")
    """

    _grpc = grpc.aio

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

    @option_keywords(MASK_TASK.keywords)
    async def mask(
        self,
        image: ImageInput,
        model: str = "u2netp",
        *,
        version: str | None = None,
        options: Options | None = None,
        timeout: float | None = None,
        **keywords: Unpack[MaskKeywords],
    ) -> MaskResult:
        """As `U2NetClient.mask`, awaited."""
        checked = MASK_TASK.options("mask", options, keywords)
        return await self._run(self._calls.segment(MASK_TASK, image, model, version, checked, timeout))

    @option_keywords(CUTOUT_TASK.keywords)
    async def cutout(
        self,
        image: ImageInput,
        model: str = "u2netp",
        *,
        version: str | None = None,
        options: Options | None = None,
        timeout: float | None = None,
        **keywords: Unpack[CutoutKeywords],
    ) -> CutoutResult:
        """As `U2NetClient.cutout`, awaited."""
        checked = CUTOUT_TASK.options("cutout", options, keywords)
        return await self._run(self._calls.segment(CUTOUT_TASK, image, model, version, checked, timeout))

    def map(
        self, fn: Callable[[T], Awaitable[R]], items: Iterable[T], *, concurrency: int = 4
    ) -> AsyncGenerator[R | U2NetError, None]:
        """As `U2NetClient.map`, for coroutine functions: `async for` over the results, in input order."""
        return aordered_map(fn, items, concurrency)

    @option_keywords(MASK_TASK.keywords)
    async def mask_many(
        self,
        images: Iterable[ImageInput],
        model: str = "u2netp",
        *,
        concurrency: int = 4,
        version: str | None = None,
        options: Options | None = None,
        timeout: float | None = None,
        **keywords: Unpack[MaskKeywords],
    ) -> list[MaskResult | U2NetError]:
        """As `U2NetClient.mask_many`, awaited."""
        checked = MASK_TASK.options("mask_many", options, keywords)
        each = self._calls.segments(MASK_TASK, model, version, checked, timeout)
        return await self._many(each, images, concurrency)

    @option_keywords(CUTOUT_TASK.keywords)
    async def cutout_many(
        self,
        images: Iterable[ImageInput],
        model: str = "u2netp",
        *,
        concurrency: int = 4,
        version: str | None = None,
        options: Options | None = None,
        timeout: float | None = None,
        **keywords: Unpack[CutoutKeywords],
    ) -> list[CutoutResult | U2NetError]:
        """As `U2NetClient.cutout_many`, awaited."""
        checked = CUTOUT_TASK.options("cutout_many", options, keywords)
        each = self._calls.segments(CUTOUT_TASK, model, version, checked, timeout)
        return await self._many(each, images, concurrency)

    @option_keywords(CUTOUT_TASK.keywords)
    async def video(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        model: str = "u2netp",
        *,
        version: str | None = None,
        options: Options | None = None,
        format: str | None = None,
        smooth: float = 0.0,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: Progress | None = None,
        timeout: float | None = None,
        **keywords: Unpack[CutoutKeywords],
    ) -> VideoResult:
        """As `U2NetClient.video`, awaited; decoding and encoding run in a worker thread."""
        checked = options_of_video(options, keywords)
        check_concurrency(concurrency)
        with sdk_errors():
            job = await asyncio.to_thread(VideoJob, src, dst, checked, format, smooth, max_pixels)
            return await arun_video(
                job, lambda png: self.mask(png, model, version=version, timeout=timeout), concurrency, progress
            )

    async def ping(self, *, timeout: float | None = 5.0) -> bool:
        """As `U2NetClient.ping`, awaited."""
        return await self._run(self._calls.ping(timeout))

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """As `U2NetClient.models`, awaited."""
        return await self._run(self._calls.models(timeout))

    async def describe(
        self, model: str, version: str | None = None, *, handler: bool = True, timeout: float | None = None
    ) -> ModelInfo:
        """As `U2NetClient.describe`, awaited."""
        return await self._run(self._calls.describe(model, version, timeout, handler))

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
        await self._run(self._calls.scale(model, min_workers, max_workers, version, wait, timeout))

    async def set_default(self, model: str, version: str, *, timeout: float | None = None) -> None:
        """As `U2NetClient.set_default`, awaited."""
        await self._run(self._calls.set_default(model, version, timeout))

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
        await self._run(
            self._calls.register(
                mar, model, initial_workers, batch_size, max_batch_delay_ms, response_timeout_s, wait, timeout
            )
        )

    async def unregister(self, model: str, version: str | None = None, *, timeout: float | None = None) -> None:
        """As `U2NetClient.unregister`, awaited."""
        await self._run(self._calls.unregister(model, version, timeout))

    async def server_live(self, *, timeout: float | None = None) -> bool:
        """As `U2NetClient.server_live`, awaited."""
        return await self._run(self._calls.server_live(timeout))

    async def server_ready(self, *, timeout: float | None = None) -> bool:
        """As `U2NetClient.server_ready`, awaited."""
        return await self._run(self._calls.server_ready(timeout))

    async def model_ready(self, model: str, version: str | None = None, *, timeout: float | None = None) -> bool:
        """As `U2NetClient.model_ready`, awaited."""
        return await self._run(self._calls.model_ready(model, version, timeout))

    async def model_metadata(
        self, model: str, version: str | None = None, *, timeout: float | None = None
    ) -> ModelMetadata:
        """As `U2NetClient.model_metadata`, awaited."""
        return await self._run(self._calls.model_metadata(model, version, timeout))

    async def _many(
        self, each: Callable[[ImageInput], Steps[ResultT]], images: Iterable[ImageInput], concurrency: int
    ) -> list[ResultT | U2NetError]:
        async def one(image: ImageInput) -> ResultT:
            return await self._run(each(image))

        return [result async for result in self.map(one, images, concurrency=concurrency)]

    async def _run(self, steps: Steps[T]) -> T:
        """Makes the RPCs a call's steps ask for, one after another, awaited; returns its result."""
        step = resume(steps, None)
        while isinstance(step, Rpc):
            try:
                outcome = await acall(*self._attempt(step))
            except U2NetError as exc:
                outcome = exc
            step = resume(steps, outcome)
        return step.value
