"""U2NetClient: the blocking client over grpc's sync API; every call's logic is in `_core`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc

from u2net_client._concurrency import check_concurrency, ordered_map
from u2net_client._core import CUTOUT_TASK, MASK_TASK, ClientBase, Rpc, Steps, option_keywords, options_of_video, resume
from u2net_client._errors import U2NetError, sdk_errors
from u2net_client._request import ResultT
from u2net_client._retry import call
from u2net_client._types import CutoutResult, MaskResult, ModelInfo
from u2net_client._v2 import ModelMetadata
from u2net_client.options import CutoutKeywords, MaskKeywords, Options
from u2serve.apps.video import DEFAULT_CONCURRENCY, Progress, VideoJob, VideoResult
from u2serve.apps.video import run as run_video
from u2serve.core.image import ImageInput
from u2serve.core.imaging import DEFAULT_MAX_PIXELS

if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:  # Python 3.10: the annotations stay strings at run time
    from typing_extensions import Unpack

T = TypeVar("T")
R = TypeVar("R")


class U2NetClient(ClientBase):
    """A blocking client for u2serve's gRPC API.

    One client holds two channels (inference and management) and is safe to share between
    threads. Every call takes a `timeout` (seconds, overriding the client's), retries
    UNAVAILABLE and RESOURCE_EXHAUSTED with backoff within that deadline, and raises
    `U2NetError` for anything that goes wrong.

    The segment methods take their options as keywords (`crop=True`) or as one
    `options=Options(...)`, not both at once; `Options` describes each option.

    Example:
        >>> with U2NetClient() as client:
        ...     client.cutout("photo.jpg").image.save("photo.png")

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

    _grpc = grpc

    def __enter__(self) -> U2NetClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close both channels; calls in flight are cancelled."""
        self._channel.close()
        self._management_channel.close()

    @option_keywords(MASK_TASK.keywords)
    def mask(
        self,
        image: ImageInput,
        model: str = "u2netp",
        *,
        version: str | None = None,
        options: Options | None = None,
        timeout: float | None = None,
        **keywords: Unpack[MaskKeywords],
    ) -> MaskResult:
        """The saliency mask of one image.

        Args:
            image: Encoded image bytes, a path, or a PIL image.
            model: The served model: "u2netp" (small, fast) or "u2net".
            version: The model version; None for the default one.
            options: The options as one `Options`, instead of keywords (giving both is an error).
            timeout: Deadline in seconds, retries included; None for the client's.
            **keywords: The options by name, each as `Options` describes it: threshold, crop, crop_margin,
                box_threshold, png_compression, refine, matting_foreground_threshold,
                matting_background_threshold, matting_erode_size, output_format, quality.

        Returns:
            The mask: `.image` (PIL, mode "L", the input's displayed size unless cropped),
            `.array`, `.box`, `.model`, `.timings`.

        Raises:
            U2NetError: INVALID_ARGUMENT for an unreadable image, a bad option, or `options` given with
                keywords; NOT_FOUND for an unknown model, UNAVAILABLE when the server cannot be reached,
                and so on.
            TypeError: For a keyword that is no option of a mask (those of a cutout's background among them).
        """
        checked = MASK_TASK.options("mask", options, keywords)
        return self._run(self._calls.segment(MASK_TASK, image, model, version, checked, timeout))

    @option_keywords(CUTOUT_TASK.keywords)
    def cutout(
        self,
        image: ImageInput,
        model: str = "u2netp",
        *,
        version: str | None = None,
        options: Options | None = None,
        timeout: float | None = None,
        **keywords: Unpack[CutoutKeywords],
    ) -> CutoutResult:
        """The foreground of one image, cut out.

        Args:
            image: Encoded image bytes, a path, or a PIL image.
            model: The served model: "u2netp" (small, fast) or "u2net".
            version: The model version; None for the default one.
            options: The options as one `Options`, instead of keywords (giving both is an error).
            timeout: Deadline in seconds, retries included; None for the client's.
            **keywords: The options by name, each as `Options` describes it: a mask's (see `mask`) and
                background, background_image, background_fit, effect, blur_radius.

        Returns:
            The cutout: `.image` (PIL, "RGBA", or "RGB" over a background), `.array`, `.box`,
            `.model`, `.timings`.

        Raises:
            U2NetError: As for `mask`; also INVALID_ARGUMENT for output_format="jpeg" with alpha left.
            TypeError: For a keyword that is no option.
        """
        checked = CUTOUT_TASK.options("cutout", options, keywords)
        return self._run(self._calls.segment(CUTOUT_TASK, image, model, version, checked, timeout))

    def map(
        self, fn: Callable[[T], R], items: Iterable[T], *, concurrency: int = 4
    ) -> Generator[R | U2NetError, None, None]:
        """`fn` over `items` with at most `concurrency` calls in flight, in input order.

        A U2NetError raised for one item is yielded in its place; the other items go on.
        Results come as they are ready, so a long input list is never held in memory at once.

        Example:
            >>> for path, result in zip(paths, client.map(lambda p: client.cutout(p, crop=True), paths)):
            ...     print(path, result)
        """
        return ordered_map(fn, items, concurrency)

    @option_keywords(MASK_TASK.keywords)
    def mask_many(
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
        """Masks of many images, `concurrency` requests at a time (so the server can batch them).

        Args:
            images: The images, each as `mask` takes it.
            concurrency: Requests in flight at once.
            model, version, options, timeout, **keywords: As for `mask`, applied to every image (the options
                are checked once, before any request); `timeout` is per image.

        Returns:
            One entry per image, in input order: its MaskResult, or the U2NetError it failed with.

        Raises:
            U2NetError: INVALID_ARGUMENT for a bad option, before any request.
            TypeError: For a keyword that is no option of a mask.
        """
        checked = MASK_TASK.options("mask_many", options, keywords)
        each = self._calls.segments(MASK_TASK, model, version, checked, timeout)
        return self._many(each, images, concurrency)

    @option_keywords(CUTOUT_TASK.keywords)
    def cutout_many(
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
        """Cutouts of many images, `concurrency` requests at a time (so the server can batch them).

        Args:
            images: The images, each as `cutout` takes it.
            concurrency: Requests in flight at once.
            model, version, options, timeout, **keywords: As for `cutout`, applied to every image (the
                options are checked once and the background image read once); `timeout` is per image.

        Returns:
            One entry per image, in input order: its CutoutResult, or the U2NetError it failed with.

        Raises:
            U2NetError: INVALID_ARGUMENT for a bad option, before any request.
            TypeError: For a keyword that is no option.
        """
        checked = CUTOUT_TASK.options("cutout_many", options, keywords)
        each = self._calls.segments(CUTOUT_TASK, model, version, checked, timeout)
        return self._many(each, images, concurrency)

    @option_keywords(CUTOUT_TASK.keywords)
    def video(
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
        """Removes the background of every frame of a video (needs PyAV: the `video` extra).

        Frames are decoded one at a time; each travels to the server as the 320×320 image the model
        sees, `concurrency` at a time so the server batches them; the masks come back in order and
        are composed with the full frames here. Frame rate, size, rotation (applied to the pixels)
        and duration are kept; audio is copied, or re-encoded when the container needs it.

        Args:
            src: The input video (anything FFmpeg reads).
            dst: The output: .webm (VP9 with alpha), .mov (ProRes 4444 with alpha) or .mp4 (H.264,
                opaque: needs a background). Written to a temporary file, renamed when complete.
            model: The served model: "u2netp" or "u2net".
            version: The model version; None for the default one.
            options: The cutout options as one `Options`, instead of keywords (giving both is an error);
                composed at full resolution on the client. crop is refused (a video keeps one size).
            format: "webm", "mov" or "mp4" instead of the output's extension.
            smooth: Temporal smoothing of the mask, 0 (off) up to below 1 (0.6 is a good start),
                reset at scene cuts.
            concurrency: Frames in flight at once.
            max_pixels: The largest frame (width * height) accepted.
            progress: Called after each frame with (frames done, frames expected or None).
            timeout: Deadline per frame in seconds, retries included; None for the client's.
            **keywords: The cutout options by name, as for `cutout` (a background, background_image or
                effect makes the output opaque).

        Returns:
            A summary: frames, source fps, duration, elapsed time, frames/s, mean server batch size,
            codecs, the flicker figure with and without smoothing.

        Raises:
            U2NetError: INVALID_ARGUMENT for an input that is not a readable video (no file left
                behind), a bad option or output format, or `options` given with keywords;
                FAILED_PRECONDITION without PyAV; any error of a frame's request.
            TypeError: For a keyword that is no option.
        """
        check_concurrency(concurrency)
        with sdk_errors():
            job = VideoJob(src, dst, options_of_video(options, keywords), format, smooth, max_pixels)
            return run_video(
                job,
                lambda png: self.mask(png, model, version=version, timeout=timeout),
                lambda fn, frames: self.map(fn, frames, concurrency=concurrency),
                progress,
            )

    def ping(self, *, timeout: float | None = 5.0) -> bool:
        """Whether the server answers and reports itself healthy; tried once, no retries.

        Raises:
            U2NetError: UNAUTHENTICATED when the server refuses the token (that needs fixing, not waiting).
        """
        return self._run(self._calls.ping(timeout))

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the server serves (the default version of each), described.

        Raises:
            U2NetError: For a transport failure or a refused management token.
        """
        return self._run(self._calls.models(timeout))

    def describe(
        self, model: str, version: str | None = None, *, handler: bool = True, timeout: float | None = None
    ) -> ModelInfo:
        """One model's settings, workers and weights origin.

        Args:
            handler: Ask the model's handler too (weights, engine, device): TorchServe sends that through a worker,
                behind its batch. False: TorchServe's frontend answers alone (settings, workers and their states),
                what a readiness check wants; a worker is never waited on.

        Raises:
            U2NetError: NOT_FOUND for an unknown model or version.
        """
        return self._run(self._calls.describe(model, version, timeout, handler))

    def scale(
        self,
        model: str,
        min_workers: int,
        max_workers: int | None = None,
        *,
        version: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Set how many worker processes serve `model`.

        Args:
            model: The model's name.
            min_workers: Workers kept running.
            max_workers: The most workers; None for `min_workers`.
            version: The model version; None for the default one.
            wait: Return only once the workers have started or stopped.
            timeout: Deadline in seconds; None for the client's.

        Raises:
            U2NetError: INVALID_ARGUMENT when min_workers > max_workers, NOT_FOUND for an unknown model.
        """
        self._run(self._calls.scale(model, min_workers, max_workers, version, wait, timeout))

    def set_default(self, model: str, version: str, *, timeout: float | None = None) -> None:
        """Make `version` answer the requests for `model` that name no version.

        Raises:
            U2NetError: NOT_FOUND for an unknown model or version.
        """
        self._run(self._calls.set_default(model, version, timeout))

    def register(
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
        """Load a model archive into the server.

        The server must allow it: `enable_model_api=true` in its config.properties (u2serve ships
        with it off), and the archive's URL must match `allowed_urls` (the local model store).

        Args:
            mar: The archive: a file name in the server's model store, or a URL it allows.
            model: The name to serve it under; None for the archive's own.
            initial_workers: Workers to start.
            batch_size: Requests per batch; None for the archive's setting.
            max_batch_delay_ms: How long to wait to fill a batch; None for the archive's setting.
            response_timeout_s: How long a worker may take per batch; None for the archive's setting.
            wait: Return only once the workers are up.
            timeout: Deadline in seconds; None for the client's.

        Raises:
            U2NetError: PERMISSION_DENIED, saying how to enable it, when the server does not allow it.
        """
        self._run(
            self._calls.register(
                mar, model, initial_workers, batch_size, max_batch_delay_ms, response_timeout_s, wait, timeout
            )
        )

    def unregister(self, model: str, version: str | None = None, *, timeout: float | None = None) -> None:
        """Unload a model (one version, or the default one).

        Raises:
            U2NetError: PERMISSION_DENIED, saying how to enable it, when the server does not allow it;
                NOT_FOUND for an unknown model.
        """
        self._run(self._calls.unregister(model, version, timeout))

    def server_live(self, *, timeout: float | None = None) -> bool:
        """KServe v2 ServerLive (protocol "v2" or "triton"; TorchServe needs ts_open_inference_protocol=true)."""
        return self._run(self._calls.server_live(timeout))

    def server_ready(self, *, timeout: float | None = None) -> bool:
        """KServe v2 ServerReady: whether the server takes inference requests."""
        return self._run(self._calls.server_ready(timeout))

    def model_ready(self, model: str, version: str | None = None, *, timeout: float | None = None) -> bool:
        """KServe v2 ModelReady: whether `model` has a ready instance (TorchServe: a healthy worker)."""
        return self._run(self._calls.model_ready(model, version, timeout))

    def model_metadata(self, model: str, version: str | None = None, *, timeout: float | None = None) -> ModelMetadata:
        """KServe v2 ModelMetadata: name, versions, platform and tensors.

        Raises:
            U2NetError: NOT_FOUND for an unknown model.
        """
        return self._run(self._calls.model_metadata(model, version, timeout))

    def _many(
        self, each: Callable[[ImageInput], Steps[ResultT]], images: Iterable[ImageInput], concurrency: int
    ) -> list[ResultT | U2NetError]:
        return list(self.map(lambda image: self._run(each(image)), images, concurrency=concurrency))

    def _run(self, steps: Steps[T]) -> T:
        """Makes the RPCs a call's steps ask for, one after another, blocking; returns its result."""
        step = resume(steps, None)
        while isinstance(step, Rpc):
            try:
                outcome = call(*self._attempt(step))
            except U2NetError as exc:
                outcome = exc
            step = resume(steps, outcome)
        return step.value
