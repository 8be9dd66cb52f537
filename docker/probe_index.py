"""Image build: exit 0 when a package index URL answers, 1 (saying why) when it does not.

The Dockerfile passes TORCH_INDEX to pip only when it answers here: pip retries an unreachable extra
index for minutes before it falls back to the configured one. The CA bundle passed as the build secret
pip-cert is trusted as pip trusts it.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

BUILD_CA = Path("/run/secrets/pip-cert")
TIMEOUT_S = 10


def main(url: str) -> int:
    context = ssl.create_default_context(cafile=str(BUILD_CA) if BUILD_CA.is_file() else None)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # it answered: pip can ask it for the packages it wants
            return 0
        print(f"{url} answers {exc.code}: using the configured package index", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"{url} unreachable ({exc}): using the configured package index", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
