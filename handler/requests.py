"""Turn one TorchServe request row into a typed `SegmentRequest`, and a result into its reply bytes.

Two protocols share the handler:
- "proto": the SDK sends a serialised u2serve.v1.SegmentRequest under the input key "u2serve"
  and gets a serialised SegmentResponse back (errors inside it, since TorchServe's gRPC path
  loses per-request status codes in a batch).
- "raw": REST or any caller sending the bare image as "body"/"data"; the reply is the PNG itself,
  and an error is a JSON body with an HTTP status. Options come as multipart form fields
  (`curl -F data=@photo.jpg -F task=mask`) or as `X-U2Serve-<Option>` headers
  (`curl -T photo.jpg -H "X-U2Serve-Task: mask"`). TorchServe 0.12 does not hand URL query
  parameters to handlers (pytorch/serve#989), so `?task=mask` cannot work.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from handler import oip, wire
from handler.errors import Code, U2ServeError

PROTO_KEY = "u2serve"
RAW_KEYS = ("body", "data")
HEADER_PREFIX = "x-u2serve-"


class Task(enum.IntEnum):
    MASK = 1
    CUTOUT = 2


@dataclass(frozen=True)
class Options:
    background: tuple[int, int, int] | None = None
    threshold: float | None = None
    crop: bool = False
    crop_margin: int = 0
    box_threshold: float = 0.5
    png_compression: int | None = None


@dataclass(frozen=True)
class SegmentRequest:
    task: Task
    image: bytes
    options: Options = field(default_factory=Options)
    protocol: str = "proto"  # "proto", "v2" or "raw"


def parse(row: Mapping[str, object], headers: Mapping[str, object] | None = None) -> SegmentRequest:
    """One TorchServe request row (input name -> bytes/str) and its HTTP headers as a SegmentRequest."""
    if PROTO_KEY in row:
        return _from_proto(_as_bytes(row[PROTO_KEY]))
    if (v2 := oip.request_body(row)) is not None:
        return _from_v2(v2)
    for key in RAW_KEYS:
        if key in row:
            return _from_raw(_as_bytes(row[key]), {**header_options(headers or {}), **row})
    names = ", ".join(sorted(row)) or "none"
    raise U2ServeError(
        f"no image in the request (inputs: {names}); send the image bytes as the body, "
        f"or a u2serve.v1.SegmentRequest under the input {PROTO_KEY!r}"
    )


def header_options(headers: Mapping[str, object]) -> dict[str, object]:
    """Options given as X-U2Serve-<Name> headers, keyed as form fields (X-U2Serve-Box-Threshold: box_threshold)."""
    return {
        k[len(HEADER_PREFIX) :].replace("-", "_").lower(): v
        for k, v in headers.items()
        if isinstance(k, str) and k.lower().startswith(HEADER_PREFIX) and isinstance(v, (str, bytes))
    }


def protocol_of(row: Mapping[str, object]) -> str:
    if PROTO_KEY in row:
        return "proto"
    return "v2" if oip.request_body(row) is not None else "raw"


def _from_v2(body: Mapping[str, object]) -> SegmentRequest:
    """A KServe v2 ModelInfer (handler/oip.py): the image tensor, with the task and options of an optional
    SegmentRequest tensor; the answer is a SegmentResponse, as for "proto"."""
    segment, image = oip.inputs(body)
    request = _from_proto(segment) if segment is not None else SegmentRequest(Task.CUTOUT, b"")
    return replace(request, image=image if image is not None else request.image, protocol="v2")


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    # TorchServe hands JSON bodies over already parsed; that is not an image.
    raise U2ServeError("the request body is JSON, not an image; send the image file's bytes")


def _from_proto(data: bytes) -> SegmentRequest:
    msg = wire.decode_request(data)
    task = _task(msg.get("task", 0))
    opts = msg.get("options", {})
    color = opts.get("background")
    options = Options(
        background=None if color is None else _rgb(color.get("r", 0), color.get("g", 0), color.get("b", 0)),
        threshold=_unit("threshold", opts["threshold"]) if "threshold" in opts else None,
        crop=bool(opts.get("crop", False)),
        crop_margin=int(opts.get("crop_margin", 0)),
        box_threshold=_unit("box_threshold", opts.get("box_threshold") or 0.5),
        png_compression=_level(opts["png_compression"]) if "png_compression" in opts else None,
    )
    return SegmentRequest(task, msg.get("image", b""), options, "proto")


def _task(value: int) -> Task:
    if value == 0:
        return Task.CUTOUT
    try:
        return Task(value)
    except ValueError:
        raise U2ServeError(f"unknown task {value}; accepted: 1 (MASK) or 2 (CUTOUT)") from None


_TASK_NAMES = {"mask": Task.MASK, "cutout": Task.CUTOUT}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _from_raw(image: bytes, row: Mapping[str, object]) -> SegmentRequest:
    params = {k: _as_text(v) for k, v in row.items() if k not in RAW_KEYS}
    task_name = params.get("task", "cutout").lower()
    if task_name not in _TASK_NAMES:
        raise U2ServeError(f"unknown task {task_name!r}; accepted: mask, cutout")
    options = Options(
        background=_color(params["background"]) if params.get("background") else None,
        threshold=_unit("threshold", _number("threshold", params["threshold"])) if "threshold" in params else None,
        crop=_flag("crop", params.get("crop", "false")),
        crop_margin=int(_number("margin", params.get("margin", "0"), integer=True)),
        box_threshold=_unit("box_threshold", _number("box_threshold", params.get("box_threshold", "0.5"))),
        png_compression=_level(int(_number("compression", params["compression"], integer=True)))
        if "compression" in params
        else None,
    )
    return SegmentRequest(_TASK_NAMES[task_name], image, options, "raw")


def _as_text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace").strip()
    return str(value).strip()


def _number(name: str, text: str, integer: bool = False) -> float:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise U2ServeError(f"{name}={text!r} is not {kind}") from None


def _flag(name: str, text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise U2ServeError(f"{name}={text!r}; accepted: true/false/1/0")


def _color(text: str) -> tuple[int, int, int]:
    """'#rrggbb', 'rrggbb' or 'r,g,b'."""
    t = text.strip().lstrip("#")
    try:
        if "," in t:
            parts = [int(p) for p in t.split(",")]
            if len(parts) == 3:
                return _rgb(*parts)
        elif len(t) == 6:
            return _rgb(int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16))
    except ValueError:
        pass
    raise U2ServeError(f"background={text!r}; accepted: '#rrggbb', 'rrggbb' or 'r,g,b' (0-255 each)")


def _rgb(r: int, g: int, b: int) -> tuple[int, int, int]:
    if not all(0 <= c <= 255 for c in (r, g, b)):
        raise U2ServeError(f"background ({r}, {g}, {b}) out of range; each component must be 0-255")
    return (int(r), int(g), int(b))


def _unit(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise U2ServeError(f"{name}={value} out of range; accepted: 0.0 to 1.0")
    return float(value)


def _level(value: int) -> int:
    if not 0 <= value <= 9:
        raise U2ServeError(f"png_compression={value} out of range; accepted: 0 (fastest) to 9 (smallest)")
    return int(value)


def error_reply(error: U2ServeError, protocol: str) -> bytes:
    """The reply body for a failed request in the caller's protocol."""
    if protocol in ("proto", "v2"):  # v2 wraps it in its JSON envelope later (handler/oip.py)
        return wire.encode_response({"error": {"code": int(error.code), "message": error.message}})
    return json.dumps({"code": error.code.http_status, "type": error.code.name, "message": error.message}).encode()


def internal_error(exc: BaseException) -> U2ServeError:
    return U2ServeError(f"internal error while serving the request: {type(exc).__name__}: {exc}", Code.INTERNAL)
