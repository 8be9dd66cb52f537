"""The page (/) and the offline API reference (/docs): no token needed; a token in the address becomes a cookie."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from u2serve.web.auth import COOKIE, KeyUnavailable
from u2serve.web.gateway import gateway

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/", response_model=None)
async def page(request: Request, token: str | None = None) -> Response:
    if token is None:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
    # The key leaves the address bar (and history) at once; it lives on in an HttpOnly cookie.
    try:
        good = (await gateway(request)).key.accepts(token)
    except KeyUnavailable:
        good = False
    redirect = RedirectResponse("/" if good else "/#token-refused", status_code=303)
    if good:
        secure = request.url.scheme == "https"
        redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
    return redirect


@router.get("/docs")
async def docs() -> FileResponse:
    return FileResponse(STATIC / "docs.html")
