"""The wire protocols a client can speak, each as a plan for one segment call: which method, what message, and
how its reply becomes a typed result. The sync and asyncio clients only carry the plan out.

- "torchserve": TorchServe's own gRPC API (Predictions) with a SegmentRequest; the server does everything.
- "v2": the Open Inference Protocol (ModelInfer with the image as a BYTES tensor) to Triton's segment model
  or to TorchServe with `ts_open_inference_protocol=true`; the server does everything and answers a
  SegmentResponse.
- "triton": KServe v2 on Triton to the network model of `python -m handler.triton` (`<model>_network`); the
  client decodes, preprocesses and postprocesses with u2serve.core.imaging (the server's own pipeline code),
  the server runs only the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic

import grpc

from u2net_client import _v2
from u2net_client._errors import U2NetError
from u2net_client._request import MASK, ResultT, build_request, parse_response
from u2net_client.options import Options
from u2serve.core import compose, imaging
from u2serve.core.image import ImageInput, image_bytes

PROTOCOLS = ("torchserve", "v2", "triton")
# The v2 service names to try, in order (u2net_client._v2.V2Stub): Triton's standard one, then TorchServe's.
_SERVICES = {
    "torchserve": (_v2.TORCHSERVE_SERVICE,),
    "v2": (_v2.TRITON_SERVICE, _v2.TORCHSERVE_SERVICE),
    "triton": (_v2.TRITON_SERVICE,),
}


@dataclass(frozen=True)
class SegmentCall(Generic[ResultT]):
    """One planned call: `method` of the TorchServe stub, or of the v2 stub when `v2`; `finish` reads the reply."""

    method: str
    v2: bool
    message: Any
    finish: Callable[[Any], ResultT]


class Protocol:
    """A protocol name, checked; plans segment calls in it."""

    def __init__(self, name: str) -> None:
        if name not in PROTOCOLS:
            raise U2NetError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"protocol={name!r}; accepted: 'torchserve' (TorchServe's gRPC API), 'v2' (the Open Inference "
                "Protocol of Triton or TorchServe) or 'triton' (KServe v2 tensors, pre/postprocessing on the client)",
            )
        self.name = name
        self.v2_services = _SERVICES[name]

    def v2_model(self, model: str) -> str:
        """The model that v2 readiness and metadata calls name: the network for protocol="triton"."""
        return _v2.network_model(model) if self.name == "triton" and model else model

    def segment(
        self,
        task: int,
        image: ImageInput,
        model: str,
        version: str | None,
        options: Options,
        max_bytes: int,
        result_type: type[ResultT],
    ) -> SegmentCall[ResultT]:
        data = image_bytes(image)
        options.check_task(task == MASK)
        if self.name == "torchserve":
            request = build_request(task, data, model, version, options, max_bytes)
            return SegmentCall("Predictions", False, request, lambda reply: parse_response(reply, model, result_type))
        if self.name == "v2":
            infer = _v2.segment_request(task, data, model, version, options, max_bytes)
            return SegmentCall(
                "ModelInfer",
                True,
                infer,
                lambda reply: parse_response(_v2.segment_payload(reply, model), model, result_type),
            )
        return _tensor_call(task, data, model, version, options, result_type)


def _tensor_call(
    task: int, data: bytes, model: str, version: str | None, options: Options, result_type: type[ResultT]
) -> SegmentCall[ResultT]:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    decoded = imaging.decode_image(data, imaging.DEFAULT_MAX_PIXELS)
    if (background := compose.decode_background(options, imaging.DEFAULT_MAX_PIXELS)) is not None:
        compose.check_background(background, options)
    timings["decode"] = _ms_since(start)
    start = time.perf_counter()
    request = _v2.tensor_request(
        imaging.preprocess([decoded.rgb], imaging.INPUT_SIZE, imaging.MEAN, imaging.STD),
        _v2.network_model(model),
        version,
    )
    timings["preprocess"] = _ms_since(start)

    def finish(reply: Any) -> ResultT:
        start = time.perf_counter()
        mask = imaging.masks_from_output(_v2.tensor_output(reply, model), [decoded.size])[0]
        result, box = compose.compose(decoded, mask, task == MASK, options, background)
        timings["postprocess"] = _ms_since(start)
        start = time.perf_counter()
        encoded = compose.encode(result, options)
        timings["encode"] = _ms_since(start)
        return result_type(
            png=encoded,
            model=model,
            model_version=reply.model_version,
            weights="",
            input_size=decoded.size,
            box=box,
            timings=timings,
            batch_size=0,
            media_type=options.media_type,
        )

    return SegmentCall("ModelInfer", True, request, finish)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
