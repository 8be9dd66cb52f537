"""The one image pipeline: decode, U²-Net's pre- and postprocessing, cutout and PNG (numpy and Pillow); what a
request returns from them (backgrounds, effects, refine, formats) is u2serve.core.compose's.

Shared by every process that touches pixels: the TorchServe handler and the Triton model import it
from the installed u2serve.core, and the SDK's tensor path (protocol="triton") runs it on the client, so the
server and the client cannot drift. The network itself runs elsewhere (handler.engine, Triton).

Errors are `CoreError`: INVALID_ARGUMENT for what the caller sent (an unreadable or oversized image),
INTERNAL for arrays that break a contract between our own stages (a bug of ours, never the caller's).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

try:  # optional: the server's extra brings it, a client-only install does not
    import cv2 as _cv2
except ImportError:  # pragma: no cover - exercised by the client-only install test
    _cv2 = None

from u2serve.core.errors import Code, CoreError, internal, invalid
from u2serve.core.types import Box

# encode_png at zlib levels 1 to FAST_PNG_LEVEL: a fixed row filter and zlib's RLE strategy (Z_RLE is 3;
# Pillow takes the number). Level 0 stores the rows unfiltered (no filter can pay for itself uncompressed);
# higher levels ask for the smallest file: libpng's and zlib's defaults then.
FAST_PNG_LEVEL = 3
_Z_RLE = 3

# The server's default pixel limit (width x height), also the SDK's tensor path's.
DEFAULT_MAX_PIXELS = 25_000_000
# zlib level of the PNG output when the caller names none (the server's default, the tensor path's too).
DEFAULT_PNG_COMPRESSION = 1
# The authors' input: both variants take 320x320, normalised with ImageNet's mean and std (0..1 scale).
INPUT_SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP, TIFF or GIF"
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@dataclass(frozen=True)
class Decoded:
    """A decoded image, oriented as displayed (EXIF applied).

    Attributes:
        rgb: HxWx3 uint8, C-contiguous.
        alpha: HxW uint8 when the input carried transparency, else None.
        format: PIL's name for the container ("JPEG", "PNG", ...; "MPO" for multi-picture JPEGs).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    format: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]


class TooManyPixels(CoreError):
    """An image over the pixel limit (width x height): INVALID_ARGUMENT, as any bad input.

    Its own type so that a gateway can answer it as HTTP 413 without reading the message.
    """


def _too_many_pixels(message: str) -> TooManyPixels:
    return TooManyPixels(Code.INVALID_ARGUMENT, message)


def decode_image(data: bytes, max_pixels: int) -> Decoded:
    """Decodes an image file's bytes into RGB (and alpha) arrays.

    Animated or multi-page inputs give their first frame; 16-bit images are scaled to 8 bits.

    Args:
        data: The file's bytes (JPEG, PNG, WebP, BMP, TIFF or GIF).
        max_pixels: Largest width * height accepted; checked from the header, before any pixel
            data is decompressed.

    Returns:
        The decoded image.

    Raises:
        CoreError: INVALID_ARGUMENT for an empty, unknown, oversized, truncated or corrupt image; over
            `max_pixels` it is a `TooManyPixels`.
    """
    if not data:
        raise invalid(f"empty image body; send the image file's bytes ({_ACCEPTED_TEXT})")
    label = "the"
    try:
        # PIL warns (or raises its own error) past Image.MAX_IMAGE_PIXELS; both become our error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(data) as im:
                _check_size(im.size, max_pixels)
                fmt = im.format or "unknown"
                label = f"the {fmt}"
                frame = _load_first_frame(im)
                rgb, alpha = _to_rgb_alpha(frame)
    except CoreError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(exc, max_pixels) from exc
    except Exception as exc:
        # PIL's plugins raise a wide, undocumented set of types on hostile input (OSError,
        # SyntaxError, struct.error, ValueError, IndexError, ...); all mean the same to a caller.
        raise invalid(
            f"could not decode {label} image: truncated or corrupt ({type(exc).__name__}: {exc}); "
            f"send a complete {_ACCEPTED_TEXT} file"
        ) from exc
    return Decoded(rgb=rgb, alpha=alpha, format=fmt)


def probe_image(data: bytes, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """The format and (width, height) of an image file from its header alone, with `decode_image`'s checks.

    For a gateway that refuses bad or oversized uploads before handing them on: no pixel data is
    decompressed. Raises CoreError INVALID_ARGUMENT as `decode_image` does (empty, not an image,
    truncated header; over `max_pixels` a `TooManyPixels`).
    """
    if not data:
        raise invalid(f"empty image body; send the image file's bytes ({_ACCEPTED_TEXT})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(data) as im:
                _check_size(im.size, max_pixels)
                return im.format or "unknown", im.size
    except CoreError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(exc, max_pixels) from exc
    except Exception as exc:  # PIL's plugins raise many types on hostile headers (see decode_image)
        raise invalid(
            f"could not read the image's header ({type(exc).__name__}: {exc}); send a complete {_ACCEPTED_TEXT} file"
        ) from exc


def _open(data: bytes) -> Image.Image:
    """Reads only the header; restricting the plugins keeps odd formats' parsers off hostile bytes."""
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.UnidentifiedImageError as exc:
        fmt = _sniff(data)
        if fmt is not None:
            # PIL cannot tell a broken header from a foreign format; the signature can.
            raise invalid(
                f"could not decode the {fmt} image: truncated or corrupt header; send a complete {_ACCEPTED_TEXT} file"
            ) from exc
        raise invalid(
            f"not a recognised image ({len(data)} bytes starting {data[:8]!r}); accepted formats: {_ACCEPTED_TEXT}"
        ) from exc


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise invalid(f"image declares no pixels ({width}x{height}); send an image of at least 1x1")
    if width * height > max_pixels:
        raise _too_many_pixels(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "pixels (width x height); downscale it before sending"
        )


def _too_large(exc: Exception, max_pixels: int) -> TooManyPixels:
    # PIL's guard fires inside Image.open, before our check sees the size; its message has the count.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{found.group(1)} pixels" if found else "too many pixels"
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    return _too_many_pixels(
        f"image is {pixels}, over the limit of {limit} pixels (width x height); downscale it before sending"
    )


def _load_first_frame(im: Image.Image) -> Image.Image:
    """Image.open leaves animations and multi-page files at frame 0, so load() decodes only that."""
    im.load()
    ImageOps.exif_transpose(im, in_place=True)
    return im


def _to_rgb_alpha(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    if im.mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_scale_16_to_8(np.asarray(im))), None
    if im.mode == "F":
        return _gray_to_rgb(_float_to_8(np.asarray(im))), None
    if im.has_transparency_data:
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    if im.mode != "RGB":
        # Covers 1, L, P, CMYK (PIL undoes Adobe's inverted CMYK JPEGs), YCbCr, LAB, HSV, RGBX.
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im)), None


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    # PIL's convert("L") clips 16-bit values at 255 (a mostly white image); scale instead:
    # round(v * 255 / 65535) == round(v / 257). Mode "I" is read as 16-bit, clipped to 0..65535.
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_8(values: np.ndarray) -> np.ndarray:
    # Float images are taken as 0..1 when they fit there (the usual float TIFF), else as 0..255.
    finite = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
    return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def _check_rgb(image: np.ndarray, what: str = "image") -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise internal(f"{what} must be an HxWx3 uint8 array, got {image.dtype} {image.shape}")


def _check_mask(mask: np.ndarray, shape: tuple[int, ...] | None = None, what: str = "mask") -> None:
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise internal(f"{what} must be an HxW uint8 array, got {mask.dtype} {mask.shape}")
    if shape is not None and mask.shape != shape:
        raise internal(f"{what} is {mask.shape[1]}x{mask.shape[0]}, the image {shape[1]}x{shape[0]}")


def _check_unit(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise internal(f"{name} must be between 0 and 1, got {value}")


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear source indices (align_corners=False): lower index, upper index, upper weight."""
    scale = np.float32(in_size / out_size)
    src = np.maximum((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """HxWxC -> size x size x C float32, as torch's F.interpolate(mode="bilinear", align_corners=False,
    antialias=False) computes it (the authors' resize)."""
    y0, y1, wy = _source_index(size, image.shape[0])
    x0, x1, wx = _source_index(size, image.shape[1])
    # Gather the needed rows and columns first: a 6 MP photo is never converted to float whole.
    top, bottom = image[y0], image[y1]
    wx_ = wx[None, :, None]
    upper = top[:, x0].astype(np.float32) * (1 - wx_) + top[:, x1].astype(np.float32) * wx_
    lower = bottom[:, x0].astype(np.float32) * (1 - wx_) + bottom[:, x1].astype(np.float32) * wx_
    wy_ = wy[:, None, None]
    return upper * (1 - wy_) + lower * wy_


def preprocess(images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Builds U²-Net's input batch the way the authors do.

    Each image is resized to size x size (bilinear, no anti-aliasing), divided by its own maximum
    (the authors scale to 0..1 and then divide by the image max, which is the same as x / max(x)),
    then normalised per channel with mean and std.

    Args:
        images: HxWx3 uint8 arrays; sizes may differ.
        size: Side of the square model input.
        mean: Three per-channel means, on the 0..1 scale.
        std: Three per-channel standard deviations.

    Returns:
        A float32 array of shape (N, 3, size, size).

    Raises:
        CoreError: INTERNAL for an array that is not HxWx3 uint8 or bad mean/std (our stages' contract).
    """
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise internal(f"mean and std need three values each, std non-zero; got {mean}, {std}")
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        _check_rgb(image)
        resized = resize_bilinear(image, size)
        peak = resized.max()
        # An all-black image stays zeros rather than dividing by zero.
        batch[i] = (resized / peak if peak > 0 else resized).transpose(2, 0, 1)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (batch - mean_a) / std_a


def masks_from_output(d0: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Turns U²-Net's d0 output into 8-bit masks at each input's size, as the authors do.

    Args:
        d0: (N, 1, S, S) sigmoid output.
        sizes: (width, height) of each input, in batch order.

    Returns:
        N HxW uint8 masks.

    Raises:
        CoreError: INTERNAL when d0's shape and sizes disagree (the network answered something else).
    """
    if d0.ndim != 4 or d0.shape[1] != 1 or d0.shape[0] != len(sizes):
        raise internal(f"d0 must be (N, 1, S, S) with N = {len(sizes)} sizes, got {tuple(d0.shape)}")
    masks = []
    for level_map, (width, height) in zip(np.nan_to_num(d0[:, 0].astype(np.float32)), sizes, strict=True):
        lo, span = level_map.min(), level_map.max() - level_map.min()
        normed = (level_map - lo) / span if span > 0 else np.zeros_like(level_map)
        # The authors save Image.fromarray(pred * 255).convert("RGB"): PIL's F -> L/RGB conversion
        # clamps to 0..255 and TRUNCATES (254.9 -> 254), and so does a float -> uint8 cast.
        level = np.clip(normed * np.float32(255), 0, 255).astype(np.uint8)
        masks.append(resize_mask(level, (width, height)))
    return masks


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An HxW uint8 mask resized to size = (width, height), bilinear as the authors' last step (PIL).

    Raises:
        CoreError: INTERNAL for an array that is not an HxW uint8 mask.
    """
    _check_mask(mask)
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.BILINEAR))


def model_view(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The size x size uint8 image the model sees of an HxWx3 image (the authors' resize, rounded).

    Sending this instead of the full image gives the server the same model input up to rounding (its
    resize of a size x size image is the identity), so a video frame need not travel at full
    resolution; the returned mask is then brought back to the frame's size with `resize_mask`,
    which is the server's own last step.

    Raises:
        CoreError: INTERNAL for an array that is not HxWx3 uint8.
    """
    _check_rgb(image)
    return np.clip(np.rint(resize_bilinear(image, size)), 0, 255).astype(np.uint8)


def bounding_box(mask: np.ndarray, threshold: float = 0.5) -> Box | None:
    """Smallest box holding every pixel with mask >= threshold * 255.

    Args:
        mask: HxW uint8 saliency map.
        threshold: Level between 0 and 1.

    Returns:
        The box, or None when no pixel reaches the threshold.

    Raises:
        U2ServeError: INVALID_ARGUMENT for a bad mask or threshold.
    """
    _check_mask(mask)
    _check_unit(threshold, "threshold")
    cut = threshold * 255
    # Row maxima first, then column maxima over the matching rows only: two reductions, no index list.
    rows = np.flatnonzero(mask.max(axis=1) >= cut)
    if rows.size == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1])
    cols = np.flatnonzero(mask[top : bottom + 1].max(axis=0) >= cut)
    left, right = int(cols[0]), int(cols[-1])
    return Box(x=left, y=top, width=right - left + 1, height=bottom - top + 1)


def expand_box(box: Box, margin: int, width: int, height: int) -> Box:
    """Grows box by margin pixels on every side, clamped to a width x height image.

    Raises:
        U2ServeError: INVALID_ARGUMENT for a negative margin.
    """
    if margin < 0:
        raise internal(f"margin must be >= 0 pixels, got {margin}")
    left, top = max(0, box.x - margin), max(0, box.y - margin)
    right = min(width, box.x + box.width + margin)
    bottom = min(height, box.y + box.height + margin)
    return Box(x=left, y=top, width=max(0, right - left), height=max(0, bottom - top))


def apply_threshold(mask: np.ndarray, threshold: float) -> np.ndarray:
    """Hard mask: 255 where mask >= threshold * 255, else 0.

    Raises:
        U2ServeError: INVALID_ARGUMENT for a threshold outside 0..1 or a bad mask.
    """
    _check_mask(mask)
    _check_unit(threshold, "threshold")
    return np.where(mask >= threshold * 255, np.uint8(255), np.uint8(0))


def cutout(
    rgb: np.ndarray,
    mask: np.ndarray,
    alpha: np.ndarray | None = None,
    background: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Cuts the salient object out of an image.

    Args:
        rgb: HxWx3 uint8 image.
        mask: HxW uint8 saliency; becomes the alpha.
        alpha: The input's own HxW uint8 alpha, multiplied into the mask when given.
        background: An (r, g, b) colour, each 0..255, to composite over.

    Returns:
        HxWx4 RGBA without background (fully transparent pixels are all zero), HxWx3 RGB composited
        over it with one.

    Raises:
        U2ServeError: INVALID_ARGUMENT for mismatched arrays or a bad background colour.
    """
    _check_rgb(rgb)
    _check_mask(mask, rgb.shape[:2])
    effective = mask
    if alpha is not None:
        _check_mask(alpha, rgb.shape[:2], what="alpha")
        effective = multiply_alpha(mask, alpha)
    if background is None:
        # Fully transparent pixels become (0, 0, 0, 0), as in rembg's cutout: their colour is invisible,
        # and the zero runs shrink the PNG and make encoding it faster.
        # OpenCV (when installed, and the image is not empty): one masked copy and one widening, much faster
        # than numpy's.
        if _cv2 is not None and effective.size:
            out = _cv2.cvtColor(_cv2.bitwise_and(rgb, rgb, mask=effective), _cv2.COLOR_RGB2RGBA)
            out[..., 3] = effective
            return out
        out = np.dstack((rgb, effective))
        out[effective == 0] = 0
        return out
    return blend(rgb, effective, solid(*rgb.shape[:2], _check_background(background)))


# blend's OpenCV path works through the image this many rows at a time: its 16-bit temporaries then stay in the
# CPU's caches instead of going through memory (faster on a 6 MP image, on one thread or two).
BLEND_ROWS = 64


def blend(front: np.ndarray, alpha: np.ndarray, behind: np.ndarray) -> np.ndarray:
    """`front` over `behind` with HxW `alpha`: (front * a + behind * (255 - a) + 127) // 255, HxWx3 uint8.

    That rounds the exact blend to the nearest integer (a multiple of 1/255 is never a tie). OpenCV's
    saturating 16-bit products and its rounding 1/255 scale give the same bytes for every (front, a,
    behind) (tests/test_imaging.py checks all 2^24), faster than numpy's uint16 arithmetic.
    """
    if _cv2 is None or not alpha.size:  # OpenCV refuses empty arrays
        a = alpha.astype(np.uint16)[..., None]
        out = front.astype(np.uint16) * a
        out += behind.astype(np.uint16) * (255 - a)
        out += 127
        out //= 255
        return out.astype(np.uint8)
    out = np.empty_like(front)
    for y in range(0, alpha.shape[0], BLEND_ROWS):
        rows = slice(y, y + BLEND_ROWS)
        a = alpha[rows]
        a3 = _cv2.merge((a, a, a))
        total = _cv2.add(
            _cv2.multiply(front[rows], a3, dtype=_cv2.CV_16U),
            _cv2.multiply(behind[rows], _cv2.bitwise_not(a3), dtype=_cv2.CV_16U),
        )
        _cv2.convertScaleAbs(total, out[rows], alpha=1 / 255)
    return out


def solid(height: int, width: int, colour: Sequence[int]) -> np.ndarray:
    """An HxWx3 uint8 image of one colour (one row filled, then copied down: much faster than np.full's
    per-pixel broadcast of a 3-vector)."""
    out = np.empty((height, width, 3), np.uint8)
    out.reshape(height, width * 3)[:] = np.tile(np.asarray(colour, np.uint8), width)
    return out


def multiply_alpha(mask: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """mask * alpha / 255, rounded: the mask of an input that carries its own transparency."""
    # (m * a + 127) // 255 rounds m * a / 255 exactly: an odd multiple of 127.5 cannot occur.
    return ((mask.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


def _check_background(background: tuple[int, int, int]) -> np.ndarray:
    if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
        raise internal(f"background must be three integers 0..255 (r, g, b), got {background}")
    return np.array(background, dtype=np.uint8)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """Returns the box's part of a 2-D or 3-D array (a view, not a copy).

    Raises:
        U2ServeError: INVALID_ARGUMENT when the box is empty or leaves the array.
    """
    height, width = array.shape[:2]
    inside = box.x >= 0 and box.y >= 0 and box.x + box.width <= width and box.y + box.height <= height
    if not inside or box.width <= 0 or box.height <= 0:
        raise internal(f"crop box {box} is empty or outside the {width}x{height} image")
    return array[box.y : box.y + box.height, box.x : box.x + box.width]


def _cv2_png_params(level: int) -> tuple[int, ...]:
    """OpenCV's PNG settings beyond the zlib level (see the comment on FAST_PNG_LEVEL)."""
    if level == 0:
        return (_cv2.IMWRITE_PNG_FILTER, _cv2.IMWRITE_PNG_FILTER_NONE)
    if level <= FAST_PNG_LEVEL:
        return (
            _cv2.IMWRITE_PNG_FILTER, _cv2.IMWRITE_PNG_FILTER_PAETH,
            _cv2.IMWRITE_PNG_STRATEGY, _cv2.IMWRITE_PNG_STRATEGY_RLE,
        )  # fmt: skip
    return ()


# PIL infers the PNG mode from the trailing shape: () "L", (3,) "RGB", (4,) "RGBA".
_PNG_LAYOUTS = ((), (3,), (4,))


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """Encodes an 8-bit array as PNG: HxW as grayscale, HxWx3 as RGB, HxWx4 as RGBA.

    At the fast levels (1 to FAST_PNG_LEVEL, the default 1 among them) every row is filtered with Paeth
    and deflated with zlib's RLE strategy. At level 1, on a 6 MP photo's outputs (RGBA cutout, over a
    colour, a background image or an effect) and its mask, that took less time than libpng's default (a
    filter chosen per row by trying all five, zlib's default strategy) and wrote smaller files, all but
    the greyscale effect's. With OpenCV installed (the server's extra) libpng writes it, faster than
    Pillow; a client-only install uses Pillow (RLE, its own filter choice). Either way the pixels are the
    same: PNG is lossless. benchmarks/options.py times each output's compose and encode.

    Args:
        array: uint8 array.
        compress_level: zlib level 0..9. The default 1 was chosen by measurement: it encodes much faster
            than PIL's default 6 for somewhat larger files.

    Returns:
        The PNG file's bytes.

    Raises:
        U2ServeError: INVALID_ARGUMENT for a bad level or array.
    """
    if not 0 <= compress_level <= 9:
        raise internal(f"PNG compression level must be 0..9, got {compress_level}")
    layout = array.shape[2:] if array.ndim == 3 else () if array.ndim == 2 else None
    if array.dtype != np.uint8 or layout not in _PNG_LAYOUTS:
        raise internal(f"PNG output needs an HxW, HxWx3 or HxWx4 uint8 array, got {array.dtype} {array.shape}")
    if _cv2 is not None:  # the server's extra has OpenCV: libpng's writer, faster than Pillow's
        if array.ndim == 3:
            array = _cv2.cvtColor(array, _cv2.COLOR_RGB2BGR if array.shape[2] == 3 else _cv2.COLOR_RGBA2BGRA)
        params = [_cv2.IMWRITE_PNG_COMPRESSION, compress_level, *_cv2_png_params(compress_level)]
        ok, encoded = _cv2.imencode(".png", np.ascontiguousarray(array), params)
        if not ok:
            raise internal(f"OpenCV could not encode a {array.shape} PNG")
        return encoded.tobytes()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buffer,
        format="PNG",
        compress_level=compress_level,
        compress_type=_Z_RLE if 0 < compress_level <= FAST_PNG_LEVEL else -1,
    )
    return buffer.getvalue()
