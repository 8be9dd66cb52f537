"""KServe v2 (Open Inference Protocol) over gRPC: TorchServe's OIP service and Triton's share one message set.

TorchServe 0.12 names its service `org.pytorch.serve.grpc.openinference.GRPCInferenceService`, Triton
`inference.GRPCInferenceService`; the messages are the same on the wire, so one generated module
(open_inference_grpc_pb2) and a stub bound to either service name serve both. With protocol="v2" the
stub finds out which server it talks to: it calls the standard name first and keeps TorchServe's once
the server answers UNIMPLEMENTED.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from u2net_client._errors import U2NetError
from u2net_client.options import Options
from u2serve.core._generated import inference_pb2, u2serve_pb2
from u2serve.core._generated import open_inference_grpc_pb2 as pb

TORCHSERVE_SERVICE = "org.pytorch.serve.grpc.openinference.GRPCInferenceService"
TRITON_SERVICE = "inference.GRPCInferenceService"
# What handler/codec.py (V2Codec) reads and writes on TorchServe.
IMAGE_INPUT = "image"
REQUEST_INPUT = "u2serve"
RESPONSE_OUTPUT = "u2serve"
# The tensor names of the Triton export (handler/triton.py): libtorch's positional naming.
TENSOR_INPUT = "INPUT__0"
TENSOR_OUTPUT = "OUTPUT__0"
# On Triton, model "u2netp" is the segment model (protocol="v2") and "u2netp_network" the network alone,
# which protocol="triton" feeds with tensors (handler/triton.py).
NETWORK_SUFFIX = "_network"


def network_model(model: str) -> str:
    """The Triton model that runs `model`'s network alone."""
    return model if model.endswith(NETWORK_SUFFIX) else f"{model}{NETWORK_SUFFIX}"


class V2Stub:
    """The v2 service's calls on a sync or asyncio channel, under the first of `services` the server implements.

    Each call tries the service name in use; on UNIMPLEMENTED it moves to the next name for good (so a
    client of protocol="v2" reaches Triton's standard service and TorchServe's own alike).
    """

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel, services: tuple[str, ...]) -> None:
        self._services = services
        self._current = 0
        self._aio = isinstance(channel, grpc.aio.Channel)
        self._channel = channel
        self.ServerLive = self._method("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse)
        self.ServerReady = self._method("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse)
        self.ModelReady = self._method("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse)
        self.ModelMetadata = self._method("ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse)
        self.ModelInfer = self._method("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)

    @property
    def service(self) -> str:
        """The service name in use."""
        return self._services[self._current]

    @property
    def is_triton(self) -> bool:
        return self.service == TRITON_SERVICE

    def _method(self, name: str, request_type: Any, response_type: Any) -> Any:
        calls = [
            self._channel.unary_unary(
                f"/{service}/{name}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            for service in self._services
        ]

        def call_sync(request: Any, **kwargs: Any) -> Any:
            while True:
                index = self._current
                try:
                    return calls[index](for_service(request, self._services[index]), **kwargs)
                except grpc.RpcError as exc:
                    if not self._next_service(exc, index):
                        raise

        async def call_aio(request: Any, **kwargs: Any) -> Any:
            while True:
                index = self._current
                try:
                    return await calls[index](for_service(request, self._services[index]), **kwargs)
                except grpc.RpcError as exc:
                    if not self._next_service(exc, index):
                        raise

        return call_aio if self._aio else call_sync

    def _next_service(self, error: grpc.RpcError, index: int) -> bool:
        """Whether `error` says the service name `index` is unknown there and another is left to try."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code != grpc.StatusCode.UNIMPLEMENTED or index + 1 >= len(self._services):
            return False
        self._current = max(self._current, index + 1)
        return True


def for_service(request: Any, service: str) -> Any:
    """`request` as `service` takes it: TorchServe's handler reads each BYTES input as shape [1], while
    Triton's segment model batches, so its inputs carry the batch dimension: [1, 1]."""
    if service != TORCHSERVE_SERVICE or not isinstance(request, pb.ModelInferRequest):
        return request
    if not any(t.datatype == "BYTES" and list(t.shape) == [1, 1] for t in request.inputs):
        return request
    adapted = pb.ModelInferRequest()
    adapted.CopyFrom(request)
    for tensor in adapted.inputs:
        if tensor.datatype == "BYTES":
            tensor.shape[:] = [1]
    return adapted


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model, as v2 metadata describes it; -1 in `shape` is any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """A model as the v2 ModelMetadata call describes it (TorchServe leaves platform and tensors empty)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def metadata_from(reply: pb.ModelMetadataResponse) -> ModelMetadata:
    def specs(tensors: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in tensors)

    return ModelMetadata(reply.name, tuple(reply.versions), reply.platform, specs(reply.inputs), specs(reply.outputs))


def _bytes_input(name: str, value: bytes) -> pb.ModelInferRequest.InferInputTensor:
    # A batch of one (Triton's segment model batches); for_service reshapes it for TorchServe.
    return pb.ModelInferRequest.InferInputTensor(
        name=name, datatype="BYTES", shape=[1, 1], contents=pb.InferTensorContents(bytes_contents=[value])
    )


def segment_request(
    task: int, image: bytes, model: str, version: str | None, options: Options, max_bytes: int
) -> pb.ModelInferRequest:
    """A ModelInfer for u2serve's handler on TorchServe: the image file and a SegmentRequest with the options.

    Raises:
        U2NetError: INVALID_ARGUMENT for an empty model name or image, a bad option, or an image over the limit.
    """
    _check(model, image, max_bytes)
    segment = u2serve_pb2.SegmentRequest(task=task, options=options.to_proto()).SerializeToString()
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version or "",
        inputs=[_bytes_input(IMAGE_INPUT, image), _bytes_input(REQUEST_INPUT, segment)],
    )


def _check(model: str, image: bytes, max_bytes: int) -> None:
    if not model:
        raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, "model is empty; name a served model, e.g. 'u2netp'")
    if not image:
        raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, "the image is empty (0 bytes)")
    if len(image) > max_bytes:
        raise U2NetError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the image is {len(image)} bytes, over the server's request limit of {max_bytes} bytes; "
            "send a smaller or more compressed image",
        )


def segment_payload(reply: pb.ModelInferResponse, model: str) -> inference_pb2.PredictionResponse:
    """The SegmentResponse in a v2 reply, as the PredictionResponse `parse_response` reads.

    TorchServe answers in `contents.bytes_contents`, Triton in `raw_output_contents`.
    """
    tensor = _output(reply, RESPONSE_OUTPUT, model)
    element = list(tensor.contents.bytes_contents) or _raw_bytes(reply, RESPONSE_OUTPUT, model)
    if len(element) != 1:
        raise U2NetError(
            grpc.StatusCode.INTERNAL, f"{model}'s {RESPONSE_OUTPUT!r} output holds {len(element)} elements"
        )
    raw = element[0]
    if raw[:1] == b'"':
        # TorchServe hands back a BYTES element as the JSON text of the handler's base64 string.
        try:
            raw = base64.b64decode(json.loads(raw), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise U2NetError(grpc.StatusCode.INTERNAL, f"{model}'s output is not base64 in JSON: {exc}") from exc
    return inference_pb2.PredictionResponse(prediction=raw)


def _raw_bytes(reply: pb.ModelInferResponse, name: str, model: str) -> list[bytes]:
    """The elements of a BYTES output in raw_output_contents: each a 4-byte little-endian length, then the bytes."""
    index = next(i for i, t in enumerate(reply.outputs) if t.name == name)
    if index >= len(reply.raw_output_contents):
        return []
    raw, elements, offset = reply.raw_output_contents[index], [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        if offset + 4 + size > len(raw):
            raise U2NetError(grpc.StatusCode.INTERNAL, f"{model}'s {name!r} output is cut short at byte {offset}")
        elements.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return elements


def _output(reply: pb.ModelInferResponse, name: str, model: str) -> pb.ModelInferResponse.InferOutputTensor:
    for tensor in reply.outputs:
        if tensor.name == name:
            return tensor
    found = ", ".join(t.name for t in reply.outputs) or "none"
    raise U2NetError(grpc.StatusCode.INTERNAL, f"{model} answered without the output {name!r} (outputs: {found})")


def tensor_request(batch: np.ndarray, model: str, version: str | None) -> pb.ModelInferRequest:
    """A ModelInfer of the preprocessed (N, 3, S, S) batch for the Triton export, in raw little-endian FP32."""
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version or "",
        inputs=[pb.ModelInferRequest.InferInputTensor(name=TENSOR_INPUT, datatype="FP32", shape=list(batch.shape))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=TENSOR_OUTPUT)],
        raw_input_contents=[np.ascontiguousarray(batch, dtype="<f4").tobytes()],
    )


def tensor_output(reply: pb.ModelInferResponse, model: str) -> np.ndarray:
    """d0 from a Triton reply: raw_output_contents (Triton's way) or fp32_contents."""
    index = next((i for i, t in enumerate(reply.outputs) if t.name == TENSOR_OUTPUT), None)
    tensor = _output(reply, TENSOR_OUTPUT, model)
    shape = tuple(int(d) for d in tensor.shape)
    if tensor.datatype != "FP32":
        raise U2NetError(grpc.StatusCode.INTERNAL, f"{model}'s {TENSOR_OUTPUT} is {tensor.datatype}, expected FP32")
    if index is not None and index < len(reply.raw_output_contents):
        values = np.frombuffer(reply.raw_output_contents[index], dtype="<f4")
    else:
        values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise U2NetError(grpc.StatusCode.INTERNAL, f"{model}'s {TENSOR_OUTPUT} has {values.size} values for {shape}")
    return values.reshape(shape)
