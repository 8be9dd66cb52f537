"""models() and describe() on a Triton server: its RepositoryIndex and ModelConfig as u2serve's ModelInfo.

Triton has no management API of TorchServe's kind; its repository index lists the models and each
model's config carries what describe() reports: the batching and instances Triton applies, and the
parameters handler/triton.py writes into a segment model (variant, weights, device, engine, max_pixels).
The networks (`<model>_network`) are listed by neither: the segment model is what callers name.
"""

from __future__ import annotations

from typing import Any

import grpc

from u2net_client._types import ModelInfo, WorkerInfo
from u2net_client._v2 import NETWORK_SUFFIX, TRITON_SERVICE
from u2serve.core._generated import triton_repository_pb2 as pb

READY = "READY"


class RepositoryStub:
    """Triton's RepositoryIndex and ModelConfig calls on a sync or asyncio channel."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        def method(name: str, request: Any, response: Any) -> Any:
            return channel.unary_unary(
                f"/{TRITON_SERVICE}/{name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )

        self.RepositoryIndex = method("RepositoryIndex", pb.RepositoryIndexRequest, pb.RepositoryIndexResponse)
        self.ModelConfig = method("ModelConfig", pb.ModelConfigRequest, pb.ModelConfigResponse)


def index_request() -> pb.RepositoryIndexRequest:
    return pb.RepositoryIndexRequest(ready=False)


def served_names(reply: pb.RepositoryIndexResponse) -> list[str]:
    """The segment models in a repository index, each once, in the index's order."""
    names: list[str] = []
    for entry in reply.models:
        if not entry.name.endswith(NETWORK_SUFFIX) and entry.name not in names:
            names.append(entry.name)
    return names


def config_request(model: str, version: str | None) -> pb.ModelConfigRequest:
    return pb.ModelConfigRequest(name=model, version=version or "")


def model_info(config: pb.ModelConfig, version: str, ready: bool) -> ModelInfo:
    """A segment model's config (and whether Triton says it is ready) as ModelInfo.

    Each instance of its instance groups is a "worker": READY when the model is, else UNAVAILABLE.
    """
    params = {key: value.string_value for key, value in config.parameters.items()}
    workers = tuple(
        WorkerInfo(
            id=f"{group.name or config.name}_{i}",
            status=READY if ready else "UNAVAILABLE",
            pid=None,
            memory_bytes=0,
            gpu=group.kind == pb.ModelInstanceGroup.KIND_GPU,
        )
        for group in config.instance_group
        for i in range(max(group.count, 1))
    )
    weights = params.get("weights")
    max_pixels = params.get("max_pixels")
    return ModelInfo(
        name=config.name,
        version=version,
        url=f"triton:{config.backend or config.platform}",
        workers=workers,
        min_workers=len(workers),
        max_workers=len(workers),
        batch_size=max(config.max_batch_size, 1),
        max_batch_delay_ms=config.dynamic_batching.max_queue_delay_microseconds // 1000,
        weights=weights,
        weights_random=weights.startswith("random") if weights is not None else None,
        variant=params.get("variant"),
        device=params.get("device"),
        max_pixels=int(max_pixels) if max_pixels else None,
        engine=params.get("engine"),
    )
