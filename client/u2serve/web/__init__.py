"""u2serve's web gateway: the page, rembg's /api/remove and /v1 over HTTP, a client of TorchServe.

Needs the `web` extra (`pip install 'u2serve[web]'`); the SDK itself never imports this package.
Run it with `python -m u2serve.web` (`make serve` does), or build the ASGI app with `create_app`.
"""

from u2serve.web.app import create_app
from u2serve.web.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "create_app"]
