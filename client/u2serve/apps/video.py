"""Video background removal on the client: decode and encode with PyAV, masks from the server.

A `VideoJob` streams a clip: it decodes one frame at a time, hands out the small image the model
sees (`imaging.model_view`, 320×320) for the server to mask, and takes the masks back in order to
smooth them, bring them to full resolution and compose the frame with `compose.compose` before
encoding it. The clients (`U2NetClient.video`, `AsyncU2NetClient.video`) only move the frames to the
server and back, bounded and in order, so TorchServe batches them. Nothing holds more than the
frames in flight, and the output is written to a temporary file renamed when complete.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from u2serve.apps.temporal import Flicker, MaskSmoother, is_scene_cut, thumbnail
from u2serve.core import compose, imaging
from u2serve.core.errors import Code, CoreError, invalid
from u2serve.core.image import ImageInput
from u2serve.core.options import Color, Options

if TYPE_CHECKING:  # the SDK imports this module; at run time it hands the masks in
    from u2net_client import MaskResult

log = logging.getLogger(__name__)

Progress = Callable[[int, "int | None"], None]
"""Called after each frame written with (frames done, frames expected or None when unknown)."""
Ordered = Callable[[Callable[["Frame"], Any], Iterator["Frame"]], Generator[Any, None, None]]
"""A client's `map` with its concurrency: a function over frames, results (or errors) in input order."""


@dataclass(frozen=True)
class OutputFormat:
    """A container the video command writes.

    Attributes:
        name: The name users give (`format=`, the output's extension).
        encoders: Video encoders in order of preference; the first the bundled FFmpeg has is used.
        alpha_pix_fmt: The pixel format that carries alpha; None when the format cannot.
        opaque_pix_fmt: The pixel format over a background.
        audio_encoder: What audio the container cannot hold as it is gets re-encoded to.
        plays_in: Where the result plays, in words (docs/video.md's "Outputs" table gives the details).
    """

    name: str
    encoders: tuple[str, ...]
    alpha_pix_fmt: str | None
    opaque_pix_fmt: str
    audio_encoder: str
    plays_in: str


FORMATS: Mapping[str, OutputFormat] = {
    "webm": OutputFormat("webm", ("libvpx-vp9",), "yuva420p", "yuv420p", "libopus",
                         "browsers (Chrome, Firefox, Edge: alpha in a <video>), ffmpeg"),
    "mov": OutputFormat("mov", ("prores_ks",), "yuva444p10le", "yuv444p10le", "aac",
                        "video editors (Final Cut, Premiere, DaVinci Resolve, After Effects), QuickTime"),
    "mp4": OutputFormat("mp4", ("libx264", "libopenh264", "mpeg4"), None, "yuv420p", "aac",
                        "everything (opaque only)"),
}  # fmt: skip
# Encoder settings: VP9 at realtime speed (the server, not the encoder, should set the pace);
# ProRes 4444 (profile 4) carries a 16-bit alpha; H.264 at a visually transparent quality.
ENCODER_OPTIONS: Mapping[str, Mapping[str, str]] = {
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "28", "b": "0"},
    "prores_ks": {"profile": "4", "vendor": "apl0", "alpha_bits": "16"},
    "libx264": {"preset": "veryfast", "crf": "18"},
    "mpeg4": {"qscale": "2"},
}
# Frames in flight by default: enough to fill the CPU archive's batches of 8 while the client
# composes and encodes the frames that came back.
DEFAULT_CONCURRENCY = 12
# Demuxers that read still images: a PNG opens as a one-frame "video", but it is not one.
_IMAGE_DEMUXERS = ("_pipe", "image2")
_PYAV_HINT = "video needs PyAV: pip install 'u2serve[video]' (or: pip install av)"


def import_av() -> ModuleType:
    """PyAV, imported on first use so that the SDK installs and imports without it.

    Raises:
        CoreError: FAILED_PRECONDITION saying how to install it.
    """
    try:
        import av
    except ImportError as exc:
        raise CoreError(Code.FAILED_PRECONDITION, _PYAV_HINT) from exc
    return av


def output_format(dst: str | os.PathLike[str], format: str | None = None) -> OutputFormat:
    """The format to write: `format`, else the output's extension.

    Raises:
        CoreError: INVALID_ARGUMENT naming the accepted formats.
    """
    name = (format or Path(dst).suffix.lstrip(".")).lower()
    if name not in FORMATS:
        given = f"format={format!r}" if format else f"output {os.fspath(dst)!r}"
        raise invalid(f"{given}: unknown video format; accepted: {', '.join('.' + f for f in FORMATS)}")
    return FORMATS[name]


def video_options(
    given: Options | None,
    background: Color | None = None,
    threshold: float | None = None,
    background_image: ImageInput | None = None,
    effect: str | None = None,
    refine: str | None = None,
) -> Options:
    """The cutout options of the command line's video: `given` as it is, else built from the named ones
    (those left None are not given); `Options.from_call`'s rule.

    Raises:
        CoreError: INVALID_ARGUMENT for both at once, or a bad value.
    """
    named = {"background": background, "threshold": threshold, "background_image": background_image,
             "effect": effect, "refine": refine}  # fmt: skip
    return Options.from_call(given, {name: value for name, value in named.items() if value is not None})


def is_transparent(options: Options) -> bool:
    """Whether the video keeps an alpha channel: nothing goes behind the subject."""
    return options.rgb_background is None and options.background_image is None and options.effect is None


def check_options(options: Options, fmt: OutputFormat) -> None:
    """Refuses what cannot make a video: a transparent result in a format without alpha, cropping.

    Raises:
        CoreError: INVALID_ARGUMENT saying what to change.
    """
    if options.crop:
        raise invalid("crop changes the size from frame to frame; a video keeps one size (leave crop off)")
    if fmt.alpha_pix_fmt is None and is_transparent(options):
        raise invalid(
            f".{fmt.name} cannot carry transparency: give a background (e.g. background='#00ff00'), "
            "or write .webm or .mov for a transparent result"
        )


@dataclass(frozen=True)
class VideoResult:
    """What a video run did.

    Attributes:
        path: The file written.
        frames: Frames written (as many as the source has).
        fps: The source's (and the output's) frame rate.
        duration_s: The clip's length in seconds (frames / fps for a constant rate).
        elapsed_s: Wall-clock seconds the run took.
        mean_batch_size: The mean size of the server batches the frames ran in.
        format: "webm", "mov" or "mp4".
        video_codec: The encoder used, e.g. "libvpx-vp9".
        transparent: Whether the output carries alpha.
        audio: "copied <codec>", "re-encoded <codec> to <codec>", or None when the source has none.
        flicker: The flicker figure of the masks written (mean absolute frame-to-frame change, 0..1,
            within scenes); None for a single frame.
        flicker_unsmoothed: The same of the masks as the server returned them (equal to `flicker`
            without smoothing).
        scene_cuts: Scene cuts found (each resets the smoothing).
        smooth: The smoothing strength used; 0 for none.
    """

    path: Path
    frames: int
    fps: float
    duration_s: float
    elapsed_s: float
    mean_batch_size: float
    format: str
    video_codec: str
    transparent: bool
    audio: str | None
    flicker: float | None
    flicker_unsmoothed: float | None
    scene_cuts: int
    smooth: float

    @property
    def frames_per_second(self) -> float:
        """Frames processed per wall-clock second."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class Frame:
    """One decoded frame on its way through the pipeline.

    Attributes:
        index: Its position in the clip, from 0.
        rgb: The full frame as displayed (rotation applied), HxWx3 uint8.
        small: The model's view of it, 320×320x3 uint8.
        png: `small` as the PNG to send.
        scene_cut: Whether it starts a new scene.
    """

    index: int
    rgb: np.ndarray = field(repr=False)
    small: np.ndarray = field(repr=False)
    png: bytes = field(repr=False)
    scene_cut: bool
    pts: int


def _rotation_turns(degrees: float) -> int:
    """Quarter turns counter-clockwise that display the frame as FFmpeg's display matrix says."""
    return round(degrees / 90.0) % 4


class _Source:
    """An opened input clip: its video stream checked, its audio stream (if any) noted."""

    def __init__(self, av: ModuleType, path: Path, max_pixels: int) -> None:
        if not path.is_file():
            raise invalid(f"{path}: no such video file")
        try:
            self.container = av.open(os.fspath(path), "r")
        except av.error.EOFError as exc:
            raise invalid(f"{path} ends before its first video frame (an empty or cut-short video)") from exc
        except av.error.FFmpegError as exc:
            raise invalid(f"{path} is not a video FFmpeg can read ({exc.strerror or exc})") from exc
        try:
            self.stream = self._video_stream(path)
            self._check_size(path, max_pixels)
        except BaseException:
            self.container.close()
            raise
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        self.stream.thread_type = "AUTO"
        self.fps = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        self.expected_frames = self._expected_frames()

    def _video_stream(self, path: Path) -> Any:
        fmt = self.container.format.name
        if any(part.endswith(_IMAGE_DEMUXERS) for part in fmt.split(",")):
            raise invalid(f"{path} is a still image ({fmt}), not a video; use `u2net-client cutout` for images")
        if not self.container.streams.video:
            raise invalid(f"{path} ({fmt}) has no video stream")
        stream = self.container.streams.video[0]
        codec = stream.codec_context
        if codec is None or codec.codec is None or not codec.codec.is_decoder:
            raise invalid(f"{path}: unknown video codec; the bundled FFmpeg has no decoder for it")
        return stream

    def _check_size(self, path: Path, max_pixels: int) -> None:
        width, height = self.stream.codec_context.width, self.stream.codec_context.height
        if width <= 0 or height <= 0:
            raise invalid(f"{path}: the video stream declares no picture size ({width}x{height})")
        if width * height > max_pixels:
            raise invalid(
                f"{path}: frames of {width}x{height} = {width * height} pixels, over the limit of "
                f"{max_pixels} pixels (width x height); downscale the video first"
            )

    def _expected_frames(self) -> int | None:
        if self.stream.frames:
            return int(self.stream.frames)
        if self.stream.duration is not None and self.stream.time_base is not None:
            return round(float(self.stream.duration * self.stream.time_base * self.fps))
        if self.container.duration:
            return round(self.container.duration / 1_000_000 * float(self.fps))
        return None


class VideoJob:
    """One clip from `src` to `dst`: decode, hand out frames, take masks back in order, encode.

    Use it as a context manager: leaving it by an exception (or Ctrl-C) removes the temporary
    output, so no partial file is left; `finish()` completes and renames it.

    Args:
        src: The input video.
        dst: The output; its extension, or `format`, chooses the container.
        options: The cutout options (checked); composed at full resolution on the client.
        format: "webm", "mov" or "mp4"; None for the extension's.
        smooth: Temporal smoothing strength, 0 (off) up to below 1.
        max_pixels: The largest frame (width * height) accepted.

    Raises:
        CoreError: INVALID_ARGUMENT for an input that is not a readable video, an oversized one, an
            unknown output format or options that cannot make a video; FAILED_PRECONDITION without PyAV.
    """

    def __init__(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        options: Options,
        format: str | None = None,
        smooth: float = 0.0,
        max_pixels: int = imaging.DEFAULT_MAX_PIXELS,
    ) -> None:
        self.format = output_format(dst, format)
        check_options(options, self.format)
        if not 0.0 <= smooth < 1.0:
            raise invalid(f"smooth={smooth!r}; accepted: 0 (off) up to, not including, 1")
        self._av = import_av()
        self.options, self.smooth = options, smooth
        self.dst = Path(dst)
        self._tmp = self.dst.with_name(f".{self.dst.name}.part")
        self._started = time.monotonic()
        self._background = self._background_image(max_pixels)
        self._source = _Source(self._av, Path(src), max_pixels)
        self._smoother = MaskSmoother(smooth)
        self._flicker, self._raw_flicker = Flicker(), Flicker()
        self._batch_sizes = 0
        self.done = 0
        self._cuts = 0
        self._reencode_audio = False
        # Audio read before the first video frame waits: the frame's rotation fixes the output's size,
        # which must be set before the output's first packet.
        self._audio_waiting: list[Any] | None = []
        self._src = Path(src)
        self._output: Any = None
        try:
            self._open_output()
        except BaseException:
            self.close()
            raise

    def _background_image(self, max_pixels: int) -> imaging.Decoded | None:
        return compose.decode_background(self.options, max_pixels)

    @property
    def expected_frames(self) -> int | None:
        """The frame count the source declares (or its duration implies); None when unknown."""
        return self._source.expected_frames

    def __enter__(self) -> VideoJob:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Releases both files; an output not finished is removed."""
        self._source.container.close()
        if self._output is not None:
            try:
                self._output.close()
            except self._av.error.FFmpegError:
                log.debug("closing the unfinished output %s", self._tmp, exc_info=True)
            self._output = None
        self._tmp.unlink(missing_ok=True)

    def _open_output(self) -> None:
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self._output = self._av.open(os.fspath(self._tmp), "w", format=self.format.name)
        self.transparent = is_transparent(self.options)
        self.video_codec = self._encoder()
        src = self._source.stream
        stream = self._output.add_stream(self.video_codec, rate=self._source.fps)
        width, height = src.codec_context.width, src.codec_context.height
        self._turns = 0
        stream.width, stream.height = width, height
        stream.pix_fmt = self.format.alpha_pix_fmt if self.transparent else self.format.opaque_pix_fmt
        stream.codec_context.time_base = src.time_base
        stream.time_base = src.time_base
        stream.options = dict(ENCODER_OPTIONS.get(self.video_codec, {}))
        self._video = stream
        self._audio_out, self.audio = self._audio_stream()

    def _encoder(self) -> str:
        for name in self.format.encoders:
            try:
                self._av.codec.Codec(name, "w")
            except (self._av.error.FFmpegError, ValueError):
                continue
            return name
        raise CoreError(
            Code.FAILED_PRECONDITION,
            f"the FFmpeg bundled with PyAV has none of the encoders .{self.format.name} needs "
            f"({', '.join(self.format.encoders)}); choose another output format",
        )

    def _audio_stream(self) -> tuple[Any, str | None]:
        source = self._source.audio
        if source is None:
            return None, None
        name = source.codec_context.name
        if name in self._output.supported_codecs:
            return self._output.add_stream_from_template(source), f"copied {name}"
        encoder = self.format.audio_encoder
        rate = 48000 if encoder == "libopus" else source.codec_context.sample_rate
        out = self._output.add_stream(encoder, rate=rate)
        out.layout = source.codec_context.layout if source.codec_context.channels <= 2 else "stereo"
        self._reencode_audio = True
        return out, f"re-encoded {name} to {out.codec_context.name}"

    def frames(self) -> Iterator[Frame]:
        """The clip's frames in order, each with its model view; copies or re-encodes the audio on the way.

        Raises:
            CoreError: INVALID_ARGUMENT for a stream that cannot be decoded, or one without frames.
        """
        source = self._source
        streams = [s for s in (source.stream, source.audio) if s is not None]
        previous: np.ndarray | None = None
        index = 0
        try:
            for packet in source.container.demux(*streams):
                if packet.stream is source.audio:
                    self._audio_packet(packet)
                    continue
                for decoded in packet.decode():
                    frame = self._frame(decoded, index, previous)
                    previous = thumbnail(frame.small)
                    index += 1
                    yield frame
        except self._av.error.FFmpegError as exc:
            raise invalid(
                f"{self._src}: the video stream is corrupt after {index} frames ({exc.strerror or exc}); "
                "nothing was written"
            ) from exc
        if index == 0:
            raise invalid(f"{self._src}: the video has no frames; nothing was written")
        self._audio_packet(None)

    def _frame(self, decoded: Any, index: int, previous: np.ndarray | None) -> Frame:
        if self._audio_waiting is not None:
            self._turns = _rotation_turns(getattr(decoded, "rotation", 0) or 0)
            if self._turns % 2:
                self._video.width, self._video.height = self._video.height, self._video.width
            waiting, self._audio_waiting = self._audio_waiting, None
            for packet in waiting:
                self._audio_packet(packet)
        rgb = decoded.to_ndarray(format="rgb24")
        if self._turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, self._turns))
        small = imaging.model_view(rgb)
        cut = is_scene_cut(previous, thumbnail(small))
        pts = decoded.pts
        if pts is None:  # a stream without timestamps: place the frame by its index
            pts = round(index / self._source.fps / self._source.stream.time_base)
        return Frame(index, rgb, small, imaging.encode_png(small, 0), cut, pts)

    def _audio_packet(self, packet: Any) -> None:
        out = self._audio_out
        if out is None:
            return
        if self._audio_waiting is not None:
            if packet is not None:
                self._audio_waiting.append(packet)
            return
        if not self._reencode_audio:
            if packet is not None and packet.dts is not None:
                packet.stream = out
                self._output.mux(packet)
            return
        frames = packet.decode() if packet is not None else [None]
        for frame in frames:
            if frame is not None:
                frame.pts = None
            self._output.mux(out.encode(frame))

    def write(self, frame: Frame, mask: np.ndarray, batch_size: int) -> None:
        """Takes the server's mask (model size) of the next frame in order, composes and encodes the frame."""
        self._raw_flicker.add(mask, frame.scene_cut)
        if self.smooth:
            mask = self._smoother(mask, frame.scene_cut)
        self._flicker.add(mask, frame.scene_cut)
        self._cuts += frame.scene_cut and frame.index > 0
        self._batch_sizes += batch_size
        full = imaging.resize_mask(mask, (frame.rgb.shape[1], frame.rgb.shape[0]))
        decoded = imaging.Decoded(rgb=frame.rgb, alpha=None, format="video")
        composed, _ = compose.compose(decoded, full, False, self.options, self._background)
        layout = "rgba" if composed.shape[2] == 4 else "rgb24"
        out = self._av.VideoFrame.from_ndarray(composed, format=layout)
        out.pts, out.time_base = frame.pts, self._source.stream.time_base
        self._output.mux(self._video.encode(out))
        self.done += 1

    def finish(self) -> VideoResult:
        """Flushes the encoders, closes the output and renames it into place.

        Raises:
            CoreError: INVALID_ARGUMENT when the clip had no frames.
        """
        if self.done == 0:
            raise invalid("the video has no frames; nothing was written")
        self._output.mux(self._video.encode(None))
        self._output.close()
        self._output = None
        os.replace(self._tmp, self.dst)
        fps = float(self._source.fps)
        return VideoResult(
            path=self.dst, frames=self.done, fps=fps, duration_s=self.done / fps,
            elapsed_s=time.monotonic() - self._started, mean_batch_size=self._batch_sizes / self.done,
            format=self.format.name, video_codec=self.video_codec, transparent=self.transparent,
            audio=self.audio, flicker=self._flicker.value, flicker_unsmoothed=self._raw_flicker.value,
            scene_cuts=self._cuts, smooth=self.smooth,
        )  # fmt: skip


def run(job: VideoJob, mask: Callable[[bytes], MaskResult], ordered: Ordered, progress: Progress | None) -> VideoResult:
    """Drives `job` with blocking `mask` calls through `ordered` (the client's `map`: frames in flight,
    in order); closes the job.

    Raises:
        CoreError: The first error of a frame's request (the SDK's U2NetError), or of the input; nothing is
            written then.
    """

    def one(frame: Frame) -> tuple[Frame, MaskResult]:
        return frame, mask(frame.png)

    with job:
        outcomes = ordered(one, job.frames())
        try:
            for outcome in outcomes:
                if isinstance(outcome, CoreError):
                    raise outcome
                frame, result = outcome
                job.write(frame, result.array, result.batch_size)
                if progress is not None:
                    progress(job.done, job.expected_frames)
        finally:
            outcomes.close()
        return job.finish()


async def arun(
    job: VideoJob, mask: Callable[[bytes], Awaitable[MaskResult]], concurrency: int, progress: Progress | None
) -> VideoResult:
    """The asyncio twin of `run`: decoding, composing and encoding run in a worker thread, one step at
    a time (the job is never touched by two threads at once), so the event loop stays free."""
    frames = job.frames()
    window: deque[tuple[Frame, asyncio.Future[MaskResult]]] = deque()
    exhausted = False
    try:
        while True:
            while not exhausted and len(window) < concurrency:
                frame = await asyncio.to_thread(next, frames, None)
                if frame is None:
                    exhausted = True
                else:
                    window.append((frame, asyncio.ensure_future(mask(frame.png))))
            if not window:
                break
            frame, pending = window.popleft()
            result = await pending
            await asyncio.to_thread(job.write, frame, result.array, result.batch_size)
            if progress is not None:
                progress(job.done, job.expected_frames)
        return await asyncio.to_thread(job.finish)
    finally:
        for _, pending in window:
            pending.cancel()
        await asyncio.to_thread(job.close)
