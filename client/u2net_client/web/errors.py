"""Every failure as JSON with the HTTP status that says whose fault it is."""

from __future__ import annotations

import grpc
from starlette.responses import JSONResponse

from u2net_client._errors import U2NetError


class HTTPError(Exception):
    """A refusal by the gateway itself: status, a message saying what is accepted, optional Retry-After."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


_TYPES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large",
    502: "bad_gateway", 503: "unavailable", 504: "deadline_exceeded",
}  # fmt: skip

# What an SDK error means to an HTTP caller whose token the app already accepted.
_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    # TorchServe refused the app's own key: the deployment is misconfigured, not the caller.
    grpc.StatusCode.UNAUTHENTICATED: 503,
    grpc.StatusCode.PERMISSION_DENIED: 503,
}
_RETRY_AFTER = {grpc.StatusCode.UNAVAILABLE: 5, grpc.StatusCode.RESOURCE_EXHAUSTED: 1}


def from_sdk(error: U2NetError) -> HTTPError:
    """The HTTPError for an SDK failure; a too-large image is 413, not 400."""
    status = _STATUS.get(error.code, 502)
    if status == 400 and "over the limit" in error.message:
        status = 413
    message = error.message
    if status == 504:  # the SDK's advice (timeout=) is the operator's here
        message = f"{message.split(';')[0]}: TorchServe is overloaded or stuck; retry later (the app's --timeout)"
    return HTTPError(status, message, _RETRY_AFTER.get(error.code))


def response(error: HTTPError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="u2serve"'
    body = {"code": error.status, "type": _TYPES.get(error.status, "error"), "message": error.message}
    return JSONResponse(body, status_code=error.status, headers=headers)
