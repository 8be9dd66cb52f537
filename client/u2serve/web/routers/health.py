"""Health: the app is up (/healthz), TorchServe's models are ready (/readyz), TorchServe answers (/v1/ping)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from u2net_client import U2NetError
from u2serve.web.gateway import Authorized, GatewayDep

router = APIRouter()


@router.get("/healthz", tags=["health"], summary="The app is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="TorchServe answers and every model has a ready worker")
async def readyz(gw: GatewayDep) -> JSONResponse:
    async def ready(model: str) -> bool:
        try:
            # The frontend's view alone: a describe through the worker waits behind its batch (or its loading),
            # and TorchServe 0.12 loses the worker when it answers such a call the probe's timeout cancelled.
            return (await gw.client.describe(model, handler=False, timeout=5.0)).ready_workers >= 1
        except U2NetError:  # not ready is the answer here, not a failure
            return False

    models = gw.settings.models
    states = dict(zip(models, await asyncio.gather(*map(ready, models)), strict=True))
    ok = all(states.values())
    return JSONResponse({"ready": ok, "models": states}, status_code=200 if ok else 503,
                        headers={} if ok else {"Retry-After": "5"})  # fmt: skip


@router.get("/v1/ping", tags=["v1"], summary="Whether TorchServe answers (token checked)", dependencies=[Authorized])
async def ping(gw: GatewayDep) -> dict[str, bool]:
    return {"healthy": await gw.client.ping()}
