"""Docker HEALTHCHECK: TorchServe's /ping with the inference key, and the web gateway's /readyz.

Exit 0 when TorchServe answers "Healthy" and the gateway says it reaches TorchServe over gRPC with both
models ready; 1 otherwise, saying which failed. Reads TorchServe's port from the container's config, the
key from the key_file.json TorchServe wrote into its working directory, and the gateway's port from
U2SERVE_WEB_PORT (the entrypoint's).
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
WEB_PORT = int(os.environ.get("U2SERVE_WEB_PORT", "7000"))
TIMEOUT_S = 5


def inference_port(config: Path) -> int:
    for line in config.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "inference_address":
            return urlsplit(value.strip()).port or 8080
    return 8080


def torchserve_healthy() -> bool:
    # In Kubernetes (U2SERVE_CALLER_KEYS set) TorchServe runs on loopback without keys and writes no key file.
    keyless = bool(os.environ.get("U2SERVE_CALLER_KEYS"))
    key = "" if keyless else json.loads(KEY_FILE.read_text())["inference"]["key"]
    headers = {} if keyless else {"Authorization": f"Bearer {key}"}
    request = urllib.request.Request(f"http://127.0.0.1:{inference_port(CONFIG)}/ping", headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
        return json.loads(resp.read()).get("status") == "Healthy"


def gateway_ready() -> bool:
    """/readyz: 200 when TorchServe answers the gateway's gRPC calls and every model has a ready worker."""
    with urllib.request.urlopen(f"http://127.0.0.1:{WEB_PORT}/readyz", timeout=TIMEOUT_S) as resp:
        return json.loads(resp.read()).get("ready") is True


def main() -> int:
    for name, check in (("torchserve /ping", torchserve_healthy), ("web gateway /readyz", gateway_ready)):
        try:
            ok = check()
        except (OSError, ValueError, KeyError) as exc:  # HTTPError (503 not ready) is an OSError
            print(f"unhealthy: {name}: {exc}", file=sys.stderr)
            return 1
        if not ok:
            print(f"unhealthy: {name}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
