"""/v1: the options this build takes (open), and behind the key the models and one POST per task."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from u2net_client import ModelInfo
from u2serve.web import fields
from u2serve.web.gateway import Authorized, GatewayDep, ServedModel, SettingsDep, Upload

router = APIRouter(prefix="/v1", tags=["v1"])
models_router = APIRouter(prefix="/models", dependencies=[Authorized])


def model_json(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name, "version": info.version, "ready_workers": info.ready_workers,
        "batch_size": info.batch_size, "max_batch_delay_ms": info.max_batch_delay_ms, "weights": info.weights,
        "weights_random": info.weights_random, "variant": info.variant, "device": info.device,
        "max_pixels": info.max_pixels, "engine": info.engine,
    }  # fmt: skip


@router.get("/options", summary="The models and, per task, the options this build takes")
async def options(settings: SettingsDep) -> dict[str, object]:
    return fields.describe(settings.models, settings.max_body_bytes, settings.rembg_default_model)


@models_router.get("", summary="The served models, as the SDK's models() describes them")
async def models(gw: GatewayDep) -> list[dict[str, Any]]:
    return [model_json(await gw.client.describe(m)) for m in gw.settings.models]


@models_router.get("/{model}", summary="One model: workers, batching, weights, engine")
async def describe(model: ServedModel, gw: GatewayDep) -> dict[str, Any]:
    return model_json(await gw.client.describe(model))


def _add_task(task: str) -> None:
    @models_router.post(
        f"/{{model}}/{task}", openapi_extra=fields.openapi_form(task),
        summary=f"The {task} of one image (the SDK's {task}()); headers carry batch size and timings",
        response_class=Response, responses={200: {"content": {"image/png": {}}}},
    )  # fmt: skip
    async def run(model: ServedModel, upload: Upload, gw: GatewayDep) -> Response:
        image, form = upload
        return gw.image_response(await gw.segment(task, model, image, fields.parse_fields(task, form)))


for _task in fields.TASKS:
    _add_task(_task)
router.include_router(models_router)
