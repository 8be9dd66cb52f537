"""The gateway's settings: read once (command line or code), checked where they enter."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from u2net_client.connection import (
    DEFAULT_KEY_FILE,
    DEFAULT_MANAGEMENT_TARGET,
    DEFAULT_TARGET,
    KEY_FILE_ENV,
    MAX_SEND_BYTES,
)
from u2serve.core.imaging import DEFAULT_MAX_PIXELS

CALLER_KEYS_ENV = "U2SERVE_CALLER_KEYS"
GRPC_PORT_ENV = "U2SERVE_GRPC_PORT"
DEFAULT_PORT = 7000  # rembg's `rembg s` port, so a rembg user changes only the host
# The gRPC front's port where one is wanted (deploy/k8s): beside the HTTP port, clear of TorchServe's 7070/7071.
DEFAULT_GRPC_PORT = 7001
MODELS = ("u2netp", "u2net")
REMBG_DEFAULT_MODEL = "u2net"  # rembg's default session


class SettingsError(ValueError):
    """A setting that cannot work; the message says which and what is accepted."""


@dataclass(frozen=True)
class Settings:
    """Everything the app needs to know, validated on construction.

    Attributes:
        key_file: TorchServe's key_file.json: its current inference key is the one key the app accepts
            (unless caller_keys), and the app's own gRPC calls use its keys. Re-read whenever TorchServe
            rewrites it. None: TorchServe runs without token authorization (reachable from its pod alone,
            deploy/k8s), and the app's calls carry no key.
        caller_keys: A file of the keys callers may send, one a line (a mounted Kubernetes Secret), accepted
            instead of TorchServe's; re-read whenever it changes, so a rotated Secret needs no restart.
        target: TorchServe's gRPC inference API (host:port).
        management_target: TorchServe's gRPC management API (host:port).
        models: The models offered, the first being /v1's default.
        rembg_default_model: The model /api/remove uses without `model=`, and the page's first choice: u2net,
            rembg's default (the authors' weights); u2netp is the fast one, a field away.
        max_body_bytes: The largest request body (TorchServe's max_request_size); refused with 413 before reading.
        max_pixels: The largest width x height (the handler's max_pixels); read from the header, 413 above it.
        max_in_flight: Requests to TorchServe at once; beyond it the app answers 503 with Retry-After at once.
        timeout: Seconds each model call may take, retries included; then 504.
        url_hosts: Hosts GET /api/remove?url= may fetch from ("example.com", "*.example.com"); empty: off.
        url_max_bytes: The largest image fetched from a URL.
        url_max_redirects: Redirects followed, each checked as the first URL was.
        grpc_port: Where the gRPC front listens (grpc_front.py: TorchServe's inference API and read-only
            management calls, behind the same keys); None: no gRPC front. 0: any free port (tests).
        grpc_host: The address the gRPC front listens on (the HTTP side's --host).
    """

    key_file: Path | None
    caller_keys: Path | None = None
    target: str = DEFAULT_TARGET
    management_target: str = DEFAULT_MANAGEMENT_TARGET
    models: tuple[str, ...] = MODELS
    rembg_default_model: str = REMBG_DEFAULT_MODEL
    max_body_bytes: int = MAX_SEND_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_in_flight: int = 64
    timeout: float = 60.0
    url_hosts: tuple[str, ...] = field(default_factory=tuple)
    url_max_bytes: int = 16 * 1024 * 1024
    url_max_redirects: int = 3
    grpc_port: int | None = None
    grpc_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.key_file is None and self.caller_keys is None:
            raise SettingsError("no keys: give TorchServe's key_file, or caller_keys (a file of keys, one a line)")
        if not self.models:
            raise SettingsError("models is empty; name at least one served model, e.g. u2netp")
        if self.rembg_default_model not in self.models:
            raise SettingsError(f"rembg_default_model={self.rembg_default_model!r} is not one of models {self.models}")
        for name in ("max_body_bytes", "max_pixels", "max_in_flight", "url_max_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name}={getattr(self, name)!r}; accepted: a whole number >= 1")
        if self.timeout <= 0:
            raise SettingsError(f"timeout={self.timeout!r}; accepted: seconds > 0")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise SettingsError(f"grpc_port={self.grpc_port!r}; accepted: a port 1-65535 (0: any free one)")


def find_key_file(given: str | None, environ: dict[str, str] | None = None) -> Path:
    """The key file: given, else $U2SERVE_KEY_FILE, else ./var/key_file.json; it must exist."""
    env = os.environ if environ is None else environ
    path = Path(given or env.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE).expanduser()
    if not path.is_file():
        raise SettingsError(
            f"no key file at {path}: the app accepts TorchServe's inference key and needs its key_file.json "
            f"(--key-file or ${KEY_FILE_ENV}; `make serve` writes var/key_file.json)"
        )
    return path.resolve()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m u2serve.web",
        description=(
            "u2serve's web page and HTTP APIs: the page at /, rembg's /api/remove, /v1 (described at /docs), "
            "/healthz, /readyz and /metrics. A client of TorchServe over gRPC: it loads no model. It accepts "
            "TorchServe's inference key (X-Api-Key or Authorization: Bearer; the page takes ?token= once)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}, as rembg's)")
    p.add_argument("--target", default=DEFAULT_TARGET, help="TorchServe gRPC inference host:port")
    p.add_argument("--management-target", default=DEFAULT_MANAGEMENT_TARGET, help="gRPC management host:port")
    p.add_argument("--key-file", help=f"TorchServe's key_file.json (default ${KEY_FILE_ENV}, else var/key_file.json)")
    p.add_argument(
        "--caller-keys", metavar="FILE",
        help=f"accept the keys in FILE (one a line; a mounted Secret, re-read when it changes) instead of "
        f"TorchServe's (default ${CALLER_KEYS_ENV}); then TorchServe's key file only with --key-file",
    )  # fmt: skip
    p.add_argument(
        "--models", nargs="+", default=list(MODELS), help=f"the models offered (default: {' '.join(MODELS)})"
    )
    p.add_argument(
        "--rembg-default-model",
        default=REMBG_DEFAULT_MODEL,
        help=f"model of /api/remove without model=, the page's default ({REMBG_DEFAULT_MODEL})",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=MAX_SEND_BYTES, help="larger request bodies get 413 (default %(default)s)"
    )
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images get 413 (default %(default)s)"
    )
    p.add_argument(
        "--max-in-flight", type=int, default=64, help="images in flight beyond this get 503 (default %(default)s)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per image, else 504 (default %(default)s)")
    p.add_argument(
        "--allow-url-host", action="append", default=[], metavar="HOST",
        help="let GET /api/remove?url= fetch from HOST (or *.domain); repeat; off by default",
    )  # fmt: skip
    p.add_argument(
        "--grpc-port", metavar="PORT",
        help=f"also serve TorchServe's gRPC inference API on PORT, behind the same keys (default ${GRPC_PORT_ENV}; "
        f"off without it; deploy/k8s: {DEFAULT_GRPC_PORT})",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", help="uvicorn's log level (default %(default)s)")
    return p


def from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    caller_keys = args.caller_keys or env.get(CALLER_KEYS_ENV) or None
    if caller_keys is not None and not Path(caller_keys).is_file():
        raise SettingsError(f"no caller-keys file at {caller_keys} (--caller-keys or ${CALLER_KEYS_ENV})")
    # With caller keys, TorchServe's own key file only where named: in a pod it runs without one.
    key_file = find_key_file(args.key_file, env) if caller_keys is None or args.key_file else None
    return Settings(
        key_file=key_file,
        # Not resolved: a Secret's file is a link through ..data, which the kubelet swaps at every update.
        caller_keys=Path(caller_keys).absolute() if caller_keys else None,
        target=args.target,
        management_target=args.management_target,
        models=tuple(args.models),
        rembg_default_model=args.rembg_default_model,
        max_body_bytes=args.max_body_bytes,
        max_pixels=args.max_pixels,
        max_in_flight=args.max_in_flight,
        timeout=args.timeout,
        url_hosts=tuple(args.allow_url_host),
        grpc_port=grpc_port(args.grpc_port or env.get(GRPC_PORT_ENV) or None),
        grpc_host=args.host,
    )


def grpc_port(text: str | None) -> int | None:
    """The gRPC front's port from --grpc-port or $U2SERVE_GRPC_PORT; None (no front) when neither is set."""
    if text is None:
        return None
    if not text.strip().isdigit():
        raise SettingsError(f"grpc port {text!r} (--grpc-port or ${GRPC_PORT_ENV}); accepted: a port number 1-65535")
    return int(text)
