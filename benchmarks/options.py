"""Server-side cost of each cutout option: compose + encode in-process on one 6 MP photo, as the handler runs them.

`python -m benchmarks.options [--reference DIR] [--repeat N]`: takes bike.jpg (3000x2000) and the authors'
published U²-Net-p mask of it (no model runs), and prints the median milliseconds of
u2net_client.compose.compose + encode per option, against the plain RGBA PNG cutout, and matting's cost
per megapixel. `make bench` sends the same cases to its TorchServe and records the server's own timings
(benchmarks/paths.py).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import tools
from u2serve.core import compose, imaging
from u2serve.core.options import Options

DEFAULT_REFERENCE = tools.REFERENCE_DIR
PHOTO = "images/bike.jpg"  # 3000x2000, under DEFAULT_REFERENCE
# The background image of the common paths: a photo of the same set, scaled to cover the
# subject's photo. The noisy stand-in (`beach`, BACKGROUND_SIZE) is the worst case for PNG: noise in every
# pixel is what deflate cannot shrink.
BACKGROUND_PHOTO = "images/boat.jpg"
BACKGROUND_SIZE = (1600, 1200)
BASELINE = "cutout RGBA png (today)"
# The same opaque result encoded both ways: what JPEG saves over PNG.
JPEG_VS_PNG = ("colour jpeg q90", "colour png")


@dataclass(frozen=True)
class Case:
    """One measured option set: the SDK's keyword arguments (cutout), and whether it is a common path, which
    issue 11 allows at most 15 % more server time than today's RGBA cutout."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    common: bool = True

    @property
    def matting(self) -> bool:
        return self.kwargs.get("refine") == "matting"


def beach(width: int, height: int) -> bytes:
    """A stand-in background photo: a smooth gradient with noise, as a JPEG (what a caller would send)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.dstack((x * 255 // width, y * 255 // height, np.full_like(x, 128))).astype(np.int16)
    noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def cases(background: bytes, noise: bytes) -> dict[str, Case]:
    """The options measured, by row name; the first (BASELINE, today's cutout) is what the others are against.

    Common paths (issue 11's 15 % bound): a colour, an image (cover) or an effect behind the subject, in PNG
    or JPEG. The WebP rows, contain's bars, the noisy background and refine are measured and reported.
    `background` is the photo behind the subject, `noise` the worst case for PNG.
    """
    return {
        BASELINE: Case(common=False),
        "colour png": Case({"background": (0, 120, 255)}),
        "background image cover png": Case({"background_image": background}),
        "background image contain png": Case({"background_image": background, "background_fit": "contain"}, False),
        "noisy background cover png": Case({"background_image": noise}, False),
        "blur png": Case({"effect": "blur"}),
        "greyscale png": Case({"effect": "greyscale"}),
        "colour jpeg q90": Case({"background": (0, 120, 255), "output_format": "jpeg"}),
        "background image jpeg q90": Case({"background_image": background, "output_format": "jpeg"}),
        "cutout RGBA webp lossless": Case({"output_format": "webp"}, False),
        "cutout RGBA webp q80": Case({"output_format": "webp", "quality": 80}, False),
        "refine postprocess png": Case({"refine": "postprocess"}, False),
        "refine matting png": Case({"refine": "matting"}, False),
    }


def backgrounds(reference: Path = DEFAULT_REFERENCE) -> tuple[bytes, bytes]:
    """(the background photo's JPEG, the noisy stand-in's JPEG): what `cases` takes."""
    return (reference / BACKGROUND_PHOTO).read_bytes(), beach(*BACKGROUND_SIZE)


def describe_backgrounds(reference: Path = DEFAULT_REFERENCE) -> str:
    with Image.open(reference / BACKGROUND_PHOTO) as photo:
        (pw, ph), kind = photo.size, photo.format
    bw, bh = BACKGROUND_SIZE
    noisy = f"{bw}x{bh} JPEG q90 (benchmarks.options.beach)"
    return f"{Path(BACKGROUND_PHOTO).name} ({pw}x{ph} {kind}, a photo); noisy: {noisy}"


def measure(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="the authors' images and masks")
    parser.add_argument("--repeat", type=int, default=5, help="runs per option (matting: 2)")
    args = parser.parse_args()
    image = imaging.decode_image((args.reference / PHOTO).read_bytes(), imaging.DEFAULT_MAX_PIXELS)
    mask = np.asarray(Image.open(args.reference / "u2netp_masks/bike.png").convert("L"))
    width, height = image.size
    photo_bytes, noise_bytes = backgrounds(args.reference)
    megapixels = width * height / 1e6
    print(f"bike.jpg {width}x{height} ({megapixels:.1f} MP); median of runs, compose + encode, ms")
    baseline = None
    for name, case in cases(photo_bytes, noise_bytes).items():
        options = Options(**case.kwargs)
        bg = compose.decode_background(options, imaging.DEFAULT_MAX_PIXELS)

        def run(options: Options = options, bg: imaging.Decoded | None = bg) -> bytes:
            result, _ = compose.compose(image, mask, False, options, bg)
            return compose.encode(result, options)

        run()  # warm: numba's compiled solvers load, caches fill
        samples = measure(run, 2 if options.refine == "matting" else args.repeat)
        median = statistics.median(samples)
        baseline = baseline or median
        size = len(run()) / 1e6
        extra = f"  {median / megapixels:7.0f} ms/MP" if options.refine == "matting" else ""
        print(f"{name:32s} {median:8.0f} ms  {median / baseline - 1:+6.0%}  {size:6.1f} MB{extra}")


if __name__ == "__main__":
    main()
