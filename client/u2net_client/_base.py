"""What the sync and asyncio clients share: settings checked once, and every pure step of a call."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from u2net_client._auth import Credentials, Metadata
from u2net_client._errors import U2NetError, from_rpc_error
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
        triton: bool = False,
    ) -> None:
        if not target or not management_target:
            raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, "target and management_target must be host:port")
        if timeout is not None and timeout <= 0:
            raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, f"timeout={timeout}; must be > 0 seconds, or None")
        self.target = target
        self.management_target = management_target
        self.credentials = Credentials.resolve(token, management_token, key_file, triton=triton)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_send_bytes = max_send_bytes
        self.channel_options: Sequence[tuple[str, int | str]] = (
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

    def error_mapper(self, api: str, timeout: float | None) -> ErrorMapper:
        target = self.target if api == "inference" else self.management_target
        where = self.credentials.describe(api)

        def to_error(error: grpc.RpcError, attempts: int) -> U2NetError:
            return from_rpc_error(error, target=target, credentials=where, attempts=attempts, timeout=timeout)

        return to_error


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client's channels are secured: credentials (None: plaintext) and extra channel options."""

    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, str], ...] = ()


def channel_security(
    tls: bool,
    ca_file: str | os.PathLike[str] | None,
    root_certificates: bytes | None,
    tls_server_name: str | None,
    channel_credentials: grpc.ChannelCredentials | None,
) -> ChannelSecurity:
    """The channel security the client's TLS arguments ask for, checked.

    Raises:
        U2NetError: INVALID_ARGUMENT for arguments that contradict each other or a CA file that
            cannot be read.
    """
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    if channel_credentials is not None and (tls or ca_file is not None or root_certificates is not None):
        raise U2NetError(invalid, "give channel_credentials or tls=True (with ca_file=/root_certificates=), not both")
    if not tls and (ca_file is not None or root_certificates is not None):
        raise U2NetError(invalid, "ca_file= and root_certificates= apply to TLS: pass tls=True as well")
    if ca_file is not None and root_certificates is not None:
        raise U2NetError(invalid, "give ca_file= or root_certificates=, not both")
    if tls_server_name is not None and not (tls or channel_credentials is not None):
        raise U2NetError(invalid, "tls_server_name= applies to TLS: pass tls=True as well")
    options = (("grpc.ssl_target_name_override", tls_server_name),) if tls_server_name else ()
    if channel_credentials is not None:
        return ChannelSecurity(channel_credentials, options)
    if not tls:
        return ChannelSecurity(None)
    if ca_file is not None:
        root_certificates = _read_ca_file(Path(ca_file).expanduser())
    # None: the system's trusted roots (or $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH).
    return ChannelSecurity(grpc.ssl_channel_credentials(root_certificates=root_certificates), options)


def _read_ca_file(path: Path) -> bytes:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise U2NetError(grpc.StatusCode.INVALID_ARGUMENT, f"ca_file={str(path)!r}: {exc.strerror}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise U2NetError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"ca_file={str(path)!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        )
    return pem


def healthy(health_json: str) -> bool:
    """Whether TorchServe's Ping answer says "Healthy"."""
    try:
        return json.loads(health_json).get("status") == "Healthy"
    except (ValueError, AttributeError):
        return False
