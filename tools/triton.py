"""Start, wait for, and stop a real Triton Inference Server for u2serve (`make triton`/`make stop`, the tests).

The server is the `tritonserver` 2.51 that the PyPI package nvidia-pytriton bundles, with its Python
backend. Each server lives in its own home folder (backend directory, key file, log, pid file):

    python tools/triton.py start --home var/triton --repo triton_repo [--models u2netp u2net]
    python tools/triton.py stop --home var/triton

Security as with TorchServe (tools/torchserve.py): every endpoint binds 127.0.0.1; the inference API
needs the inference key and the model-repository, shared-memory, trace and logging APIs the
management key, each sent as `authorization: Bearer <key>` (Triton's --grpc-restricted-protocol and
--http-restricted-api). The keys are written at every start to `<home>/key_file.json` in TorchServe's
format, owner-only, which the SDK reads as it reads TorchServe's. Health, metadata, model config and
statistics stay open on loopback for probes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python tools/triton.py`: its siblings are imported as the tools package
    sys.path.insert(0, str(ROOT))
from tools.process import ProcessError, ServerHandle, ServerProcess  # noqa: E402
from tools.torchserve import free_ports  # noqa: E402

# The Python-based backends of handler/triton.py's repositories: backends/<name>/model.py.
PY_BACKENDS = ROOT / "handler" / "triton_backends"
SEGMENT_BACKEND = "u2serve_segment"
# The backends that import the handler package: the segment model and the CPU stand-in for libtorch.
HANDLER_BACKENDS = (SEGMENT_BACKEND, "u2serve_torchscript")
# The stubs' own environment (see stub_env); gitignored like .venv.
STUB_ENV = ROOT / ".venv-triton"
STUB_ENV_MARKER = "u2serve-stub-env.txt"
STUB_NUMPY = "numpy==1.26.4"
# Triton's names of the API groups that need a key (the rest: health, metadata, model-config, statistics).
INFERENCE_APIS = ("inference",)
MANAGEMENT_APIS = ("model-repository", "shared-memory", "trace", "logging")


class ServerError(ProcessError):
    """Triton could not be found, started, reached or stopped."""


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> Ports:
        return cls(*free_ports(len(fields(cls))))


@dataclass(frozen=True)
class Runtime:
    """Where nvidia-pytriton keeps tritonserver, its Python backend, the stub per Python version and its libraries."""

    root: Path

    @classmethod
    def find(cls) -> Runtime:
        # Found, not imported: only its bundled server is used (its Python API wants numpy < 2).
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise ServerError("nvidia-pytriton is not installed: `make triton` installs it into .venv")
        root = Path(spec.origin).resolve().parent
        runtime = cls(root)
        missing = [p for p in (runtime.tritonserver, runtime.python_backend, runtime.stub) if not p.exists()]
        if missing:
            raise ServerError(f"incomplete nvidia-pytriton install, missing {[str(p) for p in missing]}")
        return runtime

    @property
    def tritonserver(self) -> Path:
        return self.root / "tritonserver" / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "tritonserver" / "backends" / "python"

    @property
    def stub(self) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"

    @property
    def libs(self) -> Path:
        return self.root.parent / "nvidia_pytriton.libs"


def backend_directory(runtime: Runtime, home: Path) -> Path:
    """`<home>/backends`: the Python backend with the stub of this interpreter, and u2serve's Python-based backends.

    Triton runs the stub it finds in backends/python/ (as pytriton itself arranges it).
    """
    backends = home / "backends"
    shutil.rmtree(backends, ignore_errors=True)
    python = backends / "python"
    python.mkdir(parents=True)
    for item in runtime.python_backend.iterdir():
        if item.is_file():  # copies: Triton refuses a backend library that resolves outside its directory
            shutil.copy2(item, python / item.name)
    shutil.copy2(runtime.stub, python / "triton_python_backend_stub")
    for backend in sorted(PY_BACKENDS.iterdir()):
        if (backend / "model.py").is_file():
            shutil.copytree(backend, backends / backend.name, ignore=shutil.ignore_patterns("__pycache__"))
    # Both backends import the handler package (the handler's pipeline; its engines), carried beside each.
    for backend in HANDLER_BACKENDS:
        package = backends / backend / "handler"
        package.mkdir()
        for src in (ROOT / "handler").glob("*.py"):
            shutil.copy2(src, package / src.name)
    return backends


def stub_env(path: Path = STUB_ENV) -> Path:
    """The Python environment the Python-backend stubs run in, made if missing; returns its bin/.

    Triton 2.51's Python backend exchanges tensors with numpy 1.x only (under numpy 2 its BYTES inputs
    fail to deserialise, killing the stub, and its outputs come back empty), while this project's venv
    has numpy 2. So the stubs get a venv of their own holding numpy < 2 and seeing everything else of
    this interpreter's environment (torch, Pillow, the handler's dependencies) through a .pth file.
    """
    python = path / "bin" / "python"
    marker = path / STUB_ENV_MARKER
    if not marker.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", STUB_NUMPY], check=True
        )
        site_packages = sysconfig.get_paths()["purelib"]
        (Path(_purelib(python)) / "u2serve-venv.pth").write_text(f"import site; site.addsitedir({site_packages!r})\n")
        marker.write_text(f"{STUB_NUMPY}\n{site_packages}\n")
    return path / "bin"


def _purelib(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


def server_env(runtime: Runtime, stub_bin: Path) -> dict[str, str]:
    """The environment tritonserver and its Python stubs need.

    The stub loads libpython through the dynamic linker: this interpreter's own library directory
    comes first (else a system libpython of another patch level is picked and models fail to load).
    The stub finds packages through the `python3` first on PATH: the stub environment's.
    """
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(runtime.libs), env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = f"{stub_bin}{os.pathsep}{env.get('PATH', '')}"
    return env


def new_keys() -> dict[str, dict[str, str]]:
    """Fresh keys in the layout of TorchServe's key_file.json, which u2net_client._auth reads."""
    return {api: {"key": secrets.token_urlsafe(24)} for api in ("inference", "management")}


def restriction_args(keys: dict[str, str]) -> list[str]:
    """tritonserver options that make the inference and management API groups demand their key."""
    args = []
    for api, groups in (("inference", INFERENCE_APIS), ("management", MANAGEMENT_APIS)):
        header = f"authorization=Bearer {keys[api]}"
        args += [f"--grpc-restricted-protocol={','.join(groups)}:{header}"]
        args += [f"--http-restricted-api={','.join(groups)}:{header}"]
    return args


@dataclass
class Server(ServerHandle):
    """A tritonserver started by `start`; its files live under `home`. `stop` ends its Python stubs too."""

    home: Path
    ports: Ports
    models: list[str]

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "tritonserver.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "tritonserver.pid"

    @property
    def process(self) -> ServerProcess:
        return ServerProcess("tritonserver", self.pid_file, self.log_file, marker="tritonserver", error=ServerError)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def keys(self) -> dict[str, str]:
        return {api: entry["key"] for api, entry in json.loads(self.key_file.read_text()).items()}

    def http(self, path: str, key: str | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET `path` on the HTTP endpoint (with `key` as the bearer token if given): (status, body)."""
        headers = {"authorization": f"Bearer {key}"} if key else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports.http}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def statistics(self, model: str) -> dict:
        """Triton's statistics of `model` (open without a key), parsed."""
        status, body = self.http(f"/v2/models/{model}/stats")
        if status != 200:
            raise ServerError(f"statistics of {model}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.metrics}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until ServerReady (every model loaded); raises ServerError with the log's tail otherwise."""
        self.process.wait_until(self._ready, timeout, what="ServerReady (/v2/health/ready)")

    def _ready(self) -> bool:
        try:
            return self.http("/v2/health/ready", timeout=2.0)[0] == 200
        except OSError:
            return False


def start(home: Path, repo: Path, models: list[str] | None = None, ports: Ports | None = None) -> Server:
    """Start tritonserver in the background serving `repo` (only `models` and what they call, if given).

    Returns at once; call `wait_ready`. With `models`, Triton runs in explicit model-control mode
    and loads those models and their networks (`<model>_network`).
    """
    home = home.resolve()
    server = Server(home, ports or Ports(), models or [])
    server.process.check_not_running()
    if not (repo / "u2netp").is_dir() and not models:
        raise ServerError(f"{repo} holds no u2serve model repository; run `make triton` or `python -m handler.triton`")
    runtime = Runtime.find()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)  # the key file lands here
    keys = new_keys()
    server.key_file.unlink(missing_ok=True)
    fd = os.open(server.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f)
    p = server.ports
    cmd = [
        str(runtime.tritonserver),
        f"--model-repository={repo.resolve()}",
        f"--backend-directory={backend_directory(runtime, home)}",
        "--http-address=127.0.0.1", f"--http-port={p.http}",
        "--grpc-address=127.0.0.1", f"--grpc-port={p.grpc}",
        "--metrics-address=127.0.0.1", f"--metrics-port={p.metrics}",
        "--exit-on-error=true",
        *restriction_args({api: entry["key"] for api, entry in keys.items()}),
    ]  # fmt: skip
    if models:
        cmd += ["--model-control-mode=explicit"]
        cmd += [f"--load-model={m}" for name in models for m in (f"{name}_network", name)]
    server.process.start(cmd, cwd=home, env=server_env(runtime, stub_env()))
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "stub-env"])
    parser.add_argument("--home", type=Path, default=ROOT / "var" / "triton")
    parser.add_argument("--repo", type=Path, default=ROOT / "triton_repo")
    parser.add_argument("--models", nargs="+", help="load only these (and their networks); default: the repository")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    server = Server(args.home.resolve(), Ports(), args.models or [])
    if args.command == "stub-env":
        print(f"the Python backend's stubs run with {stub_env()}/python3")
        return 0
    try:
        if args.command == "stop":
            print("tritonserver stopped" if server.stop() else "tritonserver was not running")
            return 0
        server = start(args.home, args.repo, args.models)
        server.wait_ready(args.timeout)
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    p = server.ports
    print(
        f"tritonserver is serving {args.repo}\n"
        f"  gRPC (KServe v2)   127.0.0.1:{p.grpc}\n"
        f"  HTTP               http://127.0.0.1:{p.http}\n"
        f"  metrics            http://127.0.0.1:{p.metrics}/metrics\n"
        f"  token keys         {server.key_file}\n"
        f"  log                {server.log_file}\n"
        f"  stop with          make stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
