"""The options of a segment call: one definition, checked once where they enter.

They enter through the SDK's arguments, a `u2serve.v1.Options` message (what the handler and the
Triton model receive) or REST form fields and headers; each way builds an `Options`, whose
constructor is the only place that checks values. The server imports this module from the
installed u2serve.core, so the client and the server cannot disagree about what is valid.

An SDK call takes them as `options=Options(...)` or as keywords (`MaskKeywords`, `CutoutKeywords`), not both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from u2serve.core._generated import u2serve_pb2
from u2serve.core.errors import invalid
from u2serve.core.image import ImageInput, image_bytes

Color = tuple[int, int, int] | str
"""A background colour: (r, g, b) with 0-255 components, "#rrggbb", "rrggbb", or "r,g,b"."""

DEFAULT_BOX_THRESHOLD = 0.5
FITS = ("cover", "contain", "stretch")
EFFECTS = ("blur", "greyscale")
REFINES = ("none", "postprocess", "matting")
FORMATS = ("png", "webp", "jpeg")
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
DEFAULT_JPEG_QUALITY = 90
# rembg's alpha-matting defaults (rembg.bg.remove): trimap levels on the 0-255 mask, erosion in pixels.
DEFAULT_MATTING = (240, 10, 10)
MAX_BLUR_RADIUS = 500.0
MAX_ERODE_SIZE = 100
_HEX = re.compile(r"#?([0-9a-fA-F]{6})")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_color(color: Color) -> tuple[int, int, int]:
    """(r, g, b) from any accepted form; raises CoreError INVALID_ARGUMENT otherwise."""
    parts: tuple[object, ...]
    if isinstance(color, str):
        if m := _HEX.fullmatch(color.strip()):
            h = m.group(1)
            return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
        parts = tuple(_integer(p) for p in color.split(","))
    else:
        parts = tuple(color)
    if len(parts) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in parts):
        raise invalid(f"background={color!r}; accepted: (r, g, b) with 0-255 each, '#rrggbb' or 'r,g,b'")
    return (int(parts[0]), int(parts[1]), int(parts[2]))  # type: ignore[call-overload]


def _integer(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class Options:
    """Every option of a segment call, checked and normalised on construction.

    An SDK call takes one as `options=`, or these fields as keywords (`MaskKeywords`, `CutoutKeywords`).

    Attributes:
        background: Composite over this colour (RGB output); given in any `Color` form, kept as (r, g, b).
        threshold: Hard mask: 255 where saliency >= threshold (0..1), else 0.
        crop: Crop the output to the salient object's bounding box.
        crop_margin: Pixels added around the box when cropping.
        box_threshold: Saliency (0..1) above which a pixel counts for the box; None means 0.5.
        png_compression: zlib level 0..9 of the PNG output; None for the server's default.
        background_image: An image (bytes, a path or a PIL image; kept as its encoded bytes) composited
            behind the subject; it travels in the request.
        background_fit: How the background image fills the output: "cover" (default: scale to cover,
            centre crop), "contain" (letterbox: bars transparent, or `background` when given) or "stretch".
        effect: "blur" (the background blurred behind the sharp subject, portrait style) or "greyscale"
            (the background desaturated, the subject in colour): applied to the input's own background,
            or to background_image when one is given. RGB output unless contain leaves bars clear.
        blur_radius: Gaussian radius in pixels for effect="blur"; None for 1 % of the input's longer side.
        refine: "none" (default), "postprocess" (rembg's post_process_mask: opening, blur, threshold)
            or "matting" (pymatting's closed-form alpha and foreground colours from a trimap).
        matting_foreground_threshold: Mask level (0-255) above which the trimap is sure foreground; 240.
        matting_background_threshold: Mask level below which it is sure background; 10.
        matting_erode_size: Side of the square the sure regions are eroded with, in pixels; 10.
        output_format: "png" (default), "webp" (lossless unless `quality` is given) or "jpeg"
            (opaque results only).
        quality: 1..100 for "jpeg" (default 90) and lossy "webp".

    Raises:
        CoreError: INVALID_ARGUMENT naming the option and what is accepted.
    """

    background: Color | None = None
    threshold: float | None = None
    crop: bool = False
    crop_margin: int = 0
    box_threshold: float | None = DEFAULT_BOX_THRESHOLD
    png_compression: int | None = None
    background_image: ImageInput | None = field(default=None, repr=False)
    background_fit: str | None = None
    effect: str | None = None
    blur_radius: float | None = None
    refine: str | None = None
    matting_foreground_threshold: int | None = None
    matting_background_threshold: int | None = None
    matting_erode_size: int | None = None
    output_format: str | None = None
    quality: int | None = None

    def __eq__(self, other: object) -> bool:
        # The SDK's Options (u2net_client) is this class raising the SDK's error: the same values are equal.
        if not isinstance(other, Options):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self))

    def __post_init__(self) -> None:
        if self.background is not None:
            object.__setattr__(self, "background", parse_color(self.background))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", _unit("threshold", self.threshold))
        box = DEFAULT_BOX_THRESHOLD if self.box_threshold is None else _unit("box_threshold", self.box_threshold)
        object.__setattr__(self, "box_threshold", box)
        object.__setattr__(self, "crop", bool(self.crop))
        if isinstance(self.crop_margin, bool) or not isinstance(self.crop_margin, int) or self.crop_margin < 0:
            raise invalid(f"crop_margin={self.crop_margin!r}; accepted: a whole number of pixels >= 0")
        level = self.png_compression
        if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9):
            raise invalid(f"png_compression={level!r}; accepted: 0 (fastest) to 9 (smallest)")
        self._check_background_image()
        self._check_effect()
        self._check_refine()
        self._check_format()

    def _check_background_image(self) -> None:
        if self.background_image is not None:
            data = image_bytes(self.background_image)
            if not data:
                raise invalid("background_image is empty (0 bytes); send an image file's bytes, or leave it out")
            object.__setattr__(self, "background_image", data)
        fit = _name("background_fit", self.background_fit, FITS)
        if fit is not None and self.background_image is None:
            raise invalid(f"background_fit={fit!r} needs a background_image to fit")
        object.__setattr__(self, "background_fit", fit)

    def _check_effect(self) -> None:
        effect = _name("effect", self.effect, EFFECTS)
        object.__setattr__(self, "effect", effect)
        if effect is not None and self.background is not None and self.background_image is None:
            raise invalid(
                f"effect={effect!r} works on an image behind the subject (the input's own, or background_image), "
                "not on a plain background colour; give one of them"
            )
        if self.blur_radius is not None:
            if effect != "blur":
                raise invalid(f"blur_radius={self.blur_radius!r} applies to effect='blur' only")
            r = self.blur_radius
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= MAX_BLUR_RADIUS:
                raise invalid(f"blur_radius={r!r}; accepted: pixels, more than 0 and at most {MAX_BLUR_RADIUS:g}")
            object.__setattr__(self, "blur_radius", float(r))

    def _check_refine(self) -> None:
        refine = _name("refine", self.refine, REFINES)
        object.__setattr__(self, "refine", None if refine == "none" else refine)
        knobs = {
            "matting_foreground_threshold": self.matting_foreground_threshold,
            "matting_background_threshold": self.matting_background_threshold,
            "matting_erode_size": self.matting_erode_size,
        }
        given = [k for k, v in knobs.items() if v is not None]
        if given and refine != "matting":
            raise invalid(f"{', '.join(given)} apply to refine='matting' only")
        for name, value in knobs.items():
            top = MAX_ERODE_SIZE if name == "matting_erode_size" else 255
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top):
                raise invalid(f"{name}={value!r}; accepted: a whole number from 0 to {top}")
        fg, bg, _ = self.matting
        if refine == "matting" and bg >= fg:
            raise invalid(
                f"matting_background_threshold={bg} must be below matting_foreground_threshold={fg} "
                "(the trimap's sure background and sure foreground levels)"
            )
        if refine is not None and refine != "none" and self.threshold is not None:
            raise invalid(f"threshold= hardens the mask that refine={refine!r} refines; give one of them")

    def _check_format(self) -> None:
        fmt = _name("output_format", self.output_format, FORMATS)
        object.__setattr__(self, "output_format", None if fmt == "png" else fmt)
        if self.png_compression is not None and fmt not in (None, "png"):
            raise invalid(f"png_compression applies to PNG output, not output_format={fmt!r}")
        q = self.quality
        if q is None:
            return
        if fmt not in ("jpeg", "webp"):
            raise invalid(f"quality={q!r} applies to output_format 'jpeg' or 'webp' (lossy), not PNG")
        if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100:
            raise invalid(f"quality={q!r}; accepted: a whole number from 1 (smallest) to 100 (best)")

    def check_task(self, mask: bool) -> None:
        """Checks the options against the task; raises CoreError INVALID_ARGUMENT for a combination
        that means nothing (a background for a mask) or an output the format cannot hold (JPEG with alpha)."""
        if mask:
            given = [n for n in ("background", "background_image", "effect") if getattr(self, n) is not None]
            if given:
                raise invalid(f"{', '.join(given)} apply to the cutout; a mask has no background")
            return
        if self.output_format == "jpeg" and self.output_has_alpha:
            why = "contain's bars are transparent" if self.background_image is not None else "the cutout has alpha"
            raise invalid(
                f"output_format='jpeg' cannot hold alpha ({why}): give a background colour "
                "(background=...), a background_image with fit cover/stretch, or an effect; or use png/webp"
            )

    @property
    def output_has_alpha(self) -> bool:
        """Whether a cutout keeps an alpha channel: nothing, or only contain's transparent bars, behind it.
        (A transparent background image also keeps it: checked when it is decoded.)"""
        if self.background is not None:
            return False
        if self.background_image is not None:
            return self.fit == "contain"
        return self.effect is None

    @property
    def fit(self) -> str:
        """The background fit, "cover" when none was given."""
        return self.background_fit or "cover"

    @property
    def matting(self) -> tuple[int, int, int]:
        """(foreground threshold, background threshold, erode size) with rembg's defaults filled in."""
        fg, bg, erode = DEFAULT_MATTING
        return (
            fg if self.matting_foreground_threshold is None else self.matting_foreground_threshold,
            bg if self.matting_background_threshold is None else self.matting_background_threshold,
            erode if self.matting_erode_size is None else self.matting_erode_size,
        )

    @property
    def format(self) -> str:
        """The output format: "png" when none was given."""
        return self.output_format or "png"

    @property
    def media_type(self) -> str:
        """What the response's media_type says for this output format."""
        return MEDIA_TYPES[self.format]

    @property
    def background_bytes(self) -> bytes | None:
        """The background image's encoded bytes, normalised by the constructor."""
        return self.background_image  # type: ignore[return-value]

    @property
    def rgb_background(self) -> tuple[int, int, int] | None:
        """The background as (r, g, b), normalised by the constructor."""
        return self.background  # type: ignore[return-value]

    def to_proto(self) -> u2serve_pb2.Options:
        """The `u2serve.v1.Options` message; unset fields stay unset (the server's defaults)."""
        msg = u2serve_pb2.Options(crop=self.crop, crop_margin=self.crop_margin)
        if (rgb := self.rgb_background) is not None:
            msg.background.CopyFrom(u2serve_pb2.Color(r=rgb[0], g=rgb[1], b=rgb[2]))
        if self.threshold is not None:
            msg.threshold = self.threshold
        if self.box_threshold != DEFAULT_BOX_THRESHOLD:
            # 0 on the wire means "the default, 0.5"; a real 0 would box the whole image anyway.
            msg.box_threshold = float(self.box_threshold or 0.0)
        if self.png_compression is not None:
            msg.png_compression = self.png_compression
        if (data := self.background_bytes) is not None:
            msg.background_image = data
        msg.background_fit = self.background_fit or ""
        msg.effect = self.effect or ""
        if self.blur_radius is not None:
            msg.blur_radius = self.blur_radius
        msg.refine = self.refine or ""
        for name in ("matting_foreground_threshold", "matting_background_threshold", "matting_erode_size", "quality"):
            if (value := getattr(self, name)) is not None:
                setattr(msg, name, value)
        msg.output_format = self.output_format or ""
        return msg

    @classmethod
    def from_proto(cls, msg: u2serve_pb2.Options) -> Options:
        """The options a `u2serve.v1.Options` message carries."""
        color = msg.background if msg.HasField("background") else None
        return cls(
            background=None if color is None else (color.r, color.g, color.b),
            threshold=msg.threshold if msg.HasField("threshold") else None,
            crop=msg.crop,
            crop_margin=msg.crop_margin,
            box_threshold=msg.box_threshold or None,
            png_compression=msg.png_compression if msg.HasField("png_compression") else None,
            background_image=msg.background_image or None,
            background_fit=msg.background_fit or None,
            effect=msg.effect or None,
            blur_radius=msg.blur_radius if msg.HasField("blur_radius") else None,
            refine=msg.refine or None,
            matting_foreground_threshold=_optional(msg, "matting_foreground_threshold"),
            matting_background_threshold=_optional(msg, "matting_background_threshold"),
            matting_erode_size=_optional(msg, "matting_erode_size"),
            output_format=msg.output_format or None,
            quality=_optional(msg, "quality"),
        )

    @classmethod
    def from_call(cls, options: Options | None, keywords: Mapping[str, Any]) -> Options:
        """The options of an SDK call: `options=` as it is, else the option keywords.

        There is no merging: a call says its options one way, so nothing is overridden unnoticed.

        Raises:
            CoreError: INVALID_ARGUMENT for both at once, an `options` that is not an Options, or a bad value.
        """
        if options is None:
            return cls(**keywords)
        if not isinstance(options, Options):
            raise invalid(f"options={options!r}; accepted: an Options(...), or None to give the options as keywords")
        if keywords:
            raise invalid(
                f"give the options either as options=Options(...) or as keywords ({', '.join(keywords)}), not both"
            )
        return options

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], background_image: bytes | None = None) -> Options:
        """The options of REST form fields or X-U2Serve-* headers (all text): background, threshold, crop,
        margin, box_threshold, compression, background_fit, effect, blur_radius, refine, the three
        matting_* knobs, format and quality. The background image comes as a multipart file field's bytes."""
        return cls(
            background=fields.get("background") or None,
            threshold=_number("threshold", fields["threshold"]) if "threshold" in fields else None,
            crop=_flag("crop", fields.get("crop", "false")),
            crop_margin=int(_number("margin", fields.get("margin", "0"), integer=True)),
            box_threshold=_number("box_threshold", fields.get("box_threshold", "0.5")),
            png_compression=int(_number("compression", fields["compression"], integer=True))
            if "compression" in fields
            else None,
            background_image=background_image,
            background_fit=fields.get("background_fit") or None,
            effect=fields.get("effect") or None,
            blur_radius=_number("blur_radius", fields["blur_radius"]) if "blur_radius" in fields else None,
            refine=fields.get("refine") or None,
            matting_foreground_threshold=_whole(fields, "matting_foreground_threshold"),
            matting_background_threshold=_whole(fields, "matting_background_threshold"),
            matting_erode_size=_whole(fields, "matting_erode_size"),
            output_format=fields.get("format") or None,
            quality=_whole(fields, "quality"),
        )


class MaskKeywords(TypedDict, total=False):
    """The options of a mask, given to an SDK call as keywords: each as `Options` describes it."""

    threshold: float | None
    crop: bool
    crop_margin: int
    box_threshold: float | None
    png_compression: int | None
    refine: str | None
    matting_foreground_threshold: int | None
    matting_background_threshold: int | None
    matting_erode_size: int | None
    output_format: str | None
    quality: int | None


class CutoutKeywords(MaskKeywords, total=False):
    """The options of a cutout (and of a video), given as keywords: a mask's, and what goes behind the subject."""

    background: Color | None
    background_image: ImageInput | None
    background_fit: str | None
    effect: str | None
    blur_radius: float | None


def _name(option: str, value: str | None, accepted: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.strip().lower() not in accepted:
        raise invalid(f"{option}={value!r}; accepted: {', '.join(repr(a) for a in accepted)}")
    return value.strip().lower()


def _optional(msg: u2serve_pb2.Options, name: str) -> int | None:
    return int(getattr(msg, name)) if msg.HasField(name) else None


def _whole(fields: Mapping[str, str], name: str) -> int | None:
    return int(_number(name, fields[name], integer=True)) if name in fields else None


def _unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise invalid(f"{name}={value!r}; accepted: a number from 0.0 to 1.0")
    return float(value)


def _number(name: str, text: str, integer: bool = False) -> float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise invalid(f"{name}={text!r} is not {kind}") from None


def _flag(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise invalid(f"{name}={text!r}; accepted: true/false/1/0")
