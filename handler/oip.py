"""Open Inference Protocol (KServe v2) rows: what TorchServe's gRPC ModelInfer hands the handler, and its reply.

With `ts_open_inference_protocol=true`, TorchServe 0.12 serves `GRPCInferenceService` on the gRPC
inference port. Its ModelInfer turns the request into JSON (content type application/json, which
the worker parses) under the input "body":

    {"id": "...", "model_name": "u2netp",
     "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}, ...]}

Only `contents.bytes_contents` survive as base64 strings (and the numeric contents as numbers);
`raw_input_contents` and request parameters are dropped. The handler must answer with the JSON of
a v2 response, which TorchServe turns back into a ModelInferResponse; a BYTES output comes back
as the JSON text of each element (a quoted base64 string).

The inputs u2serve reads: "image" (BYTES, shape [1]: the encoded image file) and, optionally,
"u2serve" (BYTES, shape [1]: a serialised u2serve.v1.SegmentRequest with the task and options;
its image may be left empty). The output "u2serve" holds the serialised SegmentResponse.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from handler.errors import U2ServeError

IMAGE_INPUT = "image"
REQUEST_INPUT = "u2serve"
OUTPUT = "u2serve"


def request_body(row: Mapping[str, object]) -> Mapping[str, Any] | None:
    """The parsed v2 request of a row, or None when the row is not one."""
    body = row.get("body")
    if isinstance(body, Mapping) and isinstance(body.get("inputs"), list):
        return body
    return None


def request_id(row: Mapping[str, object]) -> str:
    """The v2 request's id ("" when absent or not a v2 row): the reply must echo it."""
    body = request_body(row)
    return str(body.get("id") or "") if body is not None else ""


def inputs(body: Mapping[str, Any]) -> tuple[bytes | None, bytes | None]:
    """(serialised SegmentRequest or None, image bytes or None) from a v2 request."""
    tensors = {t.get("name"): t for t in body["inputs"] if isinstance(t, Mapping)}
    unknown = sorted(str(n) for n in tensors if n not in (IMAGE_INPUT, REQUEST_INPUT))
    if unknown or not tensors:
        raise U2ServeError(
            f"v2 inputs {unknown or 'none'}; accepted: {IMAGE_INPUT!r} (BYTES [1], the image file) "
            f"and optionally {REQUEST_INPUT!r} (BYTES [1], a serialised u2serve.v1.SegmentRequest)"
        )
    found = {name: _one_bytes(name, tensors[name]) for name in (REQUEST_INPUT, IMAGE_INPUT) if name in tensors}
    return found.get(REQUEST_INPUT), found.get(IMAGE_INPUT)


def _one_bytes(name: str, tensor: Mapping[str, Any]) -> bytes:
    data = tensor.get("data")
    if tensor.get("datatype") != "BYTES" or not isinstance(data, list) or len(data) != 1:
        raise U2ServeError(
            f"v2 input {name!r} must be one BYTES element (shape [1], in contents.bytes_contents; "
            f"TorchServe ignores raw_input_contents), got {tensor.get('datatype')} with "
            f"{len(data) if isinstance(data, list) else 0} elements"
        )
    try:
        return base64.b64decode(str(data[0]), validate=True)
    except binascii.Error as exc:
        raise U2ServeError(f"v2 input {name!r} is not base64 as TorchServe forwards BYTES: {exc}") from exc


def reply(payload: bytes, request_id: str, model_name: str, model_version: str) -> str:
    """The v2 response JSON carrying `payload` (a serialised SegmentResponse) as the BYTES output."""
    output: dict[str, Any] = {
        "name": OUTPUT,
        "datatype": "BYTES",
        "shape": [1],
        "data": [base64.b64encode(payload).decode("ascii")],
    }
    return json.dumps({"id": request_id, "model_name": model_name, "model_version": model_version, "outputs": [output]})
