"""/metrics: the app's Prometheus metrics, behind the key."""

from __future__ import annotations

from fastapi import APIRouter, Response

from u2serve.web.gateway import Authorized, GatewayDep

router = APIRouter(dependencies=[Authorized])


@router.get("/metrics", tags=["health"], summary="Prometheus metrics of the app (token needed)")
async def prometheus(gw: GatewayDep) -> Response:
    return gw.metrics.response()
