"""Small test clips made with PyAV: a subject over a background, with audio, noise or a scene cut."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

AUDIO_RATE = 44100


def scene(subject: Image.Image, size: tuple[int, int], offset: int, background: tuple[int, int, int]) -> np.ndarray:
    """An HxWx3 frame: `subject` scaled to 3/4 of the height, shifted right by `offset` pixels."""
    width, height = size
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = np.asarray(background, np.uint8)
    # A soft vertical gradient so the background is not flat.
    frame[..., 2] = np.clip(frame[..., 2].astype(int) + np.linspace(0, 40, height)[:, None], 0, 255).astype(np.uint8)
    side = height * 3 // 4
    thumb = np.asarray(subject.convert("RGB").resize((side, side), Image.Resampling.BILINEAR))
    x = max(0, min(width - side, (width - side) // 2 + offset))
    y = (height - side) // 2
    frame[y : y + side, x : x + side] = thumb
    return frame


def write_clip(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: int = 10,
    audio: bool = True,
    codec: str = "mpeg4",
    rotation: int = 0,
) -> None:
    """Writes `frames` at `fps` (with a 440 Hz AAC tone as long as the video when `audio`)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"qscale": "2"} if codec == "mpeg4" else {}
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=AUDIO_RATE) if audio else None
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            _tone(out, sound, len(frames) / fps)


def _tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    samples = int(seconds * AUDIO_RATE)
    t = np.arange(samples, dtype=np.float32) / AUDIO_RATE
    wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
    frame.sample_rate, frame.pts = AUDIO_RATE, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def moving_clip(subject: Image.Image, n: int, size: tuple[int, int] = (160, 120), step: int = 3) -> list[np.ndarray]:
    """n frames of the subject sliding right over a grey-blue background."""
    return [scene(subject, size, -n * step // 2 + i * step, (90, 110, 120)) for i in range(n)]


def still_with_noise(
    subject: Image.Image,
    n: int,
    sigma: float,
    seed: int = 0,
    size: tuple[int, int] = (160, 120),
    background: tuple[int, int, int] = (90, 110, 120),
) -> list[np.ndarray]:
    """n frames of a still subject over `background` with Gaussian noise of `sigma` (0..255) added per frame."""
    rng = np.random.default_rng(seed)
    base = scene(subject, size, 0, background).astype(np.float32)
    return [np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def decode(
    path: Path, codec: str | None = None, fmt: str = "rgb24"
) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    """Every frame of the first video stream (with `codec`'s decoder, e.g. libvpx-vp9 for VP9 alpha)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if codec is None:
            return [f.to_ndarray(format=fmt) for f in container.decode(stream)]
        ctx = av.codec.CodecContext.create(codec, "r")
        ctx.extradata = stream.codec_context.extradata
        return [f.to_ndarray(format=fmt) for packet in container.demux(stream) for f in ctx.decode(packet)]


def probe(path: Path) -> dict[str, object]:
    """Frame count, fps, duration, size and stream kinds of a clip."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        count = sum(1 for _ in container.decode(video))
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return {
            "frames": count,
            "fps": float(video.average_rate or video.guessed_rate),
            "duration": (container.duration or 0) / 1_000_000,
            "size": (video.codec_context.width, video.codec_context.height),
            "codec": video.codec_context.name,
            "audio": [a.codec_context.name for a in container.streams.audio],
        }
