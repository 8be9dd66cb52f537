"""The handler layer's one exception type, carrying a google.rpc status code."""

from __future__ import annotations

import enum


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
