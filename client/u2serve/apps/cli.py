"""u2net-client: masks and cutouts of files, folders and globs, videos, the server's state, and evaluations.

Exit codes: 0 all done; 1 some inputs failed (the others were written), or the video could not be
read (nothing written); 2 bad arguments or no inputs (for evaluate: a missing or empty folder,
unpaired or unreadable files); 3 the server could not be reached in time; 4 the token was refused;
5 another server error (an unknown model, an internal error); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import grpc

from u2net_client import CutoutResult, MaskResult, ModelInfo, Options, U2NetClient, U2NetError, VideoResult
from u2net_client.connection import DEFAULT_MANAGEMENT_TARGET, DEFAULT_TARGET, DEFAULT_TIMEOUT
from u2serve import __version__
from u2serve.apps.temporal import DEFAULT_SMOOTH
from u2serve.apps.video import DEFAULT_CONCURRENCY, output_format, video_options
from u2serve.apps.video import FORMATS as VIDEO_FORMATS
from u2serve.apps.video import check_options as check_video_options
from u2serve.core.errors import CoreError

if TYPE_CHECKING:  # the evaluation needs the eval extra; it is imported when the command runs
    from u2serve.apps.evaluation import Evaluation, Pair

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_SERVER = 5

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
OUTPUT_EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
# Errors that belong to one input: report it, go on with the rest. Any other error would fail every
# input the same way (server down, token refused, unknown model), so the run stops at the first.
_PER_ITEM = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL})
_EXIT_FOR = {
    grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
}

log = logging.getLogger("u2net_client.cli")


class UsageError(Exception):
    """Arguments that cannot work; exit code 2."""


def exit_code(error: U2NetError) -> int:
    """The exit code for a run stopped by `error`."""
    return _EXIT_FOR.get(error.code, EXIT_SERVER)


def expand_inputs(inputs: Sequence[str], recursive: bool, output_suffix: str) -> list[Path]:
    """Image files named by `inputs` (files, folders, globs), in order, without duplicates.

    Files in folders and glob matches are taken when their suffix is an image's and they are not
    an output of ours (…<output_suffix>.png); a file named explicitly is always taken.

    Raises:
        UsageError: For an input that names nothing.
    """
    found: dict[Path, None] = {}
    for arg in inputs:
        path = Path(arg)
        if path.is_file():
            found[path] = None
            continue
        if path.is_dir():
            candidates: Iterable[Path] = sorted(path.rglob("*") if recursive else path.iterdir())
        elif glob.has_magic(arg):
            candidates = (Path(p) for p in sorted(glob.glob(arg, recursive=recursive)))
        else:
            raise UsageError(f"{arg}: no such file or folder")
        found.update((p, None) for p in candidates if _is_input_image(p, output_suffix))
    return list(found)


def _is_input_image(path: Path, output_suffix: str) -> bool:
    return (
        path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(path.name.endswith(output_suffix + ext) for ext in OUTPUT_EXTENSIONS.values())
    )


def output_path(source: Path, output_dir: Path | None, suffix: str, extension: str = ".png") -> Path:
    """Where the result for `source` goes: beside it, or in `output_dir`, as <stem><suffix><extension>."""
    return (output_dir or source.parent) / f"{source.stem}{suffix}{extension}"


def plan(
    sources: Sequence[Path], output_dir: Path | None, suffix: str, extension: str = ".png"
) -> list[tuple[Path, Path]]:
    """(input, output) pairs; raises UsageError when two inputs would write the same output."""
    pairs = [(src, output_path(src, output_dir, suffix, extension)) for src in sources]
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        if dst in seen:
            raise UsageError(f"{seen[dst]} and {src} would both be written to {dst}; process them separately")
        seen[dst] = src
    return pairs


def _write(result: MaskResult | CutoutResult, path: Path) -> None:
    # Through a temporary file: an interrupted run leaves no half-written output for --skip-existing.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    result.save(tmp)
    os.replace(tmp, path)


class Progress:
    """tqdm if it is installed, else a one-line bar on stderr; silent when disabled.

    tqdm shows what is done, the rate and the time left; a total of None (a video that does not
    declare its length) shows the count and rate only.
    """

    def __init__(self, total: int | None, enabled: bool, stream: TextIO = sys.stderr, unit: str = "img") -> None:
        self.total, self.done, self.enabled, self.stream, self.unit = total, 0, enabled, stream, unit
        self.started = time.monotonic()
        self._tqdm: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._tqdm = tqdm(total=total, unit=unit, file=stream)

    def update(self) -> None:
        self.done += 1
        if self._tqdm is not None:
            self._tqdm.update(1)
        elif self.enabled:
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            total = max(self.total or self.done, self.done, 1)
            filled = 30 * self.done // total
            bar = "#" * filled + "." * (30 - filled)
            left = f", {(total - self.done) / rate:.0f} s left" if self.total and rate > 0 else ""
            self.stream.write(f"\r[{bar}] {self.done}/{self.total or '?'} {rate:.1f} {self.unit}/s{left}")
            self.stream.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled:
            self.stream.write("\n")


def _process(args: argparse.Namespace, client: U2NetClient) -> int:
    suffix = args.suffix if args.suffix is not None else f".{args.command}"
    extension = OUTPUT_EXTENSIONS.get((args.format or "png").lower(), ".png")  # an unknown one: Options says so
    pairs = plan(expand_inputs(args.inputs, args.recursive, suffix), args.output_dir, suffix, extension)
    if not pairs:
        raise UsageError(f"no images found in {' '.join(args.inputs)} (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})")
    todo = [(src, dst) for src, dst in pairs if not (args.skip_existing and dst.exists())]
    if len(todo) < len(pairs):
        print(f"skipping {len(pairs) - len(todo)} with existing output", file=sys.stderr)
    run = _segment_function(args, client)
    progress = Progress(len(todo), enabled=not args.no_progress and len(todo) > 1 and sys.stderr.isatty())
    failed = 0
    outcomes = client.map(run, [src for src, _ in todo], concurrency=args.concurrency)
    try:
        for (src, dst), outcome in zip(todo, outcomes, strict=True):
            progress.update()
            if isinstance(outcome, U2NetError):
                print(f"error: {src}: {outcome}", file=sys.stderr)
                if outcome.code not in _PER_ITEM:
                    return exit_code(outcome)
                failed += 1
            else:
                _write(outcome, dst)
                log.info("%s -> %s (%s)", src, dst, outcome.model)
    finally:
        outcomes.close()  # stops what is still queued when the run stops early
        progress.close()
    print(f"{len(todo) - failed} written, {failed} failed", file=sys.stderr)
    return EXIT_ITEMS_FAILED if failed else EXIT_OK


def _segment_function(args: argparse.Namespace, client: U2NetClient) -> Callable[[Path], MaskResult | CutoutResult]:
    common: dict[str, Any] = {
        "threshold": args.threshold,
        "crop": args.crop,
        "crop_margin": args.margin,
        "box_threshold": args.box_threshold,
        "png_compression": args.compression,
        "refine": args.refine,
        "matting_foreground_threshold": args.matting_foreground_threshold,
        "matting_background_threshold": args.matting_background_threshold,
        "matting_erode_size": args.matting_erode_size,
        "output_format": args.format,
        "quality": args.quality,
    }
    if args.command == "cutout":
        common.update(
            background=args.background,
            background_image=_read_background(args.background_image),
            background_fit=args.background_fit,
            effect=args.effect,
            blur_radius=args.blur_radius,
        )
    # Check the options once, before any file: a bad option is a usage error, not a failure per file.
    Options(**common).check_task(args.command == "mask")
    if args.command == "mask":
        return lambda path: client.mask(path, args.model, version=args.model_version, **common)
    return lambda path: client.cutout(path, args.model, version=args.model_version, **common)


def _read_background(path: str | None) -> bytes | None:
    """The --background-image file's bytes, read once: every request carries the same."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--background-image {path}: {exc.strerror}") from exc


def _video(args: argparse.Namespace, client: U2NetClient) -> int:
    fmt = args.format or (args.output.suffix.lstrip(".") if args.output else "webm")
    dst = args.output or args.input.with_name(f"{args.input.stem}.cutout.{fmt}")
    try:
        # Arguments first: a bad one is a usage error (2); a bad input file fails the run (1).
        options = video_options(None, args.background, args.threshold, args.background_image, args.effect, args.refine)
        check_video_options(options, output_format(dst, args.format))
    except CoreError as exc:
        raise UsageError(exc.message) from exc
    if not 0.0 <= args.smooth < 1.0:
        raise UsageError(f"--smooth {args.smooth}; accepted: 0 (off) up to, not including, 1")
    enabled = not args.no_progress and sys.stderr.isatty()
    bar: list[Progress] = []

    def tick(done: int, total: int | None) -> None:
        if not bar:
            bar.append(Progress(total, enabled, unit="frame"))
        bar[0].update()

    try:
        summary = client.video(
            args.input, dst, args.model, version=args.model_version, options=options, format=args.format,
            smooth=args.smooth, concurrency=args.concurrency, progress=tick,
        )  # fmt: skip
    except U2NetError as exc:
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return EXIT_ITEMS_FAILED if exc.code == grpc.StatusCode.INVALID_ARGUMENT else exit_code(exc)
    finally:
        for b in bar:
            b.close()
    if args.json:
        print(
            json.dumps({**asdict(summary), "path": str(summary.path), "frames_per_second": summary.frames_per_second})
        )
    print(describe_video(summary), file=sys.stderr)
    return EXIT_OK


def describe_video(s: VideoResult) -> str:
    """One line saying what a video run did."""
    alpha = "with alpha" if s.transparent else "opaque"
    flicker = "flicker n/a" if s.flicker is None else f"flicker {s.flicker:.4f}"
    if s.smooth and s.flicker_unsmoothed is not None:
        flicker += f" (unsmoothed {s.flicker_unsmoothed:.4f}, smooth {s.smooth})"
    return (
        f"{s.path}: {s.frames} frames ({s.fps:.2f} fps, {s.duration_s:.2f} s) in {s.elapsed_s:.1f} s = "
        f"{s.frames_per_second:.2f} frames/s, mean server batch {s.mean_batch_size:.2f}; {s.video_codec} {alpha}, "
        f"audio {s.audio or 'none'}; {flicker}, {s.scene_cuts} scene cuts"
    )


def _ping(args: argparse.Namespace, client: U2NetClient) -> int:
    if client.ping(timeout=args.timeout):
        print(f"{client.target}: healthy")
        return EXIT_OK
    print(f"{client.target}: unreachable or unhealthy", file=sys.stderr)
    return EXIT_UNREACHABLE


def _models(args: argparse.Namespace, client: U2NetClient) -> int:
    models = client.models()
    if args.json:
        print(json.dumps([asdict(m) for m in models], indent=2))
        return EXIT_OK
    rows = [("MODEL", "VERSION", "WORKERS", "BATCH", "DEVICE", "ENGINE", "WEIGHTS")]
    rows += [_model_row(m) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return EXIT_OK


def _model_row(m: ModelInfo) -> tuple[str, ...]:
    workers = f"{m.ready_workers}/{len(m.workers)} ({m.min_workers}-{m.max_workers})"
    return (m.name, m.version, workers, str(m.batch_size), m.device or "?", m.engine or "?", m.weights or "?")


def _scale(args: argparse.Namespace, client: U2NetClient) -> int:
    client.scale(args.model, args.min_workers, args.max_workers, version=args.model_version, wait=not args.no_wait)
    info = client.describe(args.model, args.model_version)
    print(f"{info.name} {info.version}: {info.ready_workers} ready of {len(info.workers)} workers "
          f"(min {info.min_workers}, max {info.max_workers})")  # fmt: skip
    return EXIT_OK


def _evaluate(args: argparse.Namespace, client: U2NetClient) -> int:
    try:
        from u2serve.apps import evaluation
    except ImportError as exc:
        raise UsageError(f"evaluate needs the eval extra ({exc.name} is missing): pip install 'u2serve[eval]'") from exc
    if args.images is None and not args.predictions:
        raise UsageError("evaluate needs --images (to serve) or --predictions (maps on disk), or both")
    if args.images is None and args.model:
        raise UsageError("--model needs --images: the models serve those images")
    try:
        paper = evaluation.paper_figures(args.paper) if args.paper else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:
        evaluations = _evaluations(args, client)
    except evaluation.EvaluationInputError as exc:
        print(f"u2net-client: error: {exc}", file=sys.stderr)
        for name in exc.names:
            print(f"  {name}", file=sys.stderr)
        return EXIT_USAGE
    report = evaluation.Report(evaluations, args.gt, args.images, paper)
    for path in report.write(args.output_dir):
        log.info("wrote %s", path)
    print(evaluation.render_table(report.to_dict()))
    print(f"report: {args.output_dir / 'metrics.md'}", file=sys.stderr)
    return EXIT_OK


def _evaluations(args: argparse.Namespace, client: U2NetClient) -> list[Evaluation]:
    """Pairs every folder first (so bad inputs fail before any serving), then serves and scores."""
    from u2serve.apps.evaluation import evaluate_folder, evaluate_served

    images = _pairs(args.images, args.gt, "image", args.skip_missing) if args.images else []
    folders = [(d.name, _pairs(d, args.gt, "prediction", args.skip_missing)) for d in args.predictions]
    models = (args.model or ["u2netp"]) if images else []
    names = models + [name for name, _ in folders]
    if len(set(names)) < len(names):  # the report keys models by these names
        raise UsageError(f"two evaluations would share a name in the report: {', '.join(names)}; rename a folder")
    total = len(models) * len(images) + sum(len(pairs) for _, pairs in folders)
    progress = Progress(total, enabled=not args.no_progress and sys.stderr.isatty())
    try:
        evaluations = [
            evaluate_served(
                client,
                images,
                model,
                version=args.model_version,
                concurrency=args.concurrency,
                skip_unreadable=args.skip_missing,
                save_dir=args.output_dir / "predictions" / model if args.save_predictions else None,
                on_item=progress.update,
            )
            for model in models
        ]
        evaluations += [
            evaluate_folder(pairs, name, skip_unreadable=args.skip_missing, on_item=progress.update)
            for name, pairs in folders
        ]
    finally:
        progress.close()
    return evaluations


def _pairs(sources: Path, gt: Path, role: str, skip_missing: bool) -> list[Pair]:
    """The pairs of one folder with the ground truth; what --skip-missing left out is printed as a warning."""
    from u2serve.apps.evaluation import pair_by_stem

    pairing = pair_by_stem(sources, gt, source_role=role, skip_missing=skip_missing)
    if pairing.skipped:
        print(f"warning: {sources}: {len(pairing.skipped)} left out (--skip-missing):", file=sys.stderr)
        for item in pairing.skipped:
            print(f"  {item}", file=sys.stderr)
    return list(pairing.pairs)


def _connection_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    env = os.environ
    g = p.add_argument_group("server")
    g.add_argument("--target", default=env.get("U2SERVE_TARGET", DEFAULT_TARGET),
                   help="gRPC inference host:port ($U2SERVE_TARGET, default %(default)s)")  # fmt: skip
    g.add_argument("--management-target", default=env.get("U2SERVE_MANAGEMENT_TARGET", DEFAULT_MANAGEMENT_TARGET),
                   help="gRPC management host:port ($U2SERVE_MANAGEMENT_TARGET, default %(default)s)")  # fmt: skip
    g.add_argument("--key-file", help="TorchServe's key_file.json ($U2SERVE_KEY_FILE, else ./var/key_file.json)")
    g.add_argument("--token", help="the inference key, instead of the key file's")
    g.add_argument("--management-token", help="the management key, instead of the key file's")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per call (default %(default)s)")
    g.add_argument("--tls", action="store_true", help="connect over TLS (the system's trusted roots unless --ca-file)")
    g.add_argument("--ca-file", help="PEM certificate of the CA to trust (implies --tls)")
    g.add_argument("--tls-server-name", help="name expected in the server's certificate, if not the target's host")
    g.add_argument("-v", "--verbose", action="store_true", help="log each file written")
    return p


def _segment_options(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("inputs", nargs="+", help="image files, folders, or globs ('photos/*.jpg')")
    p.add_argument("-o", "--output-dir", type=Path, help="write results here (default: beside each input)")
    p.add_argument("--suffix", help=f"output name: <stem><suffix>.<format> (default .{command})")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders; ** in globs")
    p.add_argument("-j", "--concurrency", type=int, default=4, help="requests in flight (default %(default)s)")
    p.add_argument("--skip-existing", action="store_true", help="leave inputs whose output exists alone")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-m", "--model", default="u2netp", help="u2netp (fast) or u2net (default %(default)s)")
    p.add_argument("--model-version", help="model version (default: the server's default)")
    p.add_argument("--threshold", type=float, help="hard mask: saliency >= this (0..1) is foreground")
    p.add_argument("--crop", action="store_true", help="crop to the salient object's box")
    p.add_argument("--margin", type=int, default=0, help="pixels around the box when cropping")
    p.add_argument("--box-threshold", type=float, help="saliency (0..1) that counts for the box (default 0.5)")
    p.add_argument("--compression", type=int, help="PNG zlib level 0..9 (default: the server's)")
    p.add_argument("--refine", help="none (default), postprocess (rembg's smoothing) or matting (cleaner edges)")
    p.add_argument("--matting-foreground-threshold", type=int, help="matting: sure foreground above (default 240)")
    p.add_argument("--matting-background-threshold", type=int, help="matting: sure background below (default 10)")
    p.add_argument("--matting-erode-size", type=int, help="matting: erosion of the sure regions, px (default 10)")
    p.add_argument("--format", help="png (default), webp (lossless unless --quality) or jpeg (opaque results)")
    p.add_argument("--quality", type=int, help="1..100: JPEG quality (default 90), or lossy WebP")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The u2net-client argument parser."""
    parser = argparse.ArgumentParser(
        prog="u2net-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    conn = _connection_options()
    sub.add_parser("mask", parents=[conn, _segment_options("mask")], help="saliency masks (grayscale PNG)")
    cutout = sub.add_parser("cutout", parents=[conn, _segment_options("cutout")], help="cutouts (RGBA PNG)")
    cutout.add_argument("--background", help="composite over this colour ('#rrggbb' or 'r,g,b'): RGB output")
    cutout.add_argument("--background-image", help="composite over this image file (fitted to the output)")
    cutout.add_argument("--background-fit", help="cover (default), contain (bars: --background or clear) or stretch")
    cutout.add_argument("--effect", help="blur or greyscale: the input's own background, blurred or desaturated")
    cutout.add_argument("--blur-radius", type=float, help="blur radius in pixels (default 1%% of the longer side)")
    sub.add_parser("ping", parents=[conn], help="is the server up and healthy?")
    models = sub.add_parser("models", parents=[conn], help="the models served, their workers and weights")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    video = sub.add_parser("video", parents=[conn], help="a video with its background removed (WebM/MOV/MP4)")
    video.add_argument("input", type=Path, help="the video (anything FFmpeg reads)")
    video.add_argument("-o", "--output", type=Path,
                       help="the output: .webm (VP9 + alpha), .mov (ProRes 4444 + alpha), .mp4 (H.264, opaque: needs "
                       "--background); default <input stem>.cutout.webm beside the input")  # fmt: skip
    video.add_argument("--format", choices=sorted(VIDEO_FORMATS), help="container, instead of the output's extension")
    video.add_argument("-m", "--model", default="u2netp", help="u2netp (fast) or u2net (default %(default)s)")
    video.add_argument("--model-version", help="model version (default: the server's default)")
    video.add_argument("--background", help="composite over this colour ('#rrggbb' or 'r,g,b'): opaque output")
    video.add_argument("--threshold", type=float, help="hard alpha: saliency >= this (0..1) is opaque")
    video.add_argument("--background-image", type=Path, help="composite over this image (fitted to the frame)")
    video.add_argument("--effect", help="blur or greyscale: the frame's own background, blurred or desaturated")
    video.add_argument("--refine", help="postprocess (rembg's smoothing of the mask) or matting, per frame")
    video.add_argument("--smooth", type=float, nargs="?", const=DEFAULT_SMOOTH, default=0.0,
                       help=f"temporal smoothing of the mask, reset at scene cuts (strength 0..<1, "
                       f"{DEFAULT_SMOOTH} when given alone)")  # fmt: skip
    video.add_argument("-j", "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                       help="frames in flight, so the server batches them (default %(default)s)")  # fmt: skip
    video.add_argument("--no-progress", action="store_true", help="no progress bar")
    video.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    scale = sub.add_parser("scale", parents=[conn], help="set a model's worker count")
    scale.add_argument("model")
    scale.add_argument("min_workers", type=int)
    scale.add_argument("max_workers", type=int, nargs="?", help="default: min_workers")
    scale.add_argument("--model-version")
    scale.add_argument("--no-wait", action="store_true", help="return before the workers have started")
    evaluate = sub.add_parser(
        "evaluate",
        parents=[conn],
        help="score served models (or maps on disk) against ground truth, as the U²-Net paper does",
        description="MAE, max/mean/adaptive F-measure (β² = 0.3), weighted F-measure, S-measure, max/mean/adaptive "
        "E-measure (PySODMetrics), PR and F-measure plots; pairs files by stem. Needs the eval extra.",
    )
    _evaluate_options(evaluate)
    return parser


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, help="folder of images to serve through each --model")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth masks (paired by file stem)")
    p.add_argument("-m", "--model", action="append", help="served model; repeat for several (default u2netp)")
    p.add_argument("--model-version", help="model version (default: the server's default)")
    p.add_argument("--predictions", type=Path, action="append", default=[],
                   help="folder of saliency maps to score without a server; repeatable")  # fmt: skip
    p.add_argument("-o", "--output-dir", type=Path, default=Path("eval-report"),
                   help="where metrics.json, metrics.md and the plots go (default %(default)s)")  # fmt: skip
    p.add_argument("--paper", metavar="DATASET", help="show the paper's U2NET and U2NET† figures for this data set "
                   "(DUT-OMRON, DUTS-TE, HKU-IS, ECSSD, PASCAL-S, SOD)")  # fmt: skip
    p.add_argument("--skip-missing", action="store_true",
                   help="leave unpaired and unreadable files out with a warning instead of failing")  # fmt: skip
    p.add_argument("--save-predictions", action="store_true",
                   help="also write each served mask to OUTPUT_DIR/predictions/<model>/<stem>.png")  # fmt: skip
    p.add_argument("-j", "--concurrency", type=int, default=8, help="requests in flight (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


_COMMANDS: dict[str, Callable[[argparse.Namespace, U2NetClient], int]] = {
    "mask": _process,
    "cutout": _process,
    "ping": _ping,
    "models": _models,
    "scale": _scale,
    "video": _video,
    "evaluate": _evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        with U2NetClient(
            args.target, args.management_target, token=args.token, management_token=args.management_token,
            key_file=args.key_file, timeout=args.timeout, tls=args.tls or args.ca_file is not None,
            ca_file=args.ca_file, tls_server_name=args.tls_server_name,
        ) as client:  # fmt: skip
            return _COMMANDS[args.command](args, client)
    except UsageError as exc:
        print(f"u2net-client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CoreError as exc:  # the SDK's U2NetError, or the core's from a check the command makes itself
        error = U2NetError.from_core(exc)
        print(f"u2net-client: {error}", file=sys.stderr)
        return EXIT_USAGE if error.code == grpc.StatusCode.INVALID_ARGUMENT else exit_code(error)
    except KeyboardInterrupt:
        return 130
