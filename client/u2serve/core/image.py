"""Image inputs (bytes, a path, or a PIL image) as the bytes to send."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from u2serve.core.errors import invalid

ImageInput = bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image
"""An image: encoded bytes (JPEG, PNG, WebP, BMP, TIFF, GIF), a path to such a file, or a PIL image."""

# Modes a PNG holds as they are; anything else (CMYK, F, YCbCr, LAB...) travels as TIFF.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def image_bytes(image: ImageInput) -> bytes:
    """The bytes to send for `image`.

    Files and bytes go as they are, so the server sees the original encoding and its EXIF
    orientation. A PIL image is encoded losslessly (PNG, or TIFF for modes PNG cannot hold),
    keeping its EXIF, so the server orients it as it would the file it came from.

    Raises:
        CoreError: INVALID_ARGUMENT when a file cannot be read or the input is of another type.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, Image.Image):
        return _encode(image)
    if isinstance(image, (str, os.PathLike)):
        return _read(Path(image))
    raise invalid(f"image of type {type(image).__name__}; accepted: bytes, a path (str or os.PathLike), or a PIL image")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise invalid(f"cannot read image file {path}: {exc.strerror}") from exc


def _encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    fmt = "PNG" if image.mode in _PNG_MODES else "TIFF"
    options: dict[str, object] = {"compress_level": 1} if fmt == "PNG" else {}  # fast; lossless either way
    exif = image.getexif()
    if exif:
        options["exif"] = exif
    image.save(buf, format=fmt, **options)
    return buf.getvalue()
