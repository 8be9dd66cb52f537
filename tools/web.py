"""Start, wait for, and stop the web gateway beside a TorchServe (used by `make serve`/`make stop` and the tests).

    python tools/web.py start --home var [--host 127.0.0.1] [--port 7000] [--target 127.0.0.1:7070 ...]
    python tools/web.py stop --home var

It runs `python -m u2serve.web` in the background with TorchServe's key file from the home
folder, writes its pid to <home>/web.pid and its log to <home>/logs/web.log, waits until /healthz
answers, and prints the page's address with the key (`http://127.0.0.1:7000/?token=...`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python tools/web.py`: its siblings are imported as the tools package
    sys.path.insert(0, str(ROOT))
from tools.process import ProcessError, ServerHandle, ServerProcess  # noqa: E402

MODULE = "u2serve.web"


class WebError(ProcessError):
    """The gateway could not be started, reached or stopped."""


@dataclass
class Web(ServerHandle):
    """A gateway started by `start`; its pid file and log live under `home`."""

    stop_timeout = 15.0

    home: Path
    host: str = "127.0.0.1"
    port: int = 7000
    grpc_port: int | None = None  # the gRPC front's (--grpc-port); None: none

    @property
    def grpc_target(self) -> str:
        if self.grpc_port is None:
            raise WebError("this gateway was started without a gRPC port")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.grpc_port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "web.pid"

    @property
    def log(self) -> Path:
        return self.home / "logs" / "web.log"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def token(self) -> str:
        return str(json.loads((self.home / "key_file.json").read_text())["inference"]["key"])

    def page_url(self) -> str:
        return f"{self.url}/?token={self.token()}"

    @property
    def process(self) -> ServerProcess:
        return ServerProcess("the web gateway", self.pid_file, self.log, marker=MODULE, error=WebError)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False


def start(web: Web, extra_args: list[str] | None = None, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Start the gateway in the background and wait until /healthz answers; raises WebError with its log."""
    web.process.check_not_running()
    key_file = web.home / "key_file.json"
    if not key_file.is_file():
        raise WebError(f"no {key_file}: start TorchServe first (it writes the key the gateway accepts)")
    grpc_port = ["--grpc-port", str(web.grpc_port)] if web.grpc_port is not None else []
    cmd = [sys.executable, "-m", MODULE, "--host", web.host, "--port", str(web.port), "--key-file", str(key_file),
           *grpc_port, *(extra_args or [])]  # fmt: skip
    proc = web.process.start(cmd)
    try:
        web.process.wait_until(web.answers, timeout, what=f"an answer on {web.url}/healthz", interval=0.3)
    except WebError:
        web.stop()
        raise
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "url"])
    parser.add_argument("--home", type=Path, default=ROOT / "var")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    args, extra = parser.parse_known_args(argv)
    web = Web(args.home.resolve(), args.host, args.port)
    try:
        if args.command == "stop":
            print("web gateway stopped" if web.stop() else "web gateway was not running")
            return 0
        if args.command == "start":
            start(web, extra)
        print(
            f"The page and the HTTP APIs (rembg's /api/remove, /v1, /docs) at {web.url}\n"
            f"  open             {web.page_url()}\n"
            f"  log              {web.log}\n"
            f"  stop with        make stop"
        )
    except (WebError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
