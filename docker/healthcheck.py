"""Docker HEALTHCHECK: TorchServe's /ping, with the inference key token authorization asks for.

Exit 0 when TorchServe answers "Healthy", 1 otherwise. Reads the port from the container's
config and the key from the key_file.json TorchServe wrote into its working directory.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

CONFIG = Path(os.environ.get("U2SERVE_CONFIG", "/opt/u2serve/container.properties"))
KEY_FILE = Path(os.environ.get("U2SERVE_KEY_FILE", "key_file.json"))


def inference_port(config: Path) -> int:
    for line in config.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "inference_address":
            return urlsplit(value.strip()).port or 8080
    return 8080


def main() -> int:
    try:
        key = json.loads(KEY_FILE.read_text())["inference"]["key"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{inference_port(CONFIG)}/ping", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            healthy = json.loads(resp.read()).get("status") == "Healthy"
    except (OSError, ValueError, KeyError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
