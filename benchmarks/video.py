"""Video benchmark: rembg frame by frame against `u2net-client video` on one clip, in one run.

The clip: 10 s of 1280x720 at 25 fps, two shots of the authors' test images moving across a
background, with an AAC tone. (a) rembg: decode with PyAV, `remove()` each frame, encode a
transparent WebM (VP9 + alpha, the same encoder settings as ours). (b) `client.video` to a
transparent WebM, as `u2net-client video` runs it, without and with `--smooth`. Printed and
written as a JSON record (benchmarks/results/video/video-<kind>-<date>.json, or --results): frames/s of
each, the mean server batch size, the mask MAE between the two (every 5th frame: rembg's alpha
against the mask our pipeline computes for that frame), and the flicker figure with and without
smoothing (rembg's too, measured the same way on its masks brought to 320×320).

    python -m benchmarks.video                      # its own TorchServe on free ports
    python -m benchmarks.video --target 127.0.0.1:7070 --key-file var/key_file.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

import tools
from benchmarks import peer
from benchmarks import results as R
from u2net_client import U2NetClient
from u2serve.apps.temporal import Flicker, is_scene_cut, thumbnail
from u2serve.apps.video import ENCODER_OPTIONS
from u2serve.core import imaging

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = tools.REFERENCE_DIR / "images"
SUBJECTS = ("bike.jpg", "0003.jpg")  # one per shot
MAE_EVERY = 5


def build_clip(path: Path, seconds: float, size: tuple[int, int], fps: int, reference: Path) -> int:
    """Writes the clip (H.264 + AAC tone); returns its frame count."""
    width, height = size
    frames = int(seconds * fps)
    shots = [Image.open(reference / name).convert("RGB") for name in SUBJECTS]
    side = height * 2 // 3
    thumbs = [np.asarray(im.resize((side, side), Image.Resampling.BILINEAR)) for im in shots]
    ramp = np.linspace(60, 160, height, dtype=np.float32)[:, None, None]
    background = np.broadcast_to(ramp * np.array([0.6, 0.8, 1.0], np.float32), (height, width, 3)).astype(np.uint8)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "18"}
        audio = out.add_stream("aac", rate=44100)
        for i in range(frames):
            shot = 0 if i < frames // 2 else 1
            t = (i % (frames // 2)) / max(frames // 2 - 1, 1)
            x = int(t * (width - side))
            frame = background.copy()
            frame[(height - side) // 2 : (height + side) // 2, x : x + side] = thumbs[shot]
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(video.encode(vf))
        out.mux(video.encode(None))
        _tone(out, audio, frames / fps)
    return frames


def _tone(out: av.container.OutputContainer, audio: av.audio.stream.AudioStream, seconds: float) -> None:
    """A 440 Hz AAC tone as long as the video (the output must carry audio through)."""
    wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 44100)) / 44100)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
    frame.sample_rate, frame.pts = 44100, 0
    out.mux(audio.encode(frame))
    out.mux(audio.encode(None))


def run_rembg(src: Path, dst: Path) -> dict[str, object]:
    """rembg's remove() on every frame, encoded to a transparent WebM; its alphas at 320x320 kept for MAE."""
    session = peer.session("u2netp")  # SystemExit with how to install rembg where it is missing
    from rembg import remove

    alphas: dict[int, np.ndarray] = {}
    flicker, previous = Flicker(), None
    start = time.perf_counter()
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="webm") as out:
        stream = inp.streams.video[0]
        video = out.add_stream("libvpx-vp9", rate=stream.average_rate)
        video.width, video.height, video.pix_fmt = stream.codec_context.width, stream.codec_context.height, "yuva420p"
        video.options = dict(ENCODER_OPTIONS["libvpx-vp9"])
        count = 0
        for frame in inp.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            rgba = np.asarray(remove(Image.fromarray(rgb), session=session))
            small_alpha = imaging.resize_mask(np.ascontiguousarray(rgba[..., 3]), (320, 320))
            thumb = thumbnail(imaging.model_view(rgb))
            flicker.add(small_alpha, is_scene_cut(previous, thumb))
            previous = thumb
            if count % MAE_EVERY == 0:
                alphas[count] = rgba[..., 3].copy()
            out_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgba), format="rgba")
            out_frame.pts, out_frame.time_base = frame.pts, stream.time_base
            out.mux(video.encode(out_frame))
            count += 1
        out.mux(video.encode(None))
    seconds = time.perf_counter() - start
    return {"frames": count, "seconds": seconds, "fps": count / seconds, "flicker": flicker.value, "alphas": alphas}


def mask_mae(client: U2NetClient, src: Path, rembg_alphas: dict[int, np.ndarray]) -> float:
    """Mean over the sampled frames of |rembg's alpha - our pipeline's mask| (0..1)."""
    errors = []
    with av.open(str(src)) as inp:
        for i, frame in enumerate(inp.decode(video=0)):
            if i not in rembg_alphas:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            small = client.mask(imaging.encode_png(imaging.model_view(rgb), 0)).array
            ours = imaging.resize_mask(small, (rgb.shape[1], rgb.shape[0]))
            errors.append(float(np.abs(ours.astype(np.float64) - rembg_alphas[i]).mean() / 255.0))
    return float(np.mean(errors))


def warm_up(client: U2NetClient, src: Path, concurrency: int) -> None:
    """The first frame's model view alone, then `concurrency` at once: the worker's first calls are slow."""
    with av.open(str(src)) as inp:
        png = imaging.encode_png(imaging.model_view(next(inp.decode(video=0)).to_ndarray(format="rgb24")), 0)
    for size in (1, concurrency):
        list(client.map(lambda image: client.mask(image), [png] * size, concurrency=size))


def measure(client: U2NetClient, args: argparse.Namespace, folder: Path) -> dict[str, object]:
    clip = folder / "clip.mp4"
    frames = build_clip(clip, args.seconds, (args.width, args.height), args.fps, args.reference)
    print(f"clip: {frames} frames, {args.width}x{args.height} at {args.fps} fps, {args.seconds} s", file=sys.stderr)
    warm_up(client, clip, args.concurrency)
    # rembg between our two runs: a machine that slows down or speeds up during the run shows as a gap
    # between them rather than as a bias for one side.
    plain = client.video(clip, folder / "ours.webm", concurrency=args.concurrency)
    rembg = run_rembg(clip, folder / "rembg.webm")
    smooth = client.video(clip, folder / "ours-smooth.webm", concurrency=args.concurrency, smooth=args.smooth)
    mae = mask_mae(client, clip, rembg.pop("alphas"))  # type: ignore[arg-type]
    return {
        "clip": {"frames": frames, "width": args.width, "height": args.height, "fps": args.fps},
        "rembg": rembg,
        "served": {k: v for k, v in asdict(plain).items() if k != "path"} | {"fps": plain.frames_per_second},
        "served_smooth": {k: v for k, v in asdict(smooth).items() if k != "path"} | {"fps": smooth.frames_per_second},
        "speedup": plain.frames_per_second / rembg["fps"],  # type: ignore[operator]
        "speedup_smooth": smooth.frames_per_second / rembg["fps"],  # type: ignore[operator]
        "mask_mae": mae,
    }


def report(figures: dict[str, object]) -> str:
    rembg, plain, smooth = figures["rembg"], figures["served"], figures["served_smooth"]
    return "\n".join([
        f"rembg frame by frame : {rembg['fps']:.2f} frames/s, flicker {rembg['flicker']:.4f}",  # type: ignore[index]
        f"u2net-client video   : {plain['fps']:.2f} frames/s ({figures['speedup']:.2f}x rembg), "  # type: ignore[index]
        f"mean batch {plain['mean_batch_size']:.2f}, flicker {plain['flicker']:.4f}",  # type: ignore[index]
        f"  --smooth {smooth['smooth']}       : {smooth['fps']:.2f} frames/s ({figures['speedup_smooth']:.2f}x rembg), "  # type: ignore[index]
        f"flicker {smooth['flicker']:.4f}, "  # type: ignore[index]
        f"scene cuts {smooth['scene_cuts']}",  # type: ignore[index]
        f"mask MAE (rembg vs ours, every {MAE_EVERY}th frame): {figures['mask_mae']:.4f}",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--smoke", action="store_true", help="a 1 s clip, the record to a temp folder (make bench --smoke)"
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--smooth", type=float, default=0.6)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="the authors' test images")
    parser.add_argument("--target", help="a running server's gRPC host:port (default: start one)")
    parser.add_argument("--key-file", type=Path)
    # A folder of its own beside the end-to-end records; BENCHMARKS.md renders both (results.read_all).
    parser.add_argument("--results", type=Path, default=R.RESULTS_DIR / R.VIDEO_DIR, help="where the JSON record goes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.results = 1.0, Path(tempfile.mkdtemp(prefix="u2serve-video-smoke-"))
    machine = R.Machine.here()
    head, dirty = R.commit()
    with tempfile.TemporaryDirectory(prefix="u2serve-video-") as tmp:
        folder = Path(tmp)
        if args.target:
            with U2NetClient(args.target, key_file=args.key_file, timeout=300) as client:
                figures = measure(client, args, folder)
        else:
            from tools.torchserve import Ports, start

            server = start(folder / "ts", ROOT / "model_store", ["u2netp"], Ports.free())
            try:
                server.wait_ready(timeout=600)
                with U2NetClient(server.grpc_target, key_file=server.key_file, timeout=300) as client:
                    figures = measure(client, args, folder)
            finally:
                server.stop()
    machine = R.Machine(**{**asdict(machine), "load_after": R.load()})
    record = {"schema": R.SCHEMA, "study": "video", "kind": R.device_kind(machine), "date": R.now(),
              "commit": head, "dirty": dirty, "machine": asdict(machine), **figures}  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"video-{record['kind']}-{record['date'][:10]}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(report(figures))
    print(f"CPU: {machine.cpu}; load {machine.load_before} -> {machine.load_after}; record: {path}")
    if args.results.resolve() == (R.RESULTS_DIR / R.VIDEO_DIR).resolve():  # a committed record: BENCHMARKS.md shows it
        from benchmarks import report as document

        document.write(ROOT / "BENCHMARKS.md", R.read_all([R.RESULTS_DIR]))
        print(f"rendered {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
