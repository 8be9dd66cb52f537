"""rembg 2.0's /api/remove (`rembg s`): a multipart POST, or GET ?url= from hosts an operator allows; key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from u2serve.web import rembg
from u2serve.web.errors import HTTPError
from u2serve.web.gateway import Authorized, Gateway, GatewayDep, Upload

router = APIRouter(prefix="/api", tags=["rembg"], dependencies=[Authorized])

_REMBG_BODY = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "The image"},
            "model": {"type": "string", "description": "u2netp or u2net (rembg: any session name)"},
            "a": {"type": "boolean", "description": "alpha matting (refine=matting)"},
            "af": {"type": "integer", "description": "alpha matting foreground threshold, default 240"},
            "ab": {"type": "integer", "description": "alpha matting background threshold, default 10"},
            "ae": {"type": "integer", "description": "alpha matting erode size, default 10"},
            "om": {"type": "boolean", "description": "only the mask"},
            "ppm": {"type": "boolean", "description": "post-process the mask (refine=postprocess)"},
            "bgc": {"type": "string", "description": "background colour r,g,b,a (form field or query)"},
        }}}}},
}  # fmt: skip


def _text(name: str, value: str | bytes) -> str:
    """A field of rembg's /api/remove as text; 400 for a file that is not (rembg's parameters are all text)."""
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise HTTPError(
            400, f"{name}: rembg's /api/remove takes one file (`file`) and text parameters; images behind the "
            "subject go to POST /v1/models/{model}/cutout as `background_image`",
        ) from None  # fmt: skip


def _call(gw: Gateway, params: dict[str, str]) -> rembg.RembgCall:
    return rembg.parse(params, gw.settings.models, gw.settings.rembg_default_model)


async def _remove(gw: Gateway, image: bytes, params: dict[str, str]) -> Response:
    call = _call(gw, params)
    result = await gw.segment(call.task, call.model, image, call.kwargs)
    if call.translucent_background is None:
        return gw.image_response(result)
    return gw.image_response(result, rembg.composite(result.png, call.translucent_background))


@router.post("/remove", summary="rembg 2.0's POST /api/remove: multipart file, same parameters",
             openapi_extra=_REMBG_BODY, response_class=Response)  # fmt: skip
async def remove_post(request: Request, upload: Upload, gw: GatewayDep) -> Response:
    image, form = upload
    params = {**request.query_params, **{k: _text(k, v) for k, v in form.items()}}
    return await _remove(gw, image, params)


@router.get("/remove", response_class=Response,
            summary="rembg 2.0's GET /api/remove?url=: only allowed hosts, never private addresses")  # fmt: skip
async def remove_get(request: Request, url: str, gw: GatewayDep) -> Response:
    params = dict(request.query_params)
    _call(gw, params)  # bad parameters fail before anything is fetched
    return await _remove(gw, await gw.fetcher.get(url), params)
