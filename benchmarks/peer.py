"""The peer the benchmarks measure against: rembg itself, on the weight files our archives were built from.

rembg's `new_session("u2net")` / `("u2netp")` downloads its file unless U2NET_HOME holds it under rembg's
name with rembg's md5; handler/sources.py keeps exactly those files, fetched once per machine. Every rembg
session of the benchmarks comes from `session`, so none of them downloads anything and rembg runs the same
weights as the server it is compared with.
"""

from __future__ import annotations

import os
from typing import Any

from handler import sources

HOME_ENV = "U2NET_HOME"  # where rembg looks for its files (rembg/sessions/base.py)


def session(model: str) -> Any:
    """rembg's `new_session(model)`, loading the file handler.sources fetched (fetched now if it is not yet).

    Raises:
        SystemExit: rembg is not installed (it comes with the project's load extra).
        handler.sources.SourceError: a weight file could not be fetched.
    """
    try:
        from rembg import new_session
    except ImportError as exc:
        raise SystemExit(f'rembg cannot be imported ({exc}): pip install -e ".[load]" installs the peer') from exc
    # rembg reads its folder from the environment only: set before every session it makes.
    os.environ[HOME_ENV] = str(sources.rembg_home())
    return new_session(model)
