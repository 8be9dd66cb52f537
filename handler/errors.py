"""The handler layer's one exception type, carrying a google.rpc status code."""

from __future__ import annotations

import enum

from u2net_client._errors import U2NetError


class Code(enum.IntEnum):
    """google.rpc.Code numbers (the same as grpc.StatusCode values), with their HTTP twins."""

    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    INTERNAL = 13
    UNAVAILABLE = 14

    @property
    def http_status(self) -> int:
        return _HTTP[self]


_HTTP = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.RESOURCE_EXHAUSTED: 413,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
}


class U2ServeError(Exception):
    """A request the handler cannot serve; `code` says whose fault it is.

    Bad input, an image over the pixel limit included, is INVALID_ARGUMENT: the caller's fault,
    HTTP 400, never worth a retry. RESOURCE_EXHAUSTED and UNAVAILABLE mean "try later" and are
    left to overload; a fault of ours is INTERNAL.
    """

    def __init__(self, message: str, code: Code = Code.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        return f"U2ServeError({self.code.name}: {self.message})"


def from_sdk(exc: U2NetError) -> U2ServeError:
    """The handler's error for one the shared pipeline or options (u2net_client) raised, keeping its code."""
    code = exc.code.value[0]
    return U2ServeError(exc.message, Code(code) if code in Code._value2member_map_ else Code.INTERNAL)
