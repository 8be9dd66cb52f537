"""The core's one exception type: a google.rpc status code and a message, with no transport imported.

The pixel pipeline and the options raise `CoreError`; the server answers with its `code` as it is, and
the SDK turns it into its own `U2NetError` (a subclass whose code is a `grpc.StatusCode`) at its boundary.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """The google.rpc.Code numbers (grpc.StatusCode's values, HTTP's twins in the handler and gateway)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class CoreError(Exception):
    """A request the core cannot serve; `code` says whose fault it is.

    Bad input (an unreadable or oversized image, an option out of range) is INVALID_ARGUMENT: the
    caller's fault, never worth a retry. A fault of ours (a stage handed what it never should be) is
    INTERNAL.

    Attributes:
        code: The google.rpc status code.
        message: What went wrong and what is accepted, in words.
    """

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"

    def __reduce__(self) -> tuple[type[CoreError], tuple[Code, str]]:
        return (type(self), (self.code, self.message))


def invalid(message: str) -> CoreError:
    """INVALID_ARGUMENT: what the caller sent cannot be served."""
    return CoreError(Code.INVALID_ARGUMENT, message)


def internal(message: str) -> CoreError:
    """INTERNAL: a stage was handed what it never should be; our fault."""
    return CoreError(Code.INTERNAL, message)
