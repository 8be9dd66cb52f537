"""What the sync and asyncio clients share: settings checked once, and every pure step of a call."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import grpc

from u2net_client._auth import Credentials, Metadata
from u2net_client._errors import U2NetError, from_rpc_error
from u2net_client._generated import inference_pb2
from u2net_client._image import ImageInput, image_bytes
from u2net_client._request import Options, build_request
from u2net_client._retry import ErrorMapper, RetryPolicy

DEFAULT_TARGET = "127.0.0.1:7070"
DEFAULT_MANAGEMENT_TARGET = "127.0.0.1:7071"
DEFAULT_TIMEOUT = 60.0
# The server's max_request_size / max_response_size (config.properties): a 6 MP JPEG upload fits in
# 32 MiB, a 6 MP RGBA cutout PNG in 64 MiB.
MAX_SEND_BYTES = 32 * 1024 * 1024
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


class ClientSettings:
    """Targets, keys, limits and retry policy of a client; the transport is the subclass's business."""

    def __init__(
        self,
        target: str,
        management_target: str,
        token: str | None,
        management_token: str | None,
        key_file: str | os.PathLike[str] | None,
        timeout: float | None,
        retry: RetryPolicy | None,
        max_send_bytes: int,
        max_receive_bytes: int,
    ) -> None:
        if not target or not management_target:
            raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, "target and management_target must be host:port")
        if timeout is not None and timeout <= 0:
            raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, f"timeout={timeout}; must be > 0 seconds, or None")
        self.target = target
        self.management_target = management_target
        self.credentials = Credentials.resolve(token, management_token, key_file)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_send_bytes = max_send_bytes
        self.channel_options: Sequence[tuple[str, int]] = (
            ("grpc.max_send_message_length", max_send_bytes),
            ("grpc.max_receive_message_length", max_receive_bytes),
            # Reconnect soon after the server comes back, so retries find it; gRPC's default waits 1-120 s.
            # (Not grpc.min_reconnect_backoff_ms: that is also the connect timeout, 20 s by default, and
            # a fresh TorchServe can take a few hundred ms to send its first HTTP/2 SETTINGS frame.)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        )

    def deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def metadata(self, api: str) -> Metadata:
        return self.credentials.metadata(api)

    def segment_request(
        self, task: int, image: ImageInput, model: str, version: str | None, options: Options
    ) -> inference_pb2.PredictionsRequest:
        return build_request(task, image_bytes(image), model, version, options, self.max_send_bytes)

    def error_mapper(self, api: str, timeout: float | None) -> ErrorMapper:
        target = self.target if api == "inference" else self.management_target
        where = self.credentials.describe(api)

        def to_error(error: grpc.RpcError, attempts: int) -> U2NetError:
            return from_rpc_error(error, target=target, credentials=where, attempts=attempts, timeout=timeout)

        return to_error


def healthy(health_json: str) -> bool:
    """Whether TorchServe's Ping answer says "Healthy"."""
    try:
        return json.loads(health_json).get("status") == "Healthy"
    except (ValueError, AttributeError):
        return False
