"""U2NetClient: the blocking client over grpc's sync API."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterable
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
from u2net_client._concurrency import ordered_map
from u2net_client._errors import U2NetError
from u2net_client._generated import inference_pb2_grpc, management_pb2, management_pb2_grpc
from u2net_client._generated import open_inference_grpc_pb2 as v2pb
from u2net_client._image import ImageInput
from u2net_client._protocol import Protocol
from u2net_client._request import CUTOUT, MASK, ResultT
from u2net_client._retry import RetryPolicy, call
from u2net_client._types import CutoutResult, MaskResult, ModelInfo
from u2net_client._v2 import ModelMetadata, V2Stub, metadata_from
from u2net_client._video import DEFAULT_CONCURRENCY, Progress, VideoJob, VideoResult, video_options
from u2net_client._video import run as run_video
from u2net_client.imaging import DEFAULT_MAX_PIXELS
from u2net_client.options import Color, Options

T = TypeVar("T")
R = TypeVar("R")

_NO_RETRY = RetryPolicy(max_attempts=1)
log = logging.getLogger(__name__)


class U2NetClient:
    """A blocking client for u2serve's gRPC API.

    One client holds two channels (inference and management) and is safe to share between
    threads. Every call takes a `timeout` (seconds, overriding the client's), retries
    UNAVAILABLE and RESOURCE_EXHAUSTED with backoff within that deadline, and raises
    `U2NetError` for anything that goes wrong.

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

    def mask(
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
        """The saliency mask of one image.

        Args:
            image: Encoded image bytes, a path, or a PIL image.
            model: The served model: "u2netp" (small, fast) or "u2net".
            version: The model version; None for the default one.
            threshold: Make the mask hard: 255 where saliency >= threshold (0..1), else 0.
            crop: Crop the mask to the salient object's bounding box.
            crop_margin: Pixels added around the box when cropping.
            box_threshold: Saliency (0..1) above which a pixel counts for the box; None for 0.5.
            png_compression: zlib level 0..9 of the returned PNG; None for the server's default.
            refine: "none" (default), "postprocess" (rembg's post_process_mask: a hard mask with smooth
                outlines) or "matting" (pymatting alpha matting of the edges, foreground colours estimated).
            matting_foreground_threshold, matting_background_threshold, matting_erode_size: rembg's
                matting knobs (defaults 240, 10, 10); refine="matting" only.
            output_format: "png" (default), "webp" (lossless unless `quality`) or "jpeg".
            quality: 1..100 for "jpeg" (default 90) or lossy "webp".
            timeout: Deadline in seconds, retries included; None for the client's.

        Returns:
            The mask: `.image` (PIL, mode "L", the input's displayed size unless cropped),
            `.array`, `.box`, `.model`, `.timings`.

        Raises:
            U2NetError: INVALID_ARGUMENT for an unreadable image or a bad option, NOT_FOUND for an
                unknown model, UNAVAILABLE when the server cannot be reached, and so on.
        """
        options = Options(  # checked here, before any call
            None, threshold, crop, crop_margin, box_threshold, png_compression, refine=refine,
            matting_foreground_threshold=matting_foreground_threshold,
            matting_background_threshold=matting_background_threshold, matting_erode_size=matting_erode_size,
            output_format=output_format, quality=quality,
        )  # fmt: skip
        return self._segment(MASK, image, model, version, options, timeout, MaskResult)

    def cutout(
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
        """The foreground of one image, cut out.

        Args:
            image: Encoded image bytes, a path, or a PIL image.
            model: The served model: "u2netp" (small, fast) or "u2net".
            version: The model version; None for the default one.
            background: Composite over this colour and return RGB: (r, g, b), "#rrggbb" or "r,g,b".
                None returns RGBA with the mask as alpha.
            threshold: Make the alpha hard: opaque where saliency >= threshold (0..1), else clear.
            crop: Crop to the salient object's bounding box.
            crop_margin: Pixels added around the box when cropping.
            box_threshold: Saliency (0..1) above which a pixel counts for the box; None for 0.5.
            png_compression: zlib level 0..9 of the returned PNG; None for the server's default.
            background_image: An image behind the subject: bytes, a path or a PIL image (sent with the
                request). RGB output unless background_fit="contain" without a `background` colour.
            background_fit: "cover" (default: scaled to cover, centre crop), "contain" (letterboxed; bars
                transparent, or the `background` colour) or "stretch".
            effect: "blur" (the input's background blurred, portrait style) or "greyscale" (the background
                desaturated, the subject in colour); RGB output. Not together with a background.
            blur_radius: Gaussian radius in pixels for effect="blur"; None for 1 % of the longer side.
            refine: "none" (default), "postprocess" (rembg's post_process_mask: a hard mask with smooth
                outlines) or "matting" (pymatting alpha matting of the edges, foreground colours estimated).
            matting_foreground_threshold, matting_background_threshold, matting_erode_size: rembg's
                matting knobs (defaults 240, 10, 10); refine="matting" only.
            output_format: "png" (default), "webp" (lossless unless `quality`) or "jpeg" (opaque results
                only: give a background or an effect).
            quality: 1..100 for "jpeg" (default 90) or lossy "webp".
            timeout: Deadline in seconds, retries included; None for the client's.

        Returns:
            The cutout: `.image` (PIL, "RGBA", or "RGB" over a background), `.array`, `.box`,
            `.model`, `.timings`.

        Raises:
            U2NetError: As for `mask`.
        """
        options = Options(  # checked here, before any call
            background, threshold, crop, crop_margin, box_threshold, png_compression,
            background_image=background_image, background_fit=background_fit, effect=effect,
            blur_radius=blur_radius, refine=refine, matting_foreground_threshold=matting_foreground_threshold,
            matting_background_threshold=matting_background_threshold, matting_erode_size=matting_erode_size,
            output_format=output_format, quality=quality,
        )  # fmt: skip
        return self._segment(CUTOUT, image, model, version, options, timeout, CutoutResult)

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

    def mask_many(
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
        """Masks of many images, `concurrency` requests at a time (so the server can batch them).

        Args:
            images: The images, each as `mask` takes it.
            concurrency: Requests in flight at once.
            model, version, threshold, crop, crop_margin, box_threshold, png_compression, refine,
                matting_*, output_format, quality, timeout: As for `mask`, applied to every image;
                `timeout` is per image.

        Returns:
            One entry per image, in input order: its MaskResult, or the U2NetError it failed with.
        """

        options = Options(  # checked here, before any call
            None, threshold, crop, crop_margin, box_threshold, png_compression, refine=refine,
            matting_foreground_threshold=matting_foreground_threshold,
            matting_background_threshold=matting_background_threshold, matting_erode_size=matting_erode_size,
            output_format=output_format, quality=quality,
        )  # fmt: skip

        def one(image: ImageInput) -> MaskResult:
            return self._segment(MASK, image, model, version, options, timeout, MaskResult)

        return list(self.map(one, images, concurrency=concurrency))

    def cutout_many(
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
        """Cutouts of many images, `concurrency` requests at a time (so the server can batch them).

        Args:
            images: The images, each as `cutout` takes it.
            concurrency: Requests in flight at once.
            model, version, background, threshold, crop, crop_margin, box_threshold, png_compression,
                background_image, background_fit, effect, blur_radius, refine, matting_*, output_format,
                quality, timeout: As for `cutout`, applied to every image (the background image is read
                once); `timeout` is per image.

        Returns:
            One entry per image, in input order: its CutoutResult, or the U2NetError it failed with.
        """

        options = Options(  # checked here, before any call
            background, threshold, crop, crop_margin, box_threshold, png_compression,
            background_image=background_image, background_fit=background_fit, effect=effect,
            blur_radius=blur_radius, refine=refine, matting_foreground_threshold=matting_foreground_threshold,
            matting_background_threshold=matting_background_threshold, matting_erode_size=matting_erode_size,
            output_format=output_format, quality=quality,
        )  # fmt: skip

        def one(image: ImageInput) -> CutoutResult:
            return self._segment(CUTOUT, image, model, version, options, timeout, CutoutResult)

        return list(self.map(one, images, concurrency=concurrency))

    def video(
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
        """Removes the background of every frame of a video (needs PyAV: the `video` extra).

        Frames are decoded one at a time; each travels to the server as the 320×320 image the model
        sees, `concurrency` at a time so the server batches them; the masks come back in order and
        are composed with the full frames here. Frame rate, size, rotation (applied to the pixels)
        and duration are kept; audio is copied, or re-encoded when the container needs it.

        Args:
            src: The input video (anything FFmpeg reads).
            dst: The output: .webm (VP9 with alpha), .mov (ProRes 4444 with alpha) or .mp4 (H.264,
                opaque: needs `background`). Written to a temporary file, renamed when complete.
            model: The served model: "u2netp" or "u2net".
            version: The model version; None for the default one.
            background: Composite over this colour (opaque output); None keeps the alpha.
            threshold: Make the alpha hard: opaque where saliency >= threshold (0..1).
            background_image: An image behind the subject (fitted to each frame); opaque output.
            effect: "blur" or "greyscale": the frame's own background, blurred or desaturated; opaque output.
            refine: "postprocess" (rembg's smoothing of the mask) or "matting", per frame at full resolution.
            options: Every cutout option as one `Options` (also those without a parameter here), instead
                of the named ones; composed at full resolution on the client.
            format: "webm", "mov" or "mp4" instead of the output's extension.
            smooth: Temporal smoothing of the mask, 0 (off) up to below 1 (0.6 is a good start),
                reset at scene cuts.
            concurrency: Frames in flight at once.
            max_pixels: The largest frame (width * height) accepted.
            progress: Called after each frame with (frames done, frames expected or None).
            timeout: Deadline per frame in seconds, retries included; None for the client's.

        Returns:
            A summary: frames, source fps, duration, elapsed time, frames/s, mean server batch size,
            codecs, the flicker figure with and without smoothing.

        Raises:
            U2NetError: INVALID_ARGUMENT for an input that is not a readable video (no file left
                behind), a bad option or output format; FAILED_PRECONDITION without PyAV; any error
                of a frame's request.
        """
        options = video_options(options, background, threshold, background_image, effect, refine)
        job = VideoJob(src, dst, options, format, smooth, max_pixels)
        return run_video(
            job, lambda png: self.mask(png, model, version=version, timeout=timeout), concurrency, progress
        )

    def ping(self, *, timeout: float | None = 5.0) -> bool:
        """Whether the server answers and reports itself healthy; tried once, no retries.

        Raises:
            U2NetError: UNAUTHENTICATED when the server refuses the token (that needs fixing, not waiting).
        """
        try:
            reply = self._call(self._inference.Ping, empty_pb2.Empty(), "inference", timeout, _NO_RETRY)
        except U2NetError as exc:
            if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                raise
            log.info("ping %s: %s", self._settings.target, exc)
            return False
        return healthy(reply.health)

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the server serves (the default version of each), described.

        Raises:
            U2NetError: For a transport failure or a refused management token.
        """
        if self._on_triton(timeout):
            index = self._call(self._repository.RepositoryIndex, _triton.index_request(), "management", timeout)
            return [self.describe(name, timeout=timeout) for name in _triton.served_names(index)]
        names: list[str] = []
        page: int | None = 0
        while page is not None:
            request = management_pb2.ListModelsRequest(limit=mgmt.PAGE_SIZE, next_page_token=page)
            reply = self._call(self._management.ListModels, request, "management", timeout)
            found, page = mgmt.parse_model_list(reply.msg)
            names += found
        return [self.describe(name, timeout=timeout) for name in names]

    def describe(self, model: str, version: str | None = None, *, timeout: float | None = None) -> ModelInfo:
        """One model's settings, workers and weights origin.

        Raises:
            U2NetError: NOT_FOUND for an unknown model or version.
        """
        if self._on_triton(timeout):
            mgmt.describe_request(model, version)  # the same checks
            reply = self._call(
                self._repository.ModelConfig, _triton.config_request(model, version), "management", timeout
            )
            meta = self.model_metadata(model, version, timeout=timeout)
            ready = self.model_ready(model, version, timeout=timeout)
            return _triton.model_info(reply.config, version or (meta.versions or ("",))[-1], ready)
        request = mgmt.describe_request(model, version)
        reply = self._call(self._management.DescribeModel, request, "management", timeout)
        return mgmt.parse_description(reply.msg)[0]

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
        deadline = self._settings.deadline(timeout)
        request = mgmt.scale_request(model, min_workers, max_workers, version, wait, deadline)
        self._call(self._management.ScaleWorker, request, "management", deadline)

    def set_default(self, model: str, version: str, *, timeout: float | None = None) -> None:
        """Make `version` answer the requests for `model` that name no version.

        Raises:
            U2NetError: NOT_FOUND for an unknown model or version.
        """
        self._call(self._management.SetDefault, mgmt.set_default_request(model, version), "management", timeout)

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
        request = mgmt.register_request(
            mar, model, initial_workers, batch_size, max_batch_delay_ms, response_timeout_s, wait
        )
        self._call(self._management.RegisterModel, request, "management", timeout)

    def unregister(self, model: str, version: str | None = None, *, timeout: float | None = None) -> None:
        """Unload a model (one version, or the default one).

        Raises:
            U2NetError: PERMISSION_DENIED, saying how to enable it, when the server does not allow it;
                NOT_FOUND for an unknown model.
        """
        request = mgmt.unregister_request(model, version)
        self._call(self._management.UnregisterModel, request, "management", timeout)

    def _segment(
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
        reply = self._call(getattr(stub, plan.method), plan.message, "inference", timeout)
        return plan.finish(reply)

    def server_live(self, *, timeout: float | None = None) -> bool:
        """KServe v2 ServerLive (protocol "v2" or "triton"; TorchServe needs ts_open_inference_protocol=true)."""
        return (self._call(self._v2.ServerLive, v2pb.ServerLiveRequest(), "inference", timeout)).live

    def server_ready(self, *, timeout: float | None = None) -> bool:
        """KServe v2 ServerReady: whether the server takes inference requests."""
        return (self._call(self._v2.ServerReady, v2pb.ServerReadyRequest(), "inference", timeout)).ready

    def model_ready(self, model: str, version: str | None = None, *, timeout: float | None = None) -> bool:
        """KServe v2 ModelReady: whether `model` has a ready instance (TorchServe: a healthy worker)."""
        request = v2pb.ModelReadyRequest(name=self._protocol.v2_model(model), version=version or "")
        return (self._call(self._v2.ModelReady, request, "inference", timeout)).ready

    def model_metadata(self, model: str, version: str | None = None, *, timeout: float | None = None) -> ModelMetadata:
        """KServe v2 ModelMetadata: name, versions, platform and tensors.

        Raises:
            U2NetError: NOT_FOUND for an unknown model.
        """
        request = v2pb.ModelMetadataRequest(name=self._protocol.v2_model(model), version=version or "")
        return metadata_from(self._call(self._v2.ModelMetadata, request, "inference", timeout))

    def _on_triton(self, timeout: float | None) -> bool:
        """Whether the server is Triton: protocol "triton", or "v2" once ServerLive found Triton's service."""
        if self._protocol.name == "torchserve":
            return False
        self.server_live(timeout=timeout)  # settles which v2 service the server implements
        return self._v2.is_triton

    def _call(
        self,
        method: Callable[..., R],
        request: object,
        api: str,
        timeout: float | None,
        retry: RetryPolicy | None = None,
    ) -> R:
        deadline = self._settings.deadline(timeout)
        metadata = self._settings.metadata(api)
        return call(
            lambda left: method(request, timeout=left, metadata=metadata),
            retry or self._settings.retry,
            deadline,
            self._settings.error_mapper(api, deadline),
        )


def _channel(
    target: str, options: Iterable[tuple[str, int | str]], credentials: grpc.ChannelCredentials | None
) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=list(options))
