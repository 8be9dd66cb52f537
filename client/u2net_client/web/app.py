"""The ASGI app: the page, rembg's /api/remove, /v1, health and metrics, over one shared async SDK client.

Nothing here loads a model: every image goes to TorchServe through one `AsyncU2NetClient` (one gRPC
channel), so concurrent HTTP requests become concurrent gRPC calls that TorchServe batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from u2net_client._errors import U2NetError
from u2net_client._retry import RetryPolicy
from u2net_client._types import CutoutResult, MaskResult, ModelInfo
from u2net_client.aio import AsyncU2NetClient
from u2net_client.imaging import probe_image
from u2net_client.web import fields, rembg
from u2net_client.web.auth import COOKIE, InferenceKey, KeyUnavailable, presented
from u2net_client.web.errors import HTTPError, from_sdk, response
from u2net_client.web.fetch import Fetcher
from u2net_client.web.metrics import BodyLimit, Metrics
from u2net_client.web.settings import Settings

STATIC = Path(__file__).resolve().parent / "static"
# A failing TorchServe should reach the page as a 503 within seconds, not after a minute of retries.
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.2, max_backoff=0.5)
ClientFactory = Callable[[Settings], AsyncU2NetClient]
log = logging.getLogger(__name__)


def sdk_client(settings: Settings) -> AsyncU2NetClient:
    return AsyncU2NetClient(
        settings.target, settings.management_target, key_file=settings.key_file, timeout=settings.timeout,
        retry=RETRY, max_send_bytes=settings.max_body_bytes,
    )  # fmt: skip


class Gateway:
    """The state one app shares across requests: the SDK client, the key, the limiter, the fetcher."""

    def __init__(self, settings: Settings, client: AsyncU2NetClient) -> None:
        self.settings = settings
        self.client = client
        self.key = InferenceKey(settings.key_file)
        self.fetcher = Fetcher(settings.url_hosts, settings.url_max_bytes, settings.url_max_redirects)
        self.in_flight = 0

    def authorize(self, request: Request) -> None:
        token = presented(request)
        try:
            if token is None:
                raise HTTPError(401, "no token: send `Authorization: Bearer <key>` or `X-Api-Key: <key>` with "
                                "TorchServe's inference key, or open the address `make serve` printed")  # fmt: skip
            if not self.key.accepts(token):
                raise HTTPError(403, "token refused: it is not TorchServe's current inference key "
                                "(keys change at every start and rotation; see key_file.json)")  # fmt: skip
        except KeyUnavailable as exc:
            raise HTTPError(503, str(exc), retry_after=5) from exc

    async def segment(self, task: str, model: str, image: bytes, kwargs: dict[str, Any]) -> MaskResult | CutoutResult:
        if model not in self.settings.models:
            raise HTTPError(404, f"model {model!r} is not served here; accepted: {', '.join(self.settings.models)}")
        try:
            probe_image(image, self.settings.max_pixels)  # 400/413 before anything is decoded or sent
        except U2NetError as exc:
            raise from_sdk(exc) from exc
        if self.in_flight >= self.settings.max_in_flight:
            raise HTTPError(503, f"busy: {self.in_flight} images in flight, the limit is "
                            f"{self.settings.max_in_flight}; retry shortly", retry_after=1)  # fmt: skip
        self.in_flight += 1
        try:
            call = self.client.mask if task == "mask" else self.client.cutout
            return await call(image, model, **kwargs)
        except U2NetError as exc:
            raise from_sdk(exc) from exc
        finally:
            self.in_flight -= 1


def image_response(result: MaskResult | CutoutResult, metrics: Metrics, body: bytes | None = None) -> Response:
    """The image with what the server said about it: batch size, timings (Server-Timing), model, box."""
    metrics.batch_size.labels(result.model).observe(result.batch_size)
    width, height = result.input_size
    headers = {
        "X-U2Serve-Model": result.model,
        "X-U2Serve-Model-Version": result.model_version,
        "X-U2Serve-Weights": result.weights,
        "X-U2Serve-Batch-Size": str(result.batch_size),
        "X-U2Serve-Input-Size": f"{width}x{height}",
        "Server-Timing": ", ".join(f"{stage};dur={ms:.1f}" for stage, ms in result.timings.items()),
        "Cache-Control": "no-store",
    }
    if result.box is not None:
        box = result.box
        headers["X-U2Serve-Box"] = f"{box.x},{box.y},{box.width},{box.height}"
    data = result.png if body is None else body
    return Response(data, media_type=media_type(data), headers=headers)


def media_type(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def model_json(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name, "version": info.version, "ready_workers": info.ready_workers,
        "batch_size": info.batch_size, "max_batch_delay_ms": info.max_batch_delay_ms, "weights": info.weights,
        "weights_random": info.weights_random, "variant": info.variant, "device": info.device,
        "max_pixels": info.max_pixels, "engine": info.engine,
    }  # fmt: skip


async def read_form(request: Request) -> tuple[bytes, dict[str, str | bytes]]:
    """The multipart `file` and the other fields (image fields as bytes); 400 without a file."""
    form = await request.form(max_files=4, max_fields=64)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPError(400, "no image: send it as the multipart form field `file` (curl -F file=@photo.jpg)")
    image = await upload.read()
    rest: dict[str, str | bytes] = {}
    for name, value in form.multi_items():
        if name != "file":
            rest[name] = await value.read() if isinstance(value, UploadFile) else value
    await form.close()
    return image, rest


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


def create_app(settings: Settings, client_factory: ClientFactory = sdk_client) -> FastAPI:  # noqa: C901
    """The app for `settings`; `client_factory` makes the one SDK client (a fake one in the pure tests)."""
    metrics = Metrics()
    state: dict[str, Gateway] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        client = client_factory(settings)  # inside the loop: grpc.aio channels belong to it
        state["gateway"] = Gateway(settings, client)
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(
        title="u2serve web",
        version="0.1.0",
        description="U²-Net background removal over HTTP: the page, rembg's /api/remove, and /v1.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)

    def gateway(request: Request, authorize: bool = True) -> Gateway:
        gw = state["gateway"]
        if authorize:
            gw.authorize(request)
        return gw

    @app.exception_handler(HTTPError)
    async def http_error(_: Request, exc: HTTPError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def framework_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return response(HTTPError(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return response(HTTPError(400, problems))

    @app.get("/", include_in_schema=False, response_model=None)
    async def page(request: Request, token: str | None = None) -> Response:
        if token is None:
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        # The key leaves the address bar (and history) at once; it lives on in an HttpOnly cookie.
        gw = gateway(request, authorize=False)
        try:
            good = gw.key.accepts(token)
        except KeyUnavailable:
            good = False
        redirect = RedirectResponse("/" if good else "/#token-refused", status_code=303)
        if good:
            secure = request.url.scheme == "https"
            redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
        return redirect

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    @app.get("/healthz", tags=["health"], summary="The app is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="TorchServe answers and every model has a ready worker")
    async def readyz(request: Request) -> JSONResponse:
        gw = gateway(request, authorize=False)

        async def ready(model: str) -> bool:
            try:
                return (await gw.client.describe(model, timeout=5.0)).ready_workers >= 1
            except U2NetError:
                return False

        states = dict(zip(settings.models, await asyncio.gather(*map(ready, settings.models)), strict=True))
        ok = all(states.values())
        return JSONResponse({"ready": ok, "models": states}, status_code=200 if ok else 503,
                            headers={} if ok else {"Retry-After": "5"})  # fmt: skip

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics of the app (token needed)")
    async def prometheus(request: Request) -> Response:
        gateway(request)
        return metrics.response()

    @app.get("/v1/options", tags=["v1"], summary="The models and, per task, the options this build takes")
    async def options() -> dict[str, object]:
        return fields.describe(settings.models, settings.max_body_bytes, settings.rembg_default_model)

    @app.get("/v1/ping", tags=["v1"], summary="Whether TorchServe answers (token checked)")
    async def ping(request: Request) -> dict[str, bool]:
        gw = gateway(request)
        try:
            return {"healthy": await gw.client.ping()}
        except U2NetError as exc:
            raise from_sdk(exc) from exc

    @app.get("/v1/models", tags=["v1"], summary="The served models, as the SDK's models() describes them")
    async def models(request: Request) -> list[dict[str, Any]]:
        gw = gateway(request)
        try:
            return [model_json(await gw.client.describe(m)) for m in settings.models]
        except U2NetError as exc:
            raise from_sdk(exc) from exc

    @app.get("/v1/models/{model}", tags=["v1"], summary="One model: workers, batching, weights, engine")
    async def describe(model: str, request: Request) -> dict[str, Any]:
        gw = gateway(request)
        if model not in settings.models:
            raise HTTPError(404, f"model {model!r} is not served here; accepted: {', '.join(settings.models)}")
        try:
            return model_json(await gw.client.describe(model))
        except U2NetError as exc:
            raise from_sdk(exc) from exc

    def segment_route(task: str) -> None:
        @app.post(
            f"/v1/models/{{model}}/{task}", tags=["v1"], openapi_extra=fields.openapi_form(task),
            summary=f"The {task} of one image (the SDK's {task}()); headers carry batch size and timings",
            response_class=Response, responses={200: {"content": {"image/png": {}}}},
        )  # fmt: skip
        async def run(model: str, request: Request) -> Response:
            gw = gateway(request)
            image, form = await read_form(request)
            try:
                kwargs = fields.parse_fields(task, form)
            except U2NetError as exc:
                raise from_sdk(exc) from exc
            return image_response(await gw.segment(task, model, image, kwargs), metrics)

    for task in fields.TASKS:
        segment_route(task)

    async def remove(gw: Gateway, image: bytes, params: dict[str, str]) -> Response:
        call = rembg.parse(params, settings.models, settings.rembg_default_model)
        result = await gw.segment(call.task, call.model, image, call.kwargs)
        if call.translucent_background is None:
            return image_response(result, metrics)
        return image_response(result, metrics, rembg.composite(result.png, call.translucent_background))

    @app.post("/api/remove", tags=["rembg"], summary="rembg 2.0's POST /api/remove: multipart file, same parameters",
              openapi_extra=_REMBG_BODY, response_class=Response)  # fmt: skip
    async def remove_post(request: Request) -> Response:
        gw = gateway(request)
        image, form = await read_form(request)
        params = {**request.query_params, **{k: _text(k, v) for k, v in form.items()}}
        return await remove(gw, image, params)

    @app.get("/api/remove", tags=["rembg"], response_class=Response,
             summary="rembg 2.0's GET /api/remove?url=: only allowed hosts, never private addresses")  # fmt: skip
    async def remove_get(request: Request, url: str) -> Response:
        gw = gateway(request)
        params = dict(request.query_params)
        rembg.parse(params, settings.models, settings.rembg_default_model)  # bad parameters fail before fetching
        return await remove(gw, await gw.fetcher.get(url), params)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
