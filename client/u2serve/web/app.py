"""The ASGI app: the page, rembg's /api/remove, /v1, health and metrics, over one shared async SDK client.

Nothing here loads a model: every image goes to TorchServe through one `AsyncU2NetClient` (one gRPC
channel), so concurrent HTTP requests become concurrent gRPC calls that TorchServe batches. Each surface
is a router of its own (`routers/`); every error type maps to its response once (`errors.py`). With a gRPC
port, the lifespan also runs the gRPC front (`grpc_front.py`): TorchServe's gRPC API behind the same keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from u2net_client import RetryPolicy
from u2net_client.aio import AsyncU2NetClient
from u2serve.web.errors import add_exception_handlers
from u2serve.web.gateway import Gateway
from u2serve.web.grpc_front import GrpcFront
from u2serve.web.metrics import BodyLimit, Metrics
from u2serve.web.routers import ROUTERS
from u2serve.web.routers.page import STATIC
from u2serve.web.settings import Settings

# A failing TorchServe should reach the page as a 503 within seconds, not after a minute of retries.
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.2, max_backoff=0.5)
ClientFactory = Callable[[Settings], AsyncU2NetClient]


def sdk_client(settings: Settings) -> AsyncU2NetClient:
    # No key file: TorchServe runs without token authorization; empty tokens send no header and look for no file.
    token = "" if settings.key_file is None else None
    return AsyncU2NetClient(
        settings.target, settings.management_target, token=token, management_token=token,
        key_file=settings.key_file, timeout=settings.timeout, retry=RETRY, max_send_bytes=settings.max_body_bytes,
    )  # fmt: skip


def create_app(settings: Settings, client_factory: ClientFactory = sdk_client) -> FastAPI:
    """The app for `settings`; `client_factory` makes the one SDK client (a fake one in the pure tests)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = client_factory(settings)  # inside the loop: grpc.aio channels belong to it
        app.state.gateway = gateway = Gateway(settings, client, metrics)
        # The gRPC front runs on threads of its own, beside the loop; it checks the very keys HTTP does.
        front = None if settings.grpc_port is None else GrpcFront(settings, gateway.key, metrics)
        app.state.grpc_front = front
        try:
            if front is not None:
                front.start()
            yield
        finally:
            if front is not None:
                await asyncio.to_thread(front.stop)  # its grace period, without holding up the loop
            await client.close()

    app = FastAPI(
        title="u2serve web",
        version="0.1.0",
        description="U²-Net background removal over HTTP: the page, rembg's /api/remove, and /v1.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    add_exception_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
