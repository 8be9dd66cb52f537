"""Building SegmentRequests and reading SegmentResponses: the protocol, shared by both clients."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from u2net_client._errors import U2NetError, status_code
from u2net_client._types import Box, CutoutResult, MaskResult
from u2net_client.options import Options
from u2serve.core._generated import inference_pb2, u2serve_pb2

ResultT = TypeVar("ResultT", MaskResult, CutoutResult)
MASK = u2serve_pb2.MASK
CUTOUT = u2serve_pb2.CUTOUT

# The input name the handler reads a serialised SegmentRequest from.
PROTO_KEY = "u2serve"


def _invalid(message: str) -> U2NetError:
    return U2NetError(grpc.StatusCode.INVALID_ARGUMENT, message)


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
        background = options.background_bytes
        what = f"the image is {len(image)} bytes" + (
            f" and the background image {len(background)} bytes" if background else ""
        )
        raise _invalid(
            f"{what}, over the server's request limit of {max_bytes} bytes "
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
        media_type=msg.media_type or "image/png",
    )
