"""U²-Net's pre- and postprocessing on the client, in numpy and PIL, for servers that run only the network.

A Triton model exported by `python -m handler.triton` takes the normalised (N, 3, 320, 320) batch and
returns d0; everything around it happens here, with the semantics of handler/transforms.py (the
authors' pipeline): bilinear resize without anti-aliasing as torch's align_corners=False computes
it, division by the image maximum, ImageNet mean/std; then per-image min-max, truncation to 8 bits,
PIL's bilinear resize back, and the same box, threshold, cutout and crop rules as the server's.
tests/test_triton.py checks each step against the handler's torch versions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from PIL import Image, ImageOps

from u2net_client._errors import U2NetError
from u2net_client._request import Options, parse_color

INPUT_SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
Box4 = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class Decoded:
    """An image as displayed (EXIF applied): HxWx3 uint8 RGB and, when it had transparency, HxW alpha."""

    rgb: np.ndarray
    alpha: np.ndarray | None

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def decode(data: bytes) -> Decoded:
    """The first frame of an image file, oriented, as 8-bit RGB (+ alpha); 16-bit is scaled, not clipped."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            frame = ImageOps.exif_transpose(im)
            if frame.mode in _SIXTEEN_BIT_MODES:
                wide = np.clip(np.asarray(frame).astype(np.int64), 0, 65535)
                return Decoded(np.repeat(((wide * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=2), None)
            if frame.has_transparency_data:
                rgba = np.asarray(frame.convert("RGBA"))
                return Decoded(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]))
            return Decoded(np.ascontiguousarray(np.asarray(frame.convert("RGB"))), None)
    except (OSError, SyntaxError, ValueError) as exc:
        raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, f"could not decode the image: {exc}") from exc


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear source indices (align_corners=False): lower index, upper index, upper weight."""
    scale = np.float32(in_size / out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """HxWxC -> size x size x C float32, as F.interpolate(mode="bilinear", align_corners=False, antialias=False)."""
    y0, y1, wy = _source_index(size, image.shape[0])
    x0, x1, wx = _source_index(size, image.shape[1])
    # Gather the needed rows and columns first: a 6 MP photo is never converted to float whole.
    top, bottom = image[y0], image[y1]
    wx_ = wx[None, :, None]
    upper = top[:, x0].astype(np.float32) * (1 - wx_) + top[:, x1].astype(np.float32) * wx_
    lower = bottom[:, x0].astype(np.float32) * (1 - wx_) + bottom[:, x1].astype(np.float32) * wx_
    wy_ = wy[:, None, None]
    return upper * (1 - wy_) + lower * wy_


def preprocess(
    images: Sequence[np.ndarray], size: int = INPUT_SIZE, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> np.ndarray:
    """The model's (N, 3, size, size) float32 input from HxWx3 uint8 images (handler/transforms.preprocess)."""
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        resized = resize_bilinear(image, size)
        peak = resized.max()
        batch[i] = (resized / peak if peak > 0 else resized).transpose(2, 0, 1)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (batch - mean_a) / std_a


def masks_from_output(d0: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """8-bit masks at each (width, height) from d0 (N, 1, S, S) (handler/transforms.masks_from_output)."""
    if d0.ndim != 4 or d0.shape[1] != 1 or d0.shape[0] != len(sizes):
        raise U2NetError(grpc.StatusCode.INTERNAL, f"d0 must be (N, 1, S, S) with N = {len(sizes)}, got {d0.shape}")
    masks = []
    for level_map, (width, height) in zip(np.nan_to_num(d0[:, 0].astype(np.float32)), sizes, strict=True):
        lo, span = level_map.min(), level_map.max() - level_map.min()
        normed = (level_map - lo) / span if span > 0 else np.zeros_like(level_map)
        # Truncation, not rounding: the authors' PIL F -> L conversion and torch's uint8 cast both truncate.
        level = np.clip(normed * np.float32(255), 0, 255).astype(np.uint8)
        masks.append(np.asarray(Image.fromarray(level).resize((width, height), Image.Resampling.BILINEAR)))
    return masks


def bounding_box(mask: np.ndarray, threshold: float) -> Box4 | None:
    """(x, y, width, height) of the pixels >= threshold * 255, or None."""
    cut = threshold * 255
    rows = np.flatnonzero(mask.max(axis=1) >= cut)
    if rows.size == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1])
    cols = np.flatnonzero(mask[top : bottom + 1].max(axis=0) >= cut)
    return int(cols[0]), top, int(cols[-1]) - int(cols[0]) + 1, bottom - top + 1


def compose(image: Decoded, mask: np.ndarray, cutout: bool, options: Options) -> tuple[np.ndarray, Box4 | None]:
    """(the mask or cutout array to return, the box) as the server's pipeline makes them."""
    box_threshold = 0.5 if options.box_threshold is None else options.box_threshold
    box = bounding_box(mask, box_threshold)
    if options.threshold is not None:
        mask = np.where(mask >= options.threshold * 255, np.uint8(255), np.uint8(0))
    result = _cutout(image, mask, options) if cutout else mask
    if options.crop and box is not None:
        x, y, w, h = box
        m = options.crop_margin
        width, height = image.size
        left, top, right, bottom = max(0, x - m), max(0, y - m), min(width, x + w + m), min(height, y + h + m)
        result = result[top:bottom, left:right]
    return result, box


def _cutout(image: Decoded, mask: np.ndarray, options: Options) -> np.ndarray:
    effective = mask
    if image.alpha is not None:
        effective = ((mask.astype(np.uint16) * image.alpha + 127) // 255).astype(np.uint8)
    if options.background is None:
        out = np.dstack((image.rgb, effective))
        out[effective == 0] = 0  # as the server (and rembg): fully transparent pixels are all zero
        return out
    bg = np.array(parse_color(options.background), dtype=np.uint32)
    a = effective.astype(np.uint32)[..., None]
    return ((image.rgb.astype(np.uint32) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def encode_png(array: np.ndarray, compress_level: int | None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buffer, format="PNG", compress_level=1 if compress_level is None else compress_level
    )
    return buffer.getvalue()
