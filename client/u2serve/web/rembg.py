"""rembg 2.0's server parameters (`rembg s`, POST/GET /api/remove) mapped onto the SDK's options.

| rembg | meaning there | here |
| --- | --- | --- |
| `file` | the image (multipart) | the same |
| `model` | session name, default u2net | u2netp or u2net; default u2net, as rembg (the operator may change it) |
| `om` | only mask | task "mask" (bgc ignored, as rembg does) |
| `bgc` | background r,g,b,a | alpha 255: `background=(r,g,b)`; 0: none; between: composited here |
| `ppm` | post-process the mask | `refine="postprocess"` (the backgrounds issue) |
| `a`, `af`, `ab`, `ae` | alpha matting and its thresholds/erosion | `refine="matting"` and its parameters |
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from u2serve.web.errors import HTTPError
from u2serve.web.fields import sdk_supports

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
# rembg's defaults for the matting thresholds and erosion; the SDK's names for them, where it has them.
MATTING = (("af", 240, "matting_foreground_threshold"), ("ab", 10, "matting_background_threshold"),
           ("ae", 10, "matting_erode_size"))  # fmt: skip
PARAMETERS = ("model", "a", "af", "ab", "ae", "om", "ppm", "bgc", "extras")


@dataclass(frozen=True)
class RembgCall:
    """What a rembg request asks for, in the SDK's terms."""

    task: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    translucent_background: tuple[int, int, int, int] | None = None


def _flag(name: str, text: str) -> bool:
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise HTTPError(400, f"{name}={text!r}; accepted: true/false/1/0")


def _byte(name: str, text: str, upper: int | None = 255) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HTTPError(400, f"{name}={text!r} is not an integer") from None
    if value < 0 or (upper is not None and value > upper):
        raise HTTPError(400, f"{name}={value}; accepted: 0..{upper}" if upper else f"{name}={value}; accepted: >= 0")
    return value


def parse_bgc(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4:
        raise HTTPError(400, f"bgc={text!r}; accepted: r,g,b,a with 0-255 each, e.g. 255,255,255,255")
    r, g, b, a = (_byte("bgc", p.strip()) for p in parts)
    return (r, g, b, a)


def _refine(params: dict[str, str], kwargs: dict[str, Any]) -> None:
    matting = _flag("a", params.get("a", "false"))
    postprocess = _flag("ppm", params.get("ppm", "false"))
    if not (matting or postprocess):
        return
    wanted, asked = (
        ("matting", "a=true (alpha matting)") if matting else ("postprocess", "ppm=true (post-process mask)")
    )
    if not sdk_supports("cutout", "refine"):
        raise HTTPError(
            400, f"{asked} needs refine={wanted!r} from u2serve's backgrounds issue (#11), which this build "
            "does not have yet; leave it out for the plain U²-Net mask",
        )  # fmt: skip
    kwargs["refine"] = wanted
    if matting:
        for name, default, sdk_name in MATTING:
            value = _byte(name, params.get(name, str(default)), None if name == "ae" else 255)
            if sdk_supports("cutout", sdk_name):
                kwargs[sdk_name] = value


def parse(params: dict[str, str], models: tuple[str, ...], default_model: str) -> RembgCall:
    """The SDK call for rembg's parameters (form fields or query); HTTPError 400 for what cannot work."""
    unknown = sorted(set(params) - set(PARAMETERS) - {"url", "file"})
    if unknown:
        raise HTTPError(400, f"unknown parameter(s) {', '.join(unknown)}; rembg's are {', '.join(PARAMETERS)}")
    model = params.get("model") or default_model
    if model not in models:
        raise HTTPError(400, f"model={model!r} is not served here; accepted: {', '.join(models)}")
    kwargs: dict[str, Any] = {}
    _refine(params, kwargs)
    if _flag("om", params.get("om", "false")):
        return RembgCall("mask", model, kwargs)
    translucent = None
    if params.get("bgc"):
        r, g, b, a = parse_bgc(params["bgc"])
        if a == 255:
            kwargs["background"] = (r, g, b)
        elif a > 0:
            translucent = (r, g, b, a)
    return RembgCall("cutout", model, kwargs, translucent)


def composite(png: bytes, color: tuple[int, int, int, int]) -> bytes:
    """An RGBA cutout over a translucent colour, as rembg's apply_background does (RGBA PNG out)."""
    with Image.open(io.BytesIO(png)) as cut:
        rgba = cut.convert("RGBA")
    out = Image.alpha_composite(Image.new("RGBA", rgba.size, color), rgba)
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
