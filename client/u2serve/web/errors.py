"""Every failure as JSON with the HTTP status that says whose fault it is, mapped once per error type."""

from __future__ import annotations

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from u2net_client import U2NetError
from u2serve.core.errors import CoreError
from u2serve.core.imaging import TooManyPixels
from u2serve.web.auth import KeyUnavailable


class HTTPError(Exception):
    """A refusal by the gateway itself: status, a message saying what is accepted, optional Retry-After."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class PayloadTooLarge(HTTPError):
    """413: a request body, a fetched image or an image's pixels over the limit the gateway checks."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


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
# The key file cannot be read (KeyUnavailable): TorchServe is likely restarting and rewriting it.
KEY_RETRY_AFTER = 5


def from_sdk(error: CoreError) -> HTTPError:
    """The HTTPError for an SDK failure, or a core one (the gateway's own look at an image); an image over the
    pixel limit is 413, not 400."""
    if isinstance(error, TooManyPixels):
        return PayloadTooLarge(error.message)
    code = U2NetError.from_core(error).code
    status = _STATUS.get(code, 502)
    message = error.message
    if status == 504:  # the SDK's advice (timeout=) is the operator's here
        message = f"{message.split(';')[0]}: TorchServe is overloaded or stuck; retry later (the app's --timeout)"
    return HTTPError(status, message, _RETRY_AFTER.get(code))


def response(error: HTTPError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="u2serve"'
    body = {"code": error.status, "type": _TYPES.get(error.status, "error"), "message": error.message}
    return JSONResponse(body, status_code=error.status, headers=headers)


def add_exception_handlers(app: FastAPI) -> None:
    """One handler per error type, for every route: the routes raise, none of them converts."""

    @app.exception_handler(HTTPError)
    async def gateway_error(_: Request, exc: HTTPError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(CoreError)  # U2NetError is one
    async def sdk_error(_: Request, exc: CoreError) -> JSONResponse:
        return response(from_sdk(exc))

    @app.exception_handler(KeyUnavailable)
    async def key_unavailable(_: Request, exc: KeyUnavailable) -> JSONResponse:
        return response(HTTPError(503, str(exc), retry_after=KEY_RETRY_AFTER))

    @app.exception_handler(StarletteHTTPException)
    async def framework_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return response(HTTPError(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return response(HTTPError(400, problems))
