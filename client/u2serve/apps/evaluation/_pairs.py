"""Which prediction goes with which ground truth: pairing by file stem, and reading masks as uint8 arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from u2serve.apps.cli import IMAGE_SUFFIXES

# 16- and 32-bit grayscale masks are scaled to 8 bits, not clipped as PIL's convert("L") would.
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}


class EvaluationInputError(Exception):
    """The folders cannot be evaluated as given: a missing or empty folder, unpaired or unreadable files.

    Attributes:
        names: The offending file or folder names, sorted.
    """

    def __init__(self, message: str, names: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.names = tuple(names)


@dataclass(frozen=True)
class Pair:
    """One evaluation item: the image to serve (or the prediction on disk) and its ground-truth mask."""

    stem: str
    source: Path
    ground_truth: Path


@dataclass(frozen=True)
class Pairing:
    """The pairs to evaluate, in stem order, and what `skip_missing` left out ("name: reason")."""

    pairs: tuple[Pair, ...]
    skipped: tuple[str, ...]


def image_files(folder: Path, role: str) -> dict[str, Path]:
    """The image files directly in `folder`, by stem.

    Raises:
        EvaluationInputError: When the folder does not exist, holds no image, or holds two images with one stem.
    """
    if not folder.is_dir():
        raise EvaluationInputError(f"{role} folder {folder} does not exist or is not a folder", [str(folder)])
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path)
    if not by_stem:
        accepted = ", ".join(sorted(IMAGE_SUFFIXES))
        raise EvaluationInputError(f"{role} folder {folder} holds no images (accepted: {accepted})", [str(folder)])
    twins = sorted(p.name for paths in by_stem.values() if len(paths) > 1 for p in paths)
    if twins:
        raise EvaluationInputError(
            f"{role} folder {folder} has several files with one stem, so pairing by stem is ambiguous: "
            f"{', '.join(twins)}",
            twins,
        )
    return {stem: paths[0] for stem, paths in by_stem.items()}


def pair_by_stem(sources: Path, ground_truth: Path, *, source_role: str, skip_missing: bool = False) -> Pairing:
    """Pairs every file in `sources` with the ground-truth mask of the same stem (any image extension).

    Files without a partner, and files whose header no image decoder recognises, are errors; with
    `skip_missing` they are left out and listed in `Pairing.skipped` instead.

    Raises:
        EvaluationInputError: For a missing or empty folder, an ambiguous stem, or (without `skip_missing`)
            unpaired or unreadable files, naming them all.
    """
    src = image_files(sources, source_role)
    truth = image_files(ground_truth, "ground-truth")
    unpaired = [f"{src[s].name}: no ground truth in {ground_truth}" for s in sorted(src.keys() - truth.keys())]
    unpaired += [f"{truth[s].name}: no {source_role} in {sources}" for s in sorted(truth.keys() - src.keys())]
    pairs, unreadable = [], []
    for stem in sorted(src.keys() & truth.keys()):
        bad = [p for p in (src[stem], truth[stem]) if not readable(p)]
        unreadable += [f"{p}: not a readable image" for p in bad]
        if not bad:
            pairs.append(Pair(stem, src[stem], truth[stem]))
    problems = unpaired + unreadable
    if problems and not skip_missing:
        raise EvaluationInputError(
            f"{len(unpaired)} files without a partner, {len(unreadable)} unreadable "
            "(pass --skip-missing to leave them out)",
            problems,
        )
    if not pairs:
        raise EvaluationInputError(f"no pair of {source_role} and ground truth left to evaluate", problems)
    return Pairing(tuple(pairs), tuple(problems))


def readable(path: Path) -> bool:
    """Whether an image decoder recognises the file's header (cheap: the pixels are not decoded)."""
    try:
        with Image.open(path):
            return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def read_mask(path: Path) -> np.ndarray:
    """A saliency map or ground-truth mask as a uint8 array (H, W); colour images become luminance.

    Raises:
        EvaluationInputError: When the file cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            if im.mode in _WIDE_MODES:
                wide = np.asarray(im, dtype=np.float64) / _WIDE_MODES[im.mode]
                return np.clip(np.rint(wide * 255), 0, 255).astype(np.uint8)
            return np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise EvaluationInputError(f"{path}: cannot decode the image ({exc})", [str(path)]) from exc
