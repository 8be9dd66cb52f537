"""The options of a segment call: one definition, checked once where they enter.

They enter through the SDK's arguments, a `u2serve.v1.Options` message (what the handler and the
Triton model receive) or REST form fields and headers; each way builds an `Options`, whose
constructor is the only place that checks values. The server imports this module from the
installed SDK package, so the client and the server cannot disagree about what is valid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from u2net_client._errors import U2NetError
from u2net_client._generated import u2serve_pb2

Color = tuple[int, int, int] | str
"""A background colour: (r, g, b) with 0-255 components, "#rrggbb", "rrggbb", or "r,g,b"."""

DEFAULT_BOX_THRESHOLD = 0.5
_HEX = re.compile(r"#?([0-9a-fA-F]{6})")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _invalid(message: str) -> U2NetError:
    return U2NetError(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_color(color: Color) -> tuple[int, int, int]:
    """(r, g, b) from any accepted form; raises U2NetError INVALID_ARGUMENT otherwise."""
    parts: tuple[object, ...]
    if isinstance(color, str):
        if m := _HEX.fullmatch(color.strip()):
            h = m.group(1)
            return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
        parts = tuple(_integer(p) for p in color.split(","))
    else:
        parts = tuple(color)
    if len(parts) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in parts):
        raise _invalid(f"background={color!r}; accepted: (r, g, b) with 0-255 each, '#rrggbb' or 'r,g,b'")
    return (int(parts[0]), int(parts[1]), int(parts[2]))  # type: ignore[call-overload]


def _integer(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class Options:
    """Every option of a segment call, checked and normalised on construction.

    Attributes:
        background: Composite over this colour (RGB output); given in any `Color` form, kept as (r, g, b).
        threshold: Hard mask: 255 where saliency >= threshold (0..1), else 0.
        crop: Crop the output to the salient object's bounding box.
        crop_margin: Pixels added around the box when cropping.
        box_threshold: Saliency (0..1) above which a pixel counts for the box; None means 0.5.
        png_compression: zlib level 0..9 of the PNG output; None for the server's default.

    Raises:
        U2NetError: INVALID_ARGUMENT naming the option and what is accepted.
    """

    background: Color | None = None
    threshold: float | None = None
    crop: bool = False
    crop_margin: int = 0
    box_threshold: float | None = DEFAULT_BOX_THRESHOLD
    png_compression: int | None = None

    def __post_init__(self) -> None:
        if self.background is not None:
            object.__setattr__(self, "background", parse_color(self.background))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", _unit("threshold", self.threshold))
        box = DEFAULT_BOX_THRESHOLD if self.box_threshold is None else _unit("box_threshold", self.box_threshold)
        object.__setattr__(self, "box_threshold", box)
        object.__setattr__(self, "crop", bool(self.crop))
        if isinstance(self.crop_margin, bool) or not isinstance(self.crop_margin, int) or self.crop_margin < 0:
            raise _invalid(f"crop_margin={self.crop_margin!r}; accepted: a whole number of pixels >= 0")
        level = self.png_compression
        if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9):
            raise _invalid(f"png_compression={level!r}; accepted: 0 (fastest) to 9 (smallest)")

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
        )

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Options:
        """The options of REST form fields or X-U2Serve-* headers: background, threshold, crop, margin,
        box_threshold, compression (all text)."""
        return cls(
            background=fields.get("background") or None,
            threshold=_number("threshold", fields["threshold"]) if "threshold" in fields else None,
            crop=_flag("crop", fields.get("crop", "false")),
            crop_margin=int(_number("margin", fields.get("margin", "0"), integer=True)),
            box_threshold=_number("box_threshold", fields.get("box_threshold", "0.5")),
            png_compression=int(_number("compression", fields["compression"], integer=True))
            if "compression" in fields
            else None,
        )


def _unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise _invalid(f"{name}={value!r}; accepted: a number from 0.0 to 1.0")
    return float(value)


def _number(name: str, text: str, integer: bool = False) -> float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise _invalid(f"{name}={text!r} is not {kind}") from None


def _flag(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise _invalid(f"{name}={text!r}; accepted: true/false/1/0")
