"""The options the gateway takes, as data: one row per SDK keyword, read by /v1, the page and the docs.

A row is offered only where the SDK's `mask`/`cutout` has a parameter of its name, so an option the SDK
gains (e.g. the backgrounds issue's) appears on the page, in /v1 and in the OpenAPI description by
adding its row here. Values are parsed from form text here and checked by the SDK's `Options`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import grpc

from u2net_client._errors import U2NetError
from u2net_client.aio import AsyncU2NetClient

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
    placeholder: str = ""

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


# Every option the gateway knows; rows whose name the installed SDK lacks are not offered (see `offered`).
FIELDS: tuple[Field, ...] = (
    Field("background", "color", "Background colour", "Composite over this colour (RGB result)", placeholder="#ffffff"),
    Field("background_image", "image", "Background image", "Composite over this image instead of a colour"),
    Field(
        "background_fit",
        "choice",
        "Background fit",
        "How the background image fills the frame",
        choices=("cover", "contain", "stretch"),
    ),
    Field("effect", "choice", "Effect", "What the background becomes", choices=("blur", "greyscale")),
    Field("blur_radius", "number", "Blur radius (px)", "For the blur effect; empty: 1 % of the longer side", 0, 500, 1),
    Field("threshold", "number", "Threshold", "Hard mask: opaque where saliency >= this (0..1)", 0, 1, 0.01, (), "0.5"),
    Field(
        "refine",
        "choice",
        "Refine",
        "Refine the mask's edge (rembg's ppm / alpha matting)",
        choices=("none", "postprocess", "matting"),
    ),
    Field(
        "matting_foreground_threshold",
        "integer",
        "Matting: foreground level",
        "Sure foreground above (0-255)",
        0,
        255,
        1,
        (),
        "240",
    ),
    Field(
        "matting_background_threshold",
        "integer",
        "Matting: background level",
        "Sure background below (0-255)",
        0,
        255,
        1,
        (),
        "10",
    ),
    Field("matting_erode_size", "integer", "Matting: erosion (px)", "Erosion of the sure regions", 0, 100, 1, (), "10"),
    Field("crop", "bool", "Crop to the object", "Crop the result to the salient object's bounding box"),
    Field("crop_margin", "integer", "Crop margin (px)", "Pixels kept around the box when cropping", 0, None, 1),
    Field("box_threshold", "number", "Box threshold", "Saliency counted in the box (0..1)", 0, 1, 0.01, (), "0.5"),
    Field("output_format", "choice", "Output format", "Image format of the result", choices=("png", "webp", "jpeg")),
    Field("quality", "integer", "Quality", "1-100 for JPEG and lossy WebP", 1, 100, 1),
    Field("png_compression", "integer", "PNG compression", "zlib level 0 (fastest) to 9 (smallest)", 0, 9, 1),
)


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
    """What GET /v1/options answers: the models (the page's default first), the upload limit, and per task the
    rows the page renders."""
    return {
        "models": list(models),
        "default_model": default_model,
        "model_labels": {m: MODEL_LABELS.get(m, m) for m in models},
        "max_body_bytes": max_body_bytes,
        "tasks": {task: [asdict(f) for f in offered(task)] for task in TASKS},
    }


def openapi_form(task: str) -> dict[str, object]:
    """The multipart request body of /v1/models/{model}/{task} as an OpenAPI schema."""
    types = {"bool": "boolean", "number": "number", "integer": "integer", "color": "string", "choice": "string"}
    props: dict[str, object] = {"file": {"type": "string", "format": "binary", "description": "The image"}}
    for f in offered(task):
        prop: dict[str, object] = {"description": f"{f.label}: {f.help}"}
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
