"""One key per deployment: the app accepts TorchServe's current inference key, however it is sent."""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.requests import HTTPConnection

from u2net_client.connection import parse_key_file

COOKIE = "u2serve_token"


class KeyUnavailable(Exception):
    """The key file cannot be read: the app cannot tell a good token from a bad one (503)."""


class InferenceKey:
    """TorchServe's inference key from its key file, re-read whenever the file changes (a rotation)."""

    def __init__(self, key_file: Path) -> None:
        self._path = key_file
        self._seen: tuple[int, int] | None = None
        self._key = ""

    def current(self) -> str:
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._seen:
                key = parse_key_file(self._path.read_text()).get("inference", "")
                self._seen, self._key = stamp, key
        except (OSError, ValueError) as exc:
            raise KeyUnavailable(f"cannot read TorchServe's key file {self._path}: {exc}") from exc
        if not self._key:
            raise KeyUnavailable(f"TorchServe's key file {self._path} has no inference key")
        return self._key

    def accepts(self, token: str | None) -> bool:
        """Whether `token` is the current key, compared in constant time."""
        return bool(token) and hmac.compare_digest(token.encode(), self.current().encode())  # type: ignore[union-attr]


def presented(conn: HTTPConnection) -> str | None:
    """The token a request carries: `Authorization: Bearer`, `X-Api-Key` (rembg clients), or the page's cookie."""
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return conn.headers.get("x-api-key") or conn.cookies.get(COOKIE) or None
