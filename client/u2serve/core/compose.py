"""What a request returns, from the decoded input and its mask: refine, threshold, crop, what goes behind the
subject (a colour, a fitted background image, the input blurred or desaturated), and the encoded file.

Pure numpy and Pillow (refine's OpenCV and pymatting are imported by u2serve.core.refine when asked for),
shared like u2serve.core.imaging by the handler, the Triton model and the SDK's tensor path.

Blending: out = (subject * a + behind * (255 - a) + 127) // 255 per channel, a the final alpha (the mask,
refined, times the input's own alpha); where a = 255 the output is the input (or, after matting, its
estimated foreground colours), where a = 0 the layer behind. Behind layers that are themselves transparent
(contain's bars without a colour, a transparent background image) are merged with Porter-Duff "over".
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from u2serve.core import imaging
from u2serve.core.errors import CoreError, internal, invalid
from u2serve.core.options import DEFAULT_JPEG_QUALITY, Options
from u2serve.core.types import Box

# Default blur radius: this fraction of the input's longer side (30 px on a 3000x2000 photo).
BLUR_FRACTION = 0.01
# gaussian_blur: a wide blur runs on a copy shrunk by a power of two that leaves at least this radius and
# at least BLUR_MIN_SIDE pixels on the copy's shorter side.
BLUR_MIN_RADIUS = 6
BLUR_MIN_SIDE = 64
# WebP's effort (method 0 fastest .. 6 smallest; in lossless mode quality is effort too). On a 6 MP RGBA
# cutout, lossless method 0 encoded faster than PNG at level 1, to a smaller file; method 1 took several
# times longer for a little less; lossy method 0 was much faster than Pillow's default 4, for larger files
# (benchmarks/options.py times the WebP outputs against the PNG cutout).
WEBP_METHOD = 0
_FIT_RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Layer:
    """What lies behind the subject: HxWx3 uint8 colours and, when it is not opaque everywhere, HxW alpha."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None


def default_blur_radius(width: int, height: int) -> float:
    """The blur radius when none is given: 1 % of the longer side, at least 1 pixel."""
    return max(1.0, round(BLUR_FRACTION * max(width, height)))


def gaussian_blur(rgb: np.ndarray, radius: float) -> np.ndarray:
    """Pillow's Gaussian blur of `radius` pixels, computed at reduced resolution when it is wide.

    A radius under 2 * BLUR_MIN_RADIUS blurs the image as it is. A wider one blurs a copy shrunk by k
    (box-averaged; k the largest power of two leaving a radius of at least BLUR_MIN_RADIUS and a shorter
    side of at least BLUR_MIN_SIDE) with radius / k, then scales it back bilinearly: a blur that wide has
    no detail that the upscale loses. On a 6 MP photo with the default radius that is many times faster
    than the full-resolution blur, and within a mean 0.5 and at most 15 levels of it (tests/test_compose.py
    holds it to that; benchmarks/options.py times the blur path).
    """
    im = Image.fromarray(rgb)
    k = 1
    while radius / (2 * k) >= BLUR_MIN_RADIUS and min(im.size) // (2 * k) >= BLUR_MIN_SIDE:
        k *= 2
    if k == 1:
        return np.asarray(im.filter(ImageFilter.GaussianBlur(radius)))
    small = im.reduce(k).filter(ImageFilter.GaussianBlur(radius / k))
    if imaging._cv2 is not None:  # OpenCV's bilinear upscale: faster than Pillow's, the same sampling grid
        return imaging._cv2.resize(np.asarray(small), im.size, interpolation=imaging._cv2.INTER_LINEAR)
    return np.asarray(small.resize(im.size, Image.Resampling.BILINEAR))


def effect_layer(rgb: np.ndarray, effect: str, radius: float | None = None) -> np.ndarray:
    """An image turned into a background: Gaussian-blurred ("blur", `radius` pixels, default
    `default_blur_radius` of its size; see gaussian_blur) or desaturated ("greyscale": ITU-R 601 luma,
    PIL's convert("L"))."""
    if effect == "blur":
        return gaussian_blur(rgb, default_blur_radius(rgb.shape[1], rgb.shape[0]) if radius is None else radius)
    if effect == "greyscale":
        grey = np.asarray(Image.fromarray(rgb).convert("L"))
        if imaging._cv2 is not None and grey.size:  # the three copies: faster than Pillow's convert("RGB")
            return imaging._cv2.cvtColor(grey, imaging._cv2.COLOR_GRAY2RGB)
        return np.dstack((grey, grey, grey))
    raise internal(f"unknown effect {effect!r} passed Options' check")


def _layer_effect(layer: Layer, effect: str, radius: float | None) -> Layer:
    """The effect on a fitted background image; clear bars keep their alpha (blurred at their edge)."""
    if layer.alpha is None:
        return Layer(effect_layer(layer.rgb, effect, radius))
    if effect == "greyscale":
        return Layer(effect_layer(layer.rgb, effect), layer.alpha)
    rgba = Image.fromarray(np.dstack((layer.rgb, layer.alpha))).filter(
        ImageFilter.GaussianBlur(
            default_blur_radius(layer.rgb.shape[1], layer.rgb.shape[0]) if radius is None else radius
        )
    )
    out = np.asarray(rgba)
    return Layer(np.ascontiguousarray(out[..., :3]), np.ascontiguousarray(out[..., 3]))


def fit_background(
    background: imaging.Decoded, size: tuple[int, int], fit: str, color: tuple[int, int, int] | None = None
) -> Layer:
    """The background image fitted to `size` (width, height).

    "cover" scales it to cover and crops the centre (PIL's ImageOps.fit), "stretch" resizes it,
    "contain" scales it to fit inside and centres it (ImageOps.pad); the bars are `color` or, without
    one, transparent. A background's own transparency is kept, or flattened over `color` when given.
    All scale bilinearly: Pillow's filter, or OpenCV's (see _upscale) where an opaque image is scaled up
    to cover or stretch, the common case of a photo behind a larger one.
    """
    if fit in ("cover", "stretch") and background.alpha is None:
        box = _cover_box(background.size, size) if fit == "cover" else (0.0, 0.0, *background.size)
        if (scaled := _upscale(background.rgb, box, size)) is not None:
            return Layer(scaled)
    im = _as_image(background)
    if fit == "cover":
        im = ImageOps.fit(im, size, _FIT_RESAMPLE)
    elif fit == "stretch":
        im = im.resize(size, _FIT_RESAMPLE)
    elif fit == "contain":
        im = ImageOps.pad(im.convert("RGBA"), size, _FIT_RESAMPLE, color=(0, 0, 0, 0))
    else:
        raise internal(f"unknown fit {fit!r} passed Options' check")
    if im.mode == "RGB":
        return Layer(np.asarray(im))
    rgba = np.asarray(im)
    alpha = np.ascontiguousarray(rgba[..., 3])
    rgb = np.ascontiguousarray(rgba[..., :3])
    if color is not None:
        return Layer(imaging.blend(rgb, alpha, imaging.solid(*rgb.shape[:2], color)))
    if (alpha == 255).all():
        return Layer(rgb)
    return Layer(rgb, alpha)


def _cover_box(source: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the source's centred crop with the aspect ratio of `size`: ImageOps.fit's."""
    (sw, sh), ratio = source, size[0] / size[1]
    if sw / sh == ratio:
        return 0.0, 0.0, float(sw), float(sh)
    width, height = (ratio * sh, float(sh)) if sw / sh > ratio else (float(sw), sw / ratio)
    return (sw - width) / 2, (sh - height) / 2, width, height


def _upscale(rgb: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray | None:
    """The `box` of an opaque image scaled bilinearly up to `size`, by OpenCV; None when that would shrink it
    (Pillow's bilinear filter then widens with the scale, against aliasing) or without OpenCV.

    Pixel centres map as Pillow's resize(size, box=box) maps them and the edge pixels repeat outwards as in
    its filter, so the two agree but for OpenCV's coordinates, rounded to 1/32 pixel: within 6 levels and
    0.4 on average on the reference photos (the bounds tests/test_compose.py holds it to), and several
    times faster (benchmarks/options.py times the background-image paths).
    """
    left, top, width, height = box
    if imaging._cv2 is None or width > size[0] or height > size[1] or not rgb.size:
        return None
    sx, sy = width / size[0], height / size[1]
    # Output pixel (x, y) samples the source at (left + (x + 0.5) * sx - 0.5, top + (y + 0.5) * sy - 0.5).
    to_source = np.array([[sx, 0.0, left + 0.5 * sx - 0.5], [0.0, sy, top + 0.5 * sy - 0.5]])
    cv2 = imaging._cv2
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(rgb, to_source, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _as_image(decoded: imaging.Decoded) -> Image.Image:
    if decoded.alpha is None:
        return Image.fromarray(decoded.rgb)
    return Image.fromarray(np.dstack((decoded.rgb, decoded.alpha)))


def over(front: np.ndarray, alpha: np.ndarray, layer: Layer) -> np.ndarray:
    """`front` with `alpha` over the layer: RGB when the layer is opaque, else RGBA (Porter-Duff over,
    straight alpha; fully transparent pixels are all zero, as in the plain cutout)."""
    if layer.alpha is None:
        return imaging.blend(front, alpha, layer.rgb)
    opaque = layer.alpha == 255
    if (opaque | (layer.alpha == 0)).all():
        # Contain's bars over an opaque image: the blend where the image is, the plain cutout in the bars.
        out = np.dstack((front, alpha))
        out[opaque, :3] = imaging.blend(front[opaque][None], alpha[opaque][None], layer.rgb[opaque][None])[0]
        out[opaque, 3] = 255
        out[out[..., 3] == 0] = 0
        return out
    a = alpha.astype(np.float32) / 255.0
    b = layer.alpha.astype(np.float32) / 255.0 * (1.0 - a)
    total = a + b
    safe = np.where(total > 0, total, 1.0)[..., None]
    rgb = (front.astype(np.float32) * a[..., None] + layer.rgb.astype(np.float32) * b[..., None]) / safe
    out = np.dstack((np.rint(rgb), np.rint(total * 255.0))).clip(0, 255).astype(np.uint8)
    out[out[..., 3] == 0] = 0
    return out


def compose(
    image: imaging.Decoded,
    mask: np.ndarray,
    task_mask: bool,
    options: Options,
    background: imaging.Decoded | None = None,
) -> tuple[np.ndarray, Box | None]:
    """What one request returns, before encoding: the mask or the cutout, as the options ask.

    Order: the box (from the served mask), refine, threshold, the task; then crop, and what goes
    behind the subject, fitted to the (cropped) output: "crop then background".

    Args:
        image: The decoded input.
        mask: Its HxW uint8 saliency map.
        task_mask: True for the mask task, False for the cutout.
        options: The request's (checked) options.
        background: The decoded background image, when options carry one.

    Returns:
        (the array to encode, the salient object's box in input pixels or None when nothing is salient).
    """
    box = imaging.bounding_box(mask, options.box_threshold or 0.0)
    front = image.rgb
    if options.refine == "postprocess":
        from u2serve.core import refine

        mask = refine.postprocess(mask)
    elif options.refine == "matting":
        from u2serve.core import refine

        mask, front = refine.matte(image.rgb, mask, *options.matting)
    if options.threshold is not None:
        mask = imaging.apply_threshold(mask, options.threshold)
    window = imaging.expand_box(box, options.crop_margin, *image.size) if options.crop and box is not None else None
    if task_mask:
        return (mask if window is None else imaging.crop(mask, window)), box
    behind = _behind(image, options, background, window)
    if window is not None:
        front, mask = imaging.crop(front, window), imaging.crop(mask, window)
        image = imaging.Decoded(imaging.crop(image.rgb, window), _crop_or_none(image.alpha, window), image.format)
    if behind is None:
        return imaging.cutout(front, mask, image.alpha, options.rgb_background), box
    alpha = mask if image.alpha is None else imaging.multiply_alpha(mask, image.alpha)
    return over(front, alpha, behind), box


def _crop_or_none(array: np.ndarray | None, window: Box) -> np.ndarray | None:
    return None if array is None else imaging.crop(array, window)


def _behind(
    image: imaging.Decoded, options: Options, background: imaging.Decoded | None, window: Box | None
) -> Layer | None:
    """The layer behind the subject, at the output's size; None for a plain colour or nothing."""
    if background is not None:
        size = image.size if window is None else (window.width, window.height)
        layer = fit_background(background, size, options.fit, options.rgb_background)
        return layer if options.effect is None else _layer_effect(layer, options.effect, options.blur_radius)
    if options.effect is not None:
        # The effect sees the whole input (a blur near the crop's edge uses what lies beyond it).
        rgb = effect_layer(image.rgb, options.effect, options.blur_radius)
        return Layer(rgb if window is None else imaging.crop(rgb, window))
    return None


def decode_background(options: Options, max_pixels: int) -> imaging.Decoded | None:
    """The options' background image decoded under the input's limits, or None; its faults name it."""
    if (data := options.background_bytes) is None:
        return None
    try:
        return imaging.decode_image(data, max_pixels)
    except CoreError as exc:
        raise type(exc)(exc.code, f"background_image: {exc.message}") from exc  # TooManyPixels stays one


def check_background(background: imaging.Decoded, options: Options) -> None:
    """A transparent background image under JPEG output is the caller's fault: raises INVALID_ARGUMENT
    before any work is spent (Options.check_task caught every other alpha)."""
    alpha = background.alpha
    if options.format == "jpeg" and options.background is None and alpha is not None and (alpha < 255).any():
        raise invalid(
            "the background image has transparency, which output_format='jpeg' cannot hold: "
            "give a background colour to fill it, or use png/webp"
        )


def encode(array: np.ndarray, options: Options, png_compression: int = imaging.DEFAULT_PNG_COMPRESSION) -> bytes:
    """The file of `array` (HxW, HxWx3 or HxWx4 uint8) in the options' format.

    PNG at `png_compression` (the options' level when they name one); WebP lossless or, with `quality`,
    lossy with lossless alpha (both at effort WEBP_METHOD); JPEG at `quality` (90).

    Raises:
        CoreError: INVALID_ARGUMENT for alpha in a JPEG (a combination Options.check_task refuses up front).
    """
    fmt = options.format
    if fmt == "png":
        level = png_compression if options.png_compression is None else options.png_compression
        return imaging.encode_png(array, level)
    im = Image.fromarray(np.ascontiguousarray(array))
    buffer = io.BytesIO()
    if fmt == "jpeg":
        if im.mode == "RGBA":
            raise invalid("output_format='jpeg' cannot hold alpha: give a background, or use png/webp")
        im.save(buffer, format="JPEG", quality=options.quality or DEFAULT_JPEG_QUALITY)
    elif options.quality is None:
        im.save(buffer, format="WEBP", lossless=True, quality=0, method=WEBP_METHOD)
    else:
        im.save(buffer, format="WEBP", quality=options.quality, method=WEBP_METHOD)
    return buffer.getvalue()
