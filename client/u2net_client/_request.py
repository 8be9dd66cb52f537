"""Building SegmentRequests and reading SegmentResponses: the protocol, shared by both clients."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from u2net_client._errors import U2NetError, status_code
from u2net_client._generated import inference_pb2, u2serve_pb2
from u2net_client._types import Box, CutoutResult, MaskResult

ResultT = TypeVar("ResultT", MaskResult, CutoutResult)
MASK = u2serve_pb2.MASK
CUTOUT = u2serve_pb2.CUTOUT

# The input name the handler reads a serialised SegmentRequest from.
PROTO_KEY = "u2serve"

Color = tuple[int, int, int] | str
"""A background colour: (r, g, b) with 0-255 components, "#rrggbb", "rrggbb", or "r,g,b"."""

_HEX = re.compile(r"#?([0-9a-fA-F]{6})")


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
    """Every option the handler knows, checked before anything is sent."""

    background: Color | None = None
    threshold: float | None = None
    crop: bool = False
    crop_margin: int = 0
    box_threshold: float | None = None
    png_compression: int | None = None

    def to_proto(self) -> u2serve_pb2.Options:
        msg = u2serve_pb2.Options(crop=bool(self.crop))
        if self.background is not None:
            r, g, b = parse_color(self.background)
            msg.background.CopyFrom(u2serve_pb2.Color(r=r, g=g, b=b))
        if self.threshold is not None:
            msg.threshold = _unit("threshold", self.threshold)
        if not isinstance(self.crop_margin, int) or self.crop_margin < 0:
            raise _invalid(f"crop_margin={self.crop_margin!r}; accepted: a whole number of pixels >= 0")
        msg.crop_margin = self.crop_margin
        if self.box_threshold is not None:
            # 0 on the wire means "the server default, 0.5"; a real 0 would box the whole image anyway.
            msg.box_threshold = _unit("box_threshold", self.box_threshold)
        if self.png_compression is not None:
            if not isinstance(self.png_compression, int) or not 0 <= self.png_compression <= 9:
                raise _invalid(f"png_compression={self.png_compression!r}; accepted: 0 (fastest) to 9 (smallest)")
            msg.png_compression = self.png_compression
        return msg


def _unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise _invalid(f"{name}={value!r}; accepted: a number from 0.0 to 1.0")
    return float(value)


def build_request(
    task: int, image: bytes, model: str, version: str | None, options: Options, max_bytes: int
) -> inference_pb2.PredictionsRequest:
    """The PredictionsRequest carrying one SegmentRequest; raises U2NetError INVALID_ARGUMENT on bad input."""
    if not model:
        raise _invalid("model is empty; name a served model, e.g. 'u2netp' or 'u2net'")
    if not image:
        raise _invalid("the image is empty (0 bytes)")
    segment = u2serve_pb2.SegmentRequest(task=task, image=image, options=options.to_proto())
    payload = segment.SerializeToString()
    if len(payload) > max_bytes:
        raise _invalid(
            f"the image is {len(image)} bytes, over the server's request limit of {max_bytes} bytes "
            "(max_request_size in config.properties); send a smaller or more compressed image"
        )
    return inference_pb2.PredictionsRequest(model_name=model, model_version=version or "", input={PROTO_KEY: payload})


def parse_response(reply: inference_pb2.PredictionResponse, model: str, result_type: type[ResultT]) -> ResultT:
    """The typed result in a PredictionResponse; raises the U2NetError the handler put in it."""
    try:
        msg = u2serve_pb2.SegmentResponse.FromString(reply.prediction)
    except DecodeError as exc:
        raise U2NetError(
            grpc.StatusCode.INTERNAL, f"{model} answered with something that is not a u2serve.v1.SegmentResponse"
        ) from exc
    if msg.HasField("error"):
        raise U2NetError(status_code(msg.error.code), msg.error.message)
    if not msg.image:
        raise U2NetError(grpc.StatusCode.INTERNAL, f"{model} answered without an image or an error")
    return result_type(
        png=msg.image,
        model=msg.model_name or model,
        model_version=msg.model_version,
        weights=msg.weights,
        input_size=(msg.width, msg.height),
        box=Box(msg.box.x, msg.box.y, msg.box.width, msg.box.height) if msg.HasField("box") else None,
        timings=dict(msg.timings_ms),
        batch_size=msg.batch_size,
    )
