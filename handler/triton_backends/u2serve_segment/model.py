"""u2serve's segment model on Triton: a Python-based backend, thin glue between Triton and handler.pipeline.

The same product as the TorchServe handler: each request carries the encoded image ("image", BYTES [1])
and optionally a serialised u2serve.v1.SegmentRequest ("u2serve", BYTES [1]) with the task and options;
the answer is a serialised SegmentResponse ("u2serve", BYTES [1]). Parsing and the reply are
handler.codec's (the v2 codec's), decoding to composing handler.pipeline's, unchanged. Triton's dynamic
batcher hands `execute` a batch of requests; the network runs once per batch in the model named by the
`network` parameter (`<model>_network`: libtorch on a GPU, the u2serve_torchscript stand-in on a CPU),
called by BLS. A request's failure is its own: Triton answers it with its status code (INVALID_ARGUMENT
for a bad image or option), its batch-mates are served.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

# tools/triton.py (and docker/triton.Dockerfile) put the handler package beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from handler import codec
from handler.model import VARIANTS
from handler.pipeline import Outcome, Segmenter, SegmentRequest
from handler.settings import DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION
from handler.triton import instance_threads
from u2serve.core.errors import Code, CoreError, invalid

NETWORK_INPUT, NETWORK_OUTPUT = "INPUT__0", "OUTPUT__0"
# Triton's error codes by name: the stub binds pb_utils.TritonError only once the model runs, not at import.
_TRITON_CODE = {
    Code.INVALID_ARGUMENT: "INVALID_ARG",
    Code.NOT_FOUND: "NOT_FOUND",
    Code.RESOURCE_EXHAUSTED: "UNAVAILABLE",
    Code.INTERNAL: "INTERNAL",
    Code.UNAVAILABLE: "UNAVAILABLE",
}


class TritonPythonModel:
    """One segment model instance: parse, Segmenter.run, reply."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.network = params["network"]
        self.served = codec.Served(args["model_name"], args["model_version"], params.get("weights", ""))
        # The handler's threads on a CPU repository (both for torch and the pixel work around the network); 1 on a GPU.
        threads = instance_threads(config)
        torch.set_num_threads(threads)
        self.segmenter = Segmenter(
            self._run_network,
            VARIANTS[params["variant"]],
            torch.device("cpu"),
            int(params.get("max_pixels", DEFAULT_MAX_PIXELS)),
            int(params.get("png_compression", DEFAULT_PNG_COMPRESSION)),
            threads=threads,
        )

    def execute(self, triton_requests: list[Any]) -> list[Any]:
        outcomes, stats = self.segmenter.run([_parse(r) for r in triton_requests])
        return [self._reply(out, stats.requests) for out in outcomes]

    def _reply(self, out: Outcome, batch_size: int) -> Any:
        if out.error is not None:
            code = getattr(pb_utils.TritonError, _TRITON_CODE.get(out.error.code, "INTERNAL"))
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(out.error.message, code))
        payload = codec.segment_response(out, self.served, batch_size)
        return pb_utils.InferenceResponse([pb_utils.Tensor(codec.V2_OUTPUT, np.array([[payload]], dtype=np.object_))])

    def _run_network(self, batch: torch.Tensor) -> torch.Tensor:
        """d0 of a preprocessed batch, from the network model (BLS); a failure is the pipeline's INTERNAL."""
        call = pb_utils.InferenceRequest(
            model_name=self.network,
            inputs=[pb_utils.Tensor(NETWORK_INPUT, batch.numpy())],
            requested_output_names=[NETWORK_OUTPUT],
        )
        reply = call.exec()
        if reply.has_error():
            raise RuntimeError(f"the network model {self.network} failed: {reply.error().message()}")
        return torch.from_numpy(pb_utils.get_output_tensor_by_name(reply, NETWORK_OUTPUT).as_numpy())


def _parse(request: Any) -> SegmentRequest | CoreError:
    try:
        return codec.from_v2_inputs(_one(request, codec.V2_REQUEST_INPUT), _one(request, codec.V2_IMAGE_INPUT))
    except CoreError as exc:
        return exc


def _one(request: Any, name: str) -> bytes | None:
    """The one BYTES element of input `name`, or None when the request lacks it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1 or not isinstance(values[0], bytes):
        raise invalid(f"input {name!r} must hold one BYTES element (shape [1, 1]), got {values.size}")
    return values[0]
