"""The SDK's one exception type, and the mapping from gRPC failures and the core's errors onto it."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from u2serve.core.errors import CoreError

F = TypeVar("F", bound=Callable[..., Any])

# TorchServe appends the Java exception's class on a line of its own: "Model not found: x\norg.pytorch...".
_JAVA_CLASS = re.compile(r"\n(?:org|java)\.[\w.$]+\s*$")
_MODEL_NOT_FOUND = ("ModelNotFoundException", "ModelVersionNotFoundException", "Model not found")
_TOKEN_REFUSED = "Token Authorization failed"
# TorchServe's gRPC API answers INTERNAL when a model's job queue is full (its REST API answers 503):
# 'Model "u2netp" has no worker to serve inference request. Please use scale workers API ...'.
_OVERLOADED = re.compile(r'Model "([^"]*)" has no worker to serve inference request')
_MODEL_API_DISABLED = "Model API disabled"
# Triton answers UNAVAILABLE when a restricted API group lacks its header or the key is wrong.
_TRITON_RESTRICTED = "This protocol is restricted"


class U2NetError(CoreError):
    """Any failure of a u2serve call: transport, server, or the request itself.

    A subclass of the core's `u2serve.core.errors.CoreError`, so `except CoreError` catches both; its
    code is gRPC's own type.

    Attributes:
        code: The gRPC status code: INVALID_ARGUMENT for bad input (never worth a retry),
            NOT_FOUND for an unknown model or version, UNAVAILABLE when the server cannot be
            reached, UNAUTHENTICATED when the token is missing or wrong, and so on.
        message: What went wrong, in words.
    """

    code: grpc.StatusCode  # type: ignore[assignment]  # the same numbers as the core's Code, gRPC's type

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        Exception.__init__(self, f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_core(cls, error: CoreError) -> U2NetError:
        """The SDK's error for one the core raised (options, the pixel pipeline): the same code and message."""
        if isinstance(error, U2NetError):
            return error
        return cls(status_code(int(error.code)), error.message)

    def __repr__(self) -> str:
        return f"U2NetError({self.code.name}, {self.message!r})"

    def __reduce__(self) -> tuple[type[U2NetError], tuple[grpc.StatusCode, str]]:  # type: ignore[override]
        return (type(self), (self.code, self.message))


@contextmanager
def sdk_errors() -> Iterator[None]:
    """The SDK's boundary: a core error raised inside leaves as a U2NetError with its code and message."""
    try:
        yield
    except U2NetError:
        raise
    except CoreError as exc:
        raise U2NetError.from_core(exc) from exc


def raises_sdk_errors(fn: F) -> F:
    """`sdk_errors` around every call of `fn` (an SDK entry point that runs core code)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with sdk_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode with this google.rpc.Code number (UNKNOWN for a number gRPC lacks)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def effective_code(code: grpc.StatusCode, details: str) -> grpc.StatusCode:
    """The status a server's failure means: TorchServe's INTERNAL for a full job queue is RESOURCE_EXHAUSTED,
    Triton's UNAVAILABLE for a missing or wrong key is UNAUTHENTICATED (not worth a retry)."""
    if code == grpc.StatusCode.INTERNAL and _OVERLOADED.search(details):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if code == grpc.StatusCode.UNAVAILABLE and _TRITON_RESTRICTED in details:
        return grpc.StatusCode.UNAUTHENTICATED
    return code


def from_rpc_error(
    error: grpc.RpcError,
    *,
    target: str,
    credentials: str,
    attempts: int = 1,
    timeout: float | None = None,
) -> U2NetError:
    """A U2NetError for a failed gRPC call, with a message that says how to fix it.

    Args:
        error: What the gRPC call raised (a grpc.Call as well, for both sync and aio stubs).
        target: The address called, for the message.
        credentials: Where the token came from ("key file var/key_file.json", ...), for the message.
        attempts: How many attempts were made.
        timeout: The deadline the call had, in seconds.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    raw = (details_fn() if callable(details_fn) else None) or str(error)
    details = _JAVA_CLASS.sub("", raw).strip()
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED) and _TOKEN_REFUSED in details:
        # TorchServe answers PERMISSION_DENIED; a missing or wrong token is UNAUTHENTICATED in gRPC's terms.
        return U2NetError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{target} refused the token ({credentials}): {details}. TorchServe writes new keys to "
            "key_file.json in its working directory at every start; pass key_file=, set U2SERVE_KEY_FILE, "
            "or pass token=/management_token= with the current keys",
        )
    if effective_code(code, details) == grpc.StatusCode.UNAUTHENTICATED and _TRITON_RESTRICTED in details:
        return U2NetError(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{target} refused the call without a valid key ({credentials}): {details}. Triton started by "
            "tools/triton.py writes new keys to key_file.json in its home (var/triton/ for `make triton`) at "
            "every start; pass key_file=, set U2SERVE_KEY_FILE, or pass token=/management_token=",
        )
    if code == grpc.StatusCode.PERMISSION_DENIED and _MODEL_API_DISABLED in details:
        return U2NetError(
            code,
            f"{details}: registering and unregistering models is turned off on {target}; "
            "set enable_model_api=true in the server's config.properties and restart it",
        )
    overloaded = _OVERLOADED.search(raw) if code == grpc.StatusCode.INTERNAL else None
    if overloaded:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return U2NetError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{overloaded.group(1)} is overloaded at {target}{tries}: its job queue (job_queue_size) is full "
            "or it has no worker; retry later, allow more attempts (retry=RetryPolicy(...)), or add workers",
        )
    if any(marker in raw for marker in _MODEL_NOT_FOUND):
        # TorchServe's inference API answers INTERNAL for an unknown model; management says NOT_FOUND.
        return U2NetError(grpc.StatusCode.NOT_FOUND, details)
    if code == grpc.StatusCode.UNAVAILABLE:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return U2NetError(code, f"cannot reach u2serve at {target}{tries}: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
        return U2NetError(code, f"no answer from {target} within {timeout:g} s; pass a longer timeout=")
    return U2NetError(code, details or f"{target} failed the call with {code.name}")
