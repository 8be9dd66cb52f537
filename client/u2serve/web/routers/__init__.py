"""The app's surfaces, one router each: the page, health, metrics, /v1 and rembg's /api/remove."""

from u2serve.web.routers import health, metrics, page, remove, v1

ROUTERS = (page.router, health.router, metrics.router, v1.router, remove.router)

__all__ = ["ROUTERS"]
