"""What every route shares: the `Gateway` (SDK client, key, limiter, fetcher, metrics) and the dependencies
that hand it over, check the key and read a form; and the image answer with what the server said about it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from u2net_client import CutoutResult, MaskResult
from u2net_client.aio import AsyncU2NetClient
from u2serve.core.errors import CoreError
from u2serve.core.imaging import probe_image
from u2serve.web.auth import InferenceKey, presented
from u2serve.web.errors import HTTPError
from u2serve.web.fetch import Fetcher
from u2serve.web.metrics import Metrics
from u2serve.web.settings import Settings


class Gateway:
    """The state one app shares across requests: the SDK client, the key, the limiter, the fetcher."""

    def __init__(self, settings: Settings, client: AsyncU2NetClient, metrics: Metrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        keys = settings.caller_keys or settings.key_file
        self.key = InferenceKey(keys, caller_keys=settings.caller_keys is not None)  # type: ignore[arg-type]
        self.fetcher = Fetcher(settings.url_hosts, settings.url_max_bytes, settings.url_max_redirects)
        self.in_flight = 0

    def authorize(self, token: str | None) -> None:
        """401 without a token, 403 for another key; KeyUnavailable (503) when the key file cannot be read."""
        if token is None:
            raise HTTPError(401, "no token: send `Authorization: Bearer <key>` or `X-Api-Key: <key>` with "
                            "the inference key, or open the address `make serve` printed")  # fmt: skip
        if not self.key.accepts(token):
            raise HTTPError(403, "token refused: it is not a current inference key "
                            "(keys change at every start and rotation: key_file.json, or the keys Secret)")  # fmt: skip

    def check_served(self, model: str) -> str:
        if model not in self.settings.models:
            raise HTTPError(404, f"model {model!r} is not served here; accepted: {', '.join(self.settings.models)}")
        return model

    async def segment(self, task: str, model: str, image: bytes, kwargs: dict[str, Any]) -> MaskResult | CutoutResult:
        """The SDK's mask or cutout of `image`; bad or oversized images are refused before anything is sent."""
        self._probe(image, None)
        if kwargs.get("background_image"):
            self._probe(kwargs["background_image"], "background_image")
        if self.in_flight >= self.settings.max_in_flight:
            raise HTTPError(503, f"busy: {self.in_flight} images in flight, the limit is "
                            f"{self.settings.max_in_flight}; retry shortly", retry_after=1)  # fmt: skip
        self.in_flight += 1
        try:
            call = self.client.mask if task == "mask" else self.client.cutout
            return await call(image, model, **kwargs)
        finally:
            self.in_flight -= 1

    def _probe(self, data: bytes, field: str | None) -> None:
        """The image's header under the pixel limit: CoreError (400), TooManyPixels (413), named by `field`."""
        try:
            probe_image(data, self.settings.max_pixels)
        except CoreError as exc:
            if field is None:
                raise
            raise type(exc)(exc.code, f"{field}: {exc.message}") from exc  # as the server names it

    def image_response(self, result: MaskResult | CutoutResult, body: bytes | None = None) -> Response:
        """The image with what the server said about it: batch size, timings (Server-Timing), model, box."""
        self.metrics.batch_size.labels(result.model).observe(result.batch_size)
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


# -- dependencies: all `async def`, as FastAPI runs a plain `def` one in its thread pool ------------------------


async def settings(request: Request) -> Settings:
    """The app's settings, from its creation on (no lifespan needed)."""
    return request.app.state.settings  # type: ignore[no-any-return]


async def gateway(request: Request) -> Gateway:
    """The app's Gateway, made by its lifespan."""
    return request.app.state.gateway  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(settings)]
GatewayDep = Annotated[Gateway, Depends(gateway)]


async def authorize(request: Request, gw: GatewayDep) -> None:
    """The key check, as a dependency of the routers that need TorchServe's inference key."""
    gw.authorize(presented(request))


Authorized = Depends(authorize)


async def served_model(model: str, gw: GatewayDep) -> str:
    """The `{model}` of the path, 404 unless this gateway offers it."""
    return gw.check_served(model)


ServedModel = Annotated[str, Depends(served_model)]


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


Upload = Annotated[tuple[bytes, dict[str, str | bytes]], Depends(read_form)]
