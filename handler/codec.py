"""One codec per protocol: a TorchServe request row in, a `SegmentRequest` (or its error) out; an `Outcome`
in, the reply out. Each protocol is worked out once per row (`for_row`) and its codec travels with the row.

- proto: the SDK sends a serialised u2serve.v1.SegmentRequest under the input "u2serve" and gets a
  serialised SegmentResponse back (errors inside it: TorchServe's gRPC path loses per-request status
  codes in a batch). Parsed and written by the protobuf runtime with the SDK's generated classes.
- v2: a KServe v2 ModelInfer through TorchServe's Open Inference Protocol. TorchServe hands the worker
  the request as JSON under "body":
  {"id": "...", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}, ...]}
  (only contents.bytes_contents survive, as base64; raw_input_contents and parameters are dropped).
  Inputs: "image" (the encoded file) and optionally "u2serve" (a serialised SegmentRequest with the task
  and options; its image may be empty). The reply is the v2 JSON whose BYTES output "u2serve" holds the
  serialised SegmentResponse; TorchServe turns it back into a ModelInferResponse.
- raw: REST or any caller sending the bare image as "body"/"data"; the reply is the image itself (its
  Content-Type the media type), an error a JSON body with its HTTP status. Options come as multipart form
  fields (`curl -F data=@photo.jpg -F task=mask`) or `X-U2Serve-<Option>` headers (`curl -T photo.jpg
  -H "X-U2Serve-Task: mask"`); the background image only as a multipart file field
  (`-F background_image=@beach.jpg`).
  TorchServe 0.12 does not hand URL query parameters to handlers (pytorch/serve#989).
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from handler.errors import http_status
from handler.pipeline import Batch, Outcome, SegmentRequest, Task
from u2serve.core._generated import u2serve_pb2
from u2serve.core.errors import CoreError, invalid
from u2serve.core.options import Options

PROTO_KEY = "u2serve"
RAW_KEYS = ("body", "data")
HEADER_PREFIX = "x-u2serve-"
V2_IMAGE_INPUT = "image"
V2_REQUEST_INPUT = "u2serve"
V2_OUTPUT = "u2serve"
BACKGROUND_FIELD = "background_image"  # REST: the multipart file field of the background image
_TASK_NAMES = {"mask": Task.MASK, "cutout": Task.CUTOUT}


@dataclass(frozen=True)
class Served:
    """Who answered: what every SegmentResponse says about the model."""

    model_name: str
    model_version: str
    weights: str


@dataclass(frozen=True)
class Reply:
    """One row's answer: the body, and for the raw protocol its HTTP status and content type."""

    body: bytes | str
    http_status: int | None = None
    content_type: str | None = None


class Codec(abc.ABC):
    """The protocol of one row."""

    name: str

    def request(self) -> SegmentRequest | CoreError:
        """The row's request, or the error it earned (checked here, once)."""
        try:
            return self.parse()
        except CoreError as exc:
            return exc

    @abc.abstractmethod
    def parse(self) -> SegmentRequest:
        """Raises CoreError for a row that is not a valid request."""

    @abc.abstractmethod
    def reply(self, outcome: Outcome, served: Served, batch_size: int) -> Reply:
        """The row's answer for what the pipeline made of it."""


@dataclass
class Pending:
    """A batch between TorchServe's stages, with each row's codec (its protocol, worked out once)."""

    codecs: list[Codec]
    batch: Batch


def for_row(row: Mapping[str, object], headers: Mapping[str, object] | None = None) -> Codec:
    """The codec of a TorchServe request row (input name -> bytes/str/parsed JSON) and its HTTP headers."""
    if PROTO_KEY in row:
        return ProtoCodec(row[PROTO_KEY])
    body = row.get("body")
    if isinstance(body, Mapping) and isinstance(body.get("inputs"), list):
        return V2Codec(body)
    return RawCodec(row, headers or {})


# ---- proto ---------------------------------------------------------------------------------------


def parse_segment_request(data: bytes, image: bytes | None = None) -> SegmentRequest:
    """A serialised u2serve.v1.SegmentRequest as the pipeline's request; `image` replaces its image.

    Fields this server does not know are skipped, as protobuf does: a newer client stays understood.
    """
    try:
        msg = u2serve_pb2.SegmentRequest.FromString(data)
    except DecodeError as exc:
        raise invalid(
            f"the {PROTO_KEY!r} input is not a serialised u2serve.v1.SegmentRequest ({exc}); "
            "build it with the u2net_client SDK or protoc's classes for protos/u2serve.proto"
        ) from exc
    try:
        task = Task(msg.task or Task.CUTOUT)
    except ValueError:
        raise invalid(f"unknown task {msg.task}; accepted: 1 (MASK) or 2 (CUTOUT)") from None
    options = Options.from_proto(msg.options)
    options.check_task(task == Task.MASK)
    return SegmentRequest(task, msg.image if image is None else image, options)


def segment_response(outcome: Outcome, served: Served, batch_size: int) -> bytes:
    """The serialised u2serve.v1.SegmentResponse for an outcome: the image and its metadata, or the error."""
    if outcome.error is not None:
        error = u2serve_pb2.Error(code=int(outcome.error.code), message=outcome.error.message)
        return u2serve_pb2.SegmentResponse(error=error).SerializeToString()
    assert outcome.request is not None
    msg = u2serve_pb2.SegmentResponse(
        task=int(outcome.request.task),
        image=outcome.image,
        media_type=outcome.media_type,
        width=outcome.width,
        height=outcome.height,
        output_width=outcome.output_size[0],
        output_height=outcome.output_size[1],
        model_name=served.model_name,
        model_version=served.model_version,
        weights=served.weights,
        timings_ms=outcome.timings_ms,
        batch_size=batch_size,
    )
    if (box := outcome.box) is not None:
        msg.box.CopyFrom(u2serve_pb2.Box(x=box.x, y=box.y, width=box.width, height=box.height))
    return msg.SerializeToString()


class ProtoCodec(Codec):
    name = "proto"

    def __init__(self, payload: object) -> None:
        self.payload = payload

    def parse(self) -> SegmentRequest:
        return parse_segment_request(_as_bytes(self.payload))

    def reply(self, outcome: Outcome, served: Served, batch_size: int) -> Reply:
        return Reply(segment_response(outcome, served, batch_size))


# ---- v2 (Open Inference Protocol) ----------------------------------------------------------------


class V2Codec(Codec):
    name = "v2"

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.request_id = str(body.get("id") or "")  # the reply must echo it

    def parse(self) -> SegmentRequest:
        tensors = {t.get("name"): t for t in self.body["inputs"] if isinstance(t, Mapping)}
        unknown = sorted(str(n) for n in tensors if n not in (V2_IMAGE_INPUT, V2_REQUEST_INPUT))
        if unknown or not tensors:
            raise invalid(
                f"v2 inputs {unknown or 'none'}; accepted: {V2_IMAGE_INPUT!r} (BYTES [1], the image file) "
                f"and optionally {V2_REQUEST_INPUT!r} (BYTES [1], a serialised u2serve.v1.SegmentRequest)"
            )
        found = {name: _one_bytes(name, t) for name, t in tensors.items()}
        return from_v2_inputs(found.get(V2_REQUEST_INPUT), found.get(V2_IMAGE_INPUT))

    def reply(self, outcome: Outcome, served: Served, batch_size: int) -> Reply:
        payload = segment_response(outcome, served, batch_size)
        output = {
            "name": V2_OUTPUT,
            "datatype": "BYTES",
            "shape": [1],
            "data": [base64.b64encode(payload).decode("ascii")],
        }
        envelope = {
            "id": self.request_id,
            "model_name": served.model_name,
            "model_version": served.model_version,
            "outputs": [output],
        }
        return Reply(json.dumps(envelope))


def from_v2_inputs(segment: bytes | None, image: bytes | None) -> SegmentRequest:
    """The request of a v2 ModelInfer's two inputs (TorchServe's OIP rows here, Triton's segment model in
    handler/triton_backends): the image, with the task and options of the optional SegmentRequest."""
    if segment is not None:
        return parse_segment_request(segment, image)
    return SegmentRequest(Task.CUTOUT, image or b"")


def _one_bytes(name: str, tensor: Mapping[str, Any]) -> bytes:
    data = tensor.get("data")
    if tensor.get("datatype") != "BYTES" or not isinstance(data, list) or len(data) != 1:
        raise invalid(
            f"v2 input {name!r} must be one BYTES element (shape [1], in contents.bytes_contents; "
            f"TorchServe ignores raw_input_contents), got {tensor.get('datatype')} with "
            f"{len(data) if isinstance(data, list) else 0} elements"
        )
    try:
        return base64.b64decode(str(data[0]), validate=True)
    except binascii.Error as exc:
        raise invalid(f"v2 input {name!r} is not base64 as TorchServe forwards BYTES: {exc}") from exc


# ---- raw (REST) ----------------------------------------------------------------------------------


class RawCodec(Codec):
    name = "raw"

    def __init__(self, row: Mapping[str, object], headers: Mapping[str, object]) -> None:
        self.row = row
        self.headers = headers

    def parse(self) -> SegmentRequest:
        key = next((k for k in RAW_KEYS if k in self.row), None)
        if key is None:
            names = ", ".join(sorted(self.row)) or "none"
            raise invalid(
                f"no image in the request (inputs: {names}); send the image bytes as the body, "
                f"or a u2serve.v1.SegmentRequest under the input {PROTO_KEY!r}"
            )
        fields = {**header_options(self.headers), **{k: v for k, v in self.row.items() if k not in RAW_KEYS}}
        background = fields.pop(BACKGROUND_FIELD, None)
        params = {k: _as_text(v) for k, v in fields.items()}
        task_name = params.get("task", "cutout").lower()
        if task_name not in _TASK_NAMES:
            raise invalid(f"unknown task {task_name!r}; accepted: mask, cutout")
        options = Options.from_fields(params, _background_file(background))
        options.check_task(_TASK_NAMES[task_name] == Task.MASK)
        return SegmentRequest(_TASK_NAMES[task_name], _as_bytes(self.row[key]), options)

    def reply(self, outcome: Outcome, served: Served, batch_size: int) -> Reply:
        if (error := outcome.error) is not None:
            status = http_status(error.code)
            body = json.dumps({"code": status, "type": error.code.name, "message": error.message})
            return Reply(body.encode(), status, "application/json")
        return Reply(outcome.image, None, outcome.media_type)


def _background_file(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise invalid(
        f"{BACKGROUND_FIELD} must be a file: send it as a multipart form field "
        f"(curl -F data=@photo.jpg -F {BACKGROUND_FIELD}=@beach.jpg), not as a header or text"
    )


def header_options(headers: Mapping[str, object]) -> dict[str, object]:
    """Options given as X-U2Serve-<Name> headers, keyed as form fields (X-U2Serve-Box-Threshold: box_threshold)."""
    return {
        k[len(HEADER_PREFIX) :].replace("-", "_").lower(): v
        for k, v in headers.items()
        if isinstance(k, str) and k.lower().startswith(HEADER_PREFIX) and isinstance(v, (str, bytes))
    }


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    # TorchServe hands JSON bodies over already parsed; that is not an image.
    raise invalid("the request body is JSON, not an image; send the image file's bytes")


def _as_text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace").strip()
    return str(value).strip()
