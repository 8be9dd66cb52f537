"""Management API messages: requests checked before sending, TorchServe's JSON answers as ModelInfo."""

from __future__ import annotations

import json
from typing import Any

import grpc

from u2net_client._errors import U2NetError
from u2net_client._types import ModelInfo, WorkerInfo
from u2serve.core._generated import management_pb2

# ListModels answers nothing at all for limit=0; TorchServe caps a page at 100.
PAGE_SIZE = 100


def _invalid(message: str) -> U2NetError:
    return U2NetError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise U2NetError(grpc.StatusCode.INTERNAL, f"{what}: the server's answer is not JSON: {text[:200]!r}") from exc


def parse_model_list(text: str) -> tuple[list[str], int | None]:
    """Model names on one ListModels page, and the next page's token (None on the last page)."""
    raw = _json(text, "ListModels")
    names = [str(m["modelName"]) for m in raw.get("models", [])]
    token = raw.get("nextPageToken")
    return names, (int(token) if token not in (None, "") else None)


def parse_description(text: str) -> list[ModelInfo]:
    """ModelInfo for each version in a DescribeModel answer."""
    return [_model_info(entry) for entry in _json(text, "DescribeModel")]


def _model_info(entry: dict[str, Any]) -> ModelInfo:
    custom = entry.get("customizedMetadata") or {}
    if isinstance(custom, str):  # older TorchServe releases send the handler's JSON as a string
        custom = _json(custom, "customizedMetadata") if custom.strip().startswith("{") else {}
    workers = tuple(
        WorkerInfo(
            id=str(w.get("id", "")),
            status=str(w.get("status", "")),
            pid=w.get("pid"),
            memory_bytes=int(w.get("memoryUsage") or 0),
            gpu=bool(w.get("gpu", False)),
        )
        for w in entry.get("workers", [])
    )
    return ModelInfo(
        name=str(entry["modelName"]),
        version=str(entry.get("modelVersion", "")),
        url=str(entry.get("modelUrl", "")),
        workers=workers,
        min_workers=int(entry.get("minWorkers", 0)),
        max_workers=int(entry.get("maxWorkers", 0)),
        batch_size=int(entry.get("batchSize", 1)),
        max_batch_delay_ms=int(entry.get("maxBatchDelay", 0)),
        weights=custom.get("weights"),
        weights_random=custom.get("weights_random"),
        variant=custom.get("variant"),
        device=custom.get("device") or entry.get("deviceType"),
        max_pixels=custom.get("max_pixels"),
        engine=custom.get("engine"),
    )


def describe_request(model: str, version: str | None, handler: bool = True) -> management_pb2.DescribeModelRequest:
    _check_model(model)
    # customized=True asks the handler too (describe_handle): weights origin, variant, device. That goes through
    # a worker, behind its batch; without it the frontend answers alone (workers and their states).
    return management_pb2.DescribeModelRequest(model_name=model, model_version=version or "", customized=handler)


def scale_request(
    model: str, min_workers: int, max_workers: int | None, version: str | None, wait: bool, wait_s: float | None
) -> management_pb2.ScaleWorkerRequest:
    _check_model(model)
    max_workers = min_workers if max_workers is None else max_workers
    if not 0 <= min_workers <= max_workers:
        raise _invalid(f"min_workers={min_workers}, max_workers={max_workers}; need 0 <= min_workers <= max_workers")
    return management_pb2.ScaleWorkerRequest(
        model_name=model,
        model_version=version or "",
        min_worker=min_workers,
        max_worker=max_workers,
        synchronous=wait,
        # TorchServe's wait, in seconds; -1 waits as long as it takes (the call's deadline still applies).
        timeout=-1 if wait_s is None else max(1, round(wait_s)),
    )


def set_default_request(model: str, version: str) -> management_pb2.SetDefaultRequest:
    _check_model(model)
    if not version:
        raise _invalid("version is empty; name the version that should answer requests for this model")
    return management_pb2.SetDefaultRequest(model_name=model, model_version=version)


def register_request(
    mar: str,
    model: str | None,
    initial_workers: int,
    batch_size: int | None,
    max_batch_delay_ms: int | None,
    response_timeout_s: int | None,
    wait: bool,
) -> management_pb2.RegisterModelRequest:
    if not mar:
        raise _invalid("mar is empty; name an archive in the server's model store, e.g. 'u2netp.mar'")
    if initial_workers < 0:
        raise _invalid(f"initial_workers={initial_workers}; must be >= 0")
    request = management_pb2.RegisterModelRequest(
        url=mar, model_name=model or "", initial_workers=initial_workers, synchronous=wait
    )
    # Unset fields keep the archive's own model-config.yaml values.
    if batch_size is not None:
        request.batch_size = batch_size
    if max_batch_delay_ms is not None:
        request.max_batch_delay = max_batch_delay_ms
    if response_timeout_s is not None:
        request.response_timeout = response_timeout_s
    return request


def unregister_request(model: str, version: str | None) -> management_pb2.UnregisterModelRequest:
    _check_model(model)
    return management_pb2.UnregisterModelRequest(model_name=model, model_version=version or "")


def _check_model(model: str) -> None:
    if not model:
        raise _invalid("model is empty; name a served model, e.g. 'u2netp' or 'u2net'")
