"""The handler's errors are the core's `CoreError` (a google.rpc Code and a message); here, what HTTP status
TorchServe's REST replies carry for each code.

Bad input, an image over the pixel limit included, is INVALID_ARGUMENT: the caller's fault, HTTP 400, never
worth a retry. RESOURCE_EXHAUSTED and UNAVAILABLE mean "try later" and are left to overload; a fault of
ours is INTERNAL.
"""

from __future__ import annotations

from u2serve.core.errors import Code

_HTTP = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.RESOURCE_EXHAUSTED: 413,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
}


def http_status(code: Code) -> int:
    """The HTTP status of a reply that failed with `code` (500 for a code the handler never answers with)."""
    return _HTTP.get(code, 500)
