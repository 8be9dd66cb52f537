"""Server-side cost of each cutout option: compose + encode in-process on one 6 MP photo, as the handler runs them.

`python -m benchmarks.options [--reference DIR] [--repeat N]`: takes bike.jpg (3000x2000) and the authors'
published U²-Net-p mask of it (no model runs), and prints the median milliseconds of
u2net_client.compose.compose + encode per option, against the plain RGBA PNG cutout, and matting's cost
per megapixel. Figures go in the README (Performance); `make bench` will carry them as rows.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from u2net_client import compose, imaging
from u2net_client.options import Options

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1].parent / "shared/data/u2net-reference"


def _beach(width: int, height: int) -> bytes:
    """A stand-in background photo: a smooth gradient with noise, as a JPEG (what a caller would send)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.dstack((x * 255 // width, y * 255 // height, np.full_like(x, 128))).astype(np.int16)
    noisy = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def cases(beach: bytes) -> dict[str, Options]:
    """The options measured, by row name; the first is the baseline of the +% column."""
    return {
        "cutout RGBA png (today)": Options(),
        "colour png": Options(background=(0, 120, 255)),
        "background image cover png": Options(background_image=beach),
        "background image contain png": Options(background_image=beach, background_fit="contain"),
        "blur png": Options(effect="blur"),
        "greyscale png": Options(effect="greyscale"),
        "colour jpeg q90": Options(background=(0, 120, 255), output_format="jpeg"),
        "background image jpeg q90": Options(background_image=beach, output_format="jpeg"),
        "cutout RGBA webp lossless": Options(output_format="webp"),
        "cutout RGBA webp q80": Options(output_format="webp", quality=80),
        "refine postprocess png": Options(refine="postprocess"),
        "refine matting png": Options(refine="matting"),
    }


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
    image = imaging.decode_image((args.reference / "images/bike.jpg").read_bytes(), imaging.DEFAULT_MAX_PIXELS)
    mask = np.asarray(Image.open(args.reference / "u2netp_masks/bike.png").convert("L"))
    width, height = image.size
    beach_bytes = _beach(1600, 1200)
    beach = imaging.decode_image(beach_bytes, imaging.DEFAULT_MAX_PIXELS)
    megapixels = width * height / 1e6
    print(f"bike.jpg {width}x{height} ({megapixels:.1f} MP); median of runs, compose + encode, ms")
    baseline = None
    for name, options in cases(beach_bytes).items():
        bg = beach if options.background_bytes is not None else None

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
