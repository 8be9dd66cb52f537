"""The keys the app accepts, however they are sent: TorchServe's current inference key (one per deployment),
or the keys of a caller-keys file (a Kubernetes Secret's file: several during a rotation's overlap)."""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.requests import HTTPConnection

from u2net_client.connection import parse_key_file

COOKIE = "u2serve_token"


class KeyUnavailable(Exception):
    """The key file cannot be read: the app cannot tell a good token from a bad one (503)."""


class InferenceKey:
    """The accepted keys, from a file re-read whenever it changes (a rotation).

    Either TorchServe's key_file.json (its inference key; its `api` key), or with `caller_keys` a file of
    keys, one a line (blank lines and `#` comments skipped): a mounted Secret, which the kubelet updates in
    place. Safe to share between the event loop and threads.
    """

    def __init__(self, key_file: Path, caller_keys: bool = False, api: str = "inference") -> None:
        self._path = key_file
        self._caller_keys = caller_keys
        self._api = api  # the entry of TorchServe's key file: the gRPC front sends its management key upstream
        self._what = "the caller-keys file" if caller_keys else "TorchServe's key file"
        # (stamp, keys) in one attribute: the event loop and the gRPC front's threads read it at once, and
        # a single assignment never shows one file's stamp with another's keys.
        self._cache: tuple[tuple[int, int, int] | None, tuple[str, ...]] = (None, ())

    def current(self) -> tuple[str, ...]:
        try:
            stat = self._path.stat()
            # The inode too: the kubelet swaps a Secret's files in whole (a symlink to a new folder).
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp != self._cache[0]:
                text = self._path.read_text()
                keys = parse_caller_keys(text) if self._caller_keys else (parse_key_file(text).get(self._api, ""),)
                self._cache = (stamp, tuple(k for k in keys if k))
        except (OSError, ValueError) as exc:
            raise KeyUnavailable(f"cannot read {self._what} {self._path}: {exc}") from exc
        keys = self._cache[1]
        if not keys:
            what = "key" if self._caller_keys else f"{self._api} key"
            raise KeyUnavailable(f"{self._what} {self._path} has no {what}")
        return keys

    def accepts(self, token: str | None) -> bool:
        """Whether `token` is one of the current keys, each compared in constant time."""
        if not token:
            return False
        return any([hmac.compare_digest(token.encode(), key.encode()) for key in self.current()])  # all compared


def parse_caller_keys(text: str) -> tuple[str, ...]:
    """The keys of a caller-keys file: one a line, blank lines and `#` comments skipped."""
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def presented(conn: HTTPConnection) -> str | None:
    """The token a request carries: `Authorization: Bearer`, `X-Api-Key` (rembg clients), or the page's cookie."""
    header = bearer(conn.headers.get("authorization", ""))
    return header or conn.headers.get("x-api-key") or conn.cookies.get(COOKIE) or None


def bearer(header: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` value (HTTP header or gRPC metadata); None otherwise."""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
