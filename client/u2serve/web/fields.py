"""The options the gateway takes, as data: one row per SDK keyword, read by /v1, the page and the docs.

A row is offered only where the SDK's `mask`/`cutout` has a parameter of its name, so an option the SDK
gains (e.g. the backgrounds issue's) appears on the page, in /v1 and in the OpenAPI description by
adding its row here. Values are parsed from form text here and checked by the SDK's `Options`.

How the page shows a row is data too: its `group`, what leaving it empty means (`default`, in words),
and `when` it applies: a list of alternatives, each naming other rows and the form values they must
have ("" left empty, "*" anything given, "true"/"false" for a checkbox). The page hides a row that does
not apply and never sends it; the SDK refuses most of those combinations anyway (tests hold both).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import grpc

from u2net_client import U2NetError
from u2net_client.aio import AsyncU2NetClient
from u2serve.core.options import (
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MATTING,
    EFFECTS,
    FITS,
    FORMATS,
    MAX_BLUR_RADIUS,
    MAX_ERODE_SIZE,
    REFINES,
)

Kind = Literal["bool", "number", "integer", "color", "choice", "image"]
TASKS = ("cutout", "mask")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Field:
    """One option: its form name (= the SDK keyword), how to parse it, and how the page shows it."""

    name: str
    kind: Kind
    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    group: str = "output"
    default: str = ""  # what leaving it empty means, in words: "240", "none (soft edges)"
    when: tuple[Mapping[str, tuple[str, ...]], ...] = ()  # alternatives; empty: always applies

    def parse(self, value: str | bytes) -> object:
        """The SDK value of form text (bytes for an image field); raises U2NetError INVALID_ARGUMENT."""
        if self.kind == "image":
            return value or None
        text = value.decode() if isinstance(value, bytes) else value.strip()
        if self.kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise _invalid(f"{self.name}={text!r}; accepted: true/false/1/0")
        if text == "":
            return None
        if self.kind == "choice":
            if text not in self.choices:
                raise _invalid(f"{self.name}={text!r}; accepted: {', '.join(self.choices)}")
            return text
        if self.kind in ("number", "integer"):
            try:
                return int(text) if self.kind == "integer" else float(text)
            except ValueError:
                kind = "an integer" if self.kind == "integer" else "a number"
                raise _invalid(f"{self.name}={text!r} is not {kind}") from None
        return text  # a colour: the SDK's Options accepts '#rrggbb' and 'r,g,b' and says what is wrong


def _invalid(message: str) -> U2NetError:
    return U2NetError(grpc.StatusCode.INVALID_ARGUMENT, message)


# The page's groups, in order, as a person thinks of them; model and result are the page's own controls.
GROUPS: tuple[tuple[str, str], ...] = (
    ("background", "Background"),
    ("edges", "Edges"),
    ("crop", "Crop"),
    ("output", "Output"),
)
_FG, _BG, _ERODE = DEFAULT_MATTING


def _when(*alternatives: Mapping[str, tuple[str, ...]]) -> tuple[Mapping[str, tuple[str, ...]], ...]:
    return tuple(alternatives)


# Every option the gateway knows; rows whose name the installed SDK lacks are not offered (see `offered`).
# A row is listed after the rows its `when` names, except threshold, which the page checks against refine.
FIELDS: tuple[Field, ...] = (
    Field("background", "color", "Colour", "#rrggbb or r,g,b; the result is RGB",
          group="background", default="none (transparent)"),
    Field("background_image", "image", "Image", "Composite over this image instead",
          group="background", default="none"),
    Field("background_fit", "choice", "Fit", "How the background image fills the frame",
          choices=FITS, group="background", default=FITS[0], when=_when({"background_image": ("*",)})),
    # The SDK blurs or greys the image behind the subject: the input's own, or background_image; not a colour.
    Field("effect", "choice", "Effect", "What the background behind the subject becomes",
          choices=EFFECTS, group="background", default="none",
          when=_when({"background": ("",)}, {"background_image": ("*",)})),
    Field("blur_radius", "number", "Blur radius (px)", "How strong the blur is", 0, MAX_BLUR_RADIUS, 1,
          group="background", default="1 % of the longer side", when=_when({"effect": ("blur",)})),
    # refine works on the soft mask that threshold would harden: the SDK takes one of them.
    Field("threshold", "number", "Threshold", "Hard edges: opaque where saliency >= this (0..1)",
          0, 1, 0.01, group="edges", default="none (soft edges)", when=_when({"refine": ("", "none")})),
    Field("refine", "choice", "Refine", "Refine the soft edge (rembg's post-processing or alpha matting)",
          choices=REFINES, group="edges", default="none"),
    Field("matting_foreground_threshold", "integer", "Foreground level", "Sure foreground above this (0-255)",
          0, 255, 1, group="edges", default=str(_FG), when=_when({"refine": ("matting",)})),
    Field("matting_background_threshold", "integer", "Background level", "Sure background below this (0-255)",
          0, 255, 1, group="edges", default=str(_BG), when=_when({"refine": ("matting",)})),
    Field("matting_erode_size", "integer", "Erosion (px)", "How far the sure regions are eroded",
          0, MAX_ERODE_SIZE, 1, group="edges", default=str(_ERODE), when=_when({"refine": ("matting",)})),
    Field("crop", "bool", "Crop to the object", "Crop the result to the salient object's bounding box",
          group="crop", default="off"),
    Field("crop_margin", "integer", "Margin (px)", "Pixels kept around the box",
          0, None, 1, group="crop", default="0", when=_when({"crop": ("true",)})),
    Field("box_threshold", "number", "Box threshold", "Saliency counted in the box (0..1)",
          0, 1, 0.01, group="crop", default=f"{DEFAULT_BOX_THRESHOLD:g}", when=_when({"crop": ("true",)})),
    Field("output_format", "choice", "Format", "Image format of the result",
          choices=FORMATS, group="output", default=FORMATS[0]),
    Field("quality", "integer", "Quality", "1 (smallest) to 100 (best)",
          1, 100, 1, group="output", default=f"{DEFAULT_JPEG_QUALITY} (JPEG), lossless (WebP)",
          when=_when({"output_format": ("jpeg", "webp")})),
    Field("png_compression", "integer", "PNG compression", "zlib level 0 (fastest) to 9 (smallest)",
          0, 9, 1, group="output", default="the server's setting", when=_when({"output_format": ("", "png")})),
)  # fmt: skip


def _sdk_parameters(task: str) -> frozenset[str]:
    method = AsyncU2NetClient.cutout if task == "cutout" else AsyncU2NetClient.mask
    return frozenset(inspect.signature(method).parameters)


def offered(task: str) -> tuple[Field, ...]:
    """The rows the installed SDK takes for `task` ("cutout" or "mask")."""
    names = _sdk_parameters(task)
    return tuple(f for f in FIELDS if f.name in names)


def sdk_supports(task: str, name: str) -> bool:
    """Whether the SDK's `task` method has a parameter `name` (e.g. the backgrounds issue's `refine`)."""
    return name in _sdk_parameters(task)


def parse_fields(task: str, form: Mapping[str, str | bytes]) -> dict[str, object]:
    """SDK keyword arguments for `task` from form values; unknown names are refused with what is accepted."""
    rows = {f.name: f for f in offered(task)}
    unknown = sorted(set(form) - set(rows))
    if unknown:
        raise _invalid(f"unknown option(s) {', '.join(unknown)} for {task}; accepted: {', '.join(rows) or 'none'}")
    kwargs = {}
    for name, value in form.items():
        parsed = rows[name].parse(value)
        if parsed is not None:
            kwargs[name] = parsed
    return kwargs


# How the page names each model: what a user picks between.
MODEL_LABELS = {"u2net": "U2NET (rembg's default, most accurate)", "u2netp": "U2NETP (fast, 4.7 MB)"}


def describe(models: tuple[str, ...], max_body_bytes: int, default_model: str) -> dict[str, object]:
    """What GET /v1/options answers: the models and the page's default, the upload limit, the groups in
    order and per task the rows the page renders."""
    return {
        "models": list(models),
        "default_model": default_model,
        "model_labels": {m: MODEL_LABELS.get(m, m) for m in models},
        "max_body_bytes": max_body_bytes,
        "groups": [{"name": name, "label": label} for name, label in GROUPS],
        "tasks": {task: [asdict(f) for f in offered(task)] for task in TASKS},
    }


def applies(f: Field) -> str:
    """When `f` applies, in words: "refine=matting", "background unset, or background_image given"."""

    def value(name: str, allowed: tuple[str, ...]) -> str:
        words = {"": "unset", "*": "given"}
        if all(v in words for v in allowed):
            return f"{name} {' or '.join(words[v] for v in allowed)}"
        return f"{name}={'/'.join(v or 'unset' for v in allowed)}"

    return ", or ".join(" and ".join(value(n, a) for n, a in alt.items()) for alt in f.when)


def openapi_form(task: str) -> dict[str, object]:
    """The multipart request body of /v1/models/{model}/{task} as an OpenAPI schema."""
    types = {"bool": "boolean", "number": "number", "integer": "integer", "color": "string", "choice": "string"}
    props: dict[str, object] = {"file": {"type": "string", "format": "binary", "description": "The image"}}
    for f in offered(task):
        group = dict(GROUPS)[f.group].lower()
        description = f"{f.label} ({group}): {f.help}; default: {f.default}"
        prop: dict[str, object] = {"description": description + (f"; applies with {applies(f)}" if f.when else "")}
        if f.kind == "image":
            prop.update(type="string", format="binary")
        else:
            prop["type"] = types[f.kind]
        if f.choices:
            prop["enum"] = list(f.choices)
        if f.minimum is not None:
            prop["minimum"] = f.minimum
        if f.maximum is not None:
            prop["maximum"] = f.maximum
        props[f.name] = prop
    schema = {"type": "object", "required": ["file"], "properties": props}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
