"""`make docker-test`: build the CPU image from a local Debian base, run it, check it through its published ports.

    python tools/docker_test.py [--image u2serve:cpu] [--torch-index URL]

Each check prints PASS or FAIL; the last line counts them. Exit 1 when a check fails, 2 when no engine
can build or run here (the reason is printed). Nothing is left behind but the image (and the base and
layer cache the engine keeps): the container is removed, and its mounts and processes are checked gone.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import reference_dir
from tools.container import Engine, EngineError, find_engine, limit_ulimits, local_base, pip_build
from tools.torchserve import Ports, Server, ServerError, start
from u2net_client import U2NetClient, U2NetError
from u2serve.web.settings import DEFAULT_PORT as WEB_PORT_IN_IMAGE
from u2serve.web.settings import REMBG_DEFAULT_MODEL as REMBG_MODEL

log = logging.getLogger("docker_test")

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "docker"  # the debootstrap base's tar, containers.conf, the build's pip.conf
MODELS = ["u2netp", "u2net"]
CONTAINER_PORTS = Ports()  # what the image's config listens on
STOP_WITHIN_S = 5.0
KEY_FILE_IN_IMAGE = "/home/u2serve/key_file.json"
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # as `make docker-cpu`; the build probes it


@dataclass
class ContainerServer(Server):
    """The running container as a tools.torchserve.Server: its key file copied out, its ports published."""

    engine: Engine | None = None
    name: str = ""
    web_port: int = 0  # the gateway's port, published on 127.0.0.1

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def alive(self) -> bool:
        state = self.engine("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def log_tail(self, lines: int = 60) -> str:
        out = self.engine("logs", "--tail", str(lines), self.name, check=False)
        return out.stdout + out.stderr


@dataclass
class Run:
    """What the checks need: the container, the reference server's answers, the image sent."""

    engine: Engine
    container: ContainerServer
    reference: dict[str, tuple[bytes, bytes, str]]  # model -> (mask array bytes, cutout array bytes, weights)
    image: Path
    results: list[tuple[str, bool, str]] = field(default_factory=list)


def reference_image() -> Path:
    images = reference_dir() / "images"
    found = sorted(images.glob("*.jpg"))
    if not found:
        raise SystemExit(f"no reference images in {images}: set U2SERVE_REFERENCE_DIR")
    return found[0]


def answers(server: Server, image: Path) -> dict[str, tuple[bytes, bytes, str]]:
    """Mask and cutout arrays (and weight origin) of each model, over gRPC with the inference key."""
    out = {}
    with U2NetClient(server.grpc_target, server.grpc_management_target, key_file=server.key_file) as client:
        for model in server.models:
            mask, cutout = client.mask(image, model), client.cutout(image, model)
            out[model] = (mask.array.tobytes(), cutout.array.tobytes() + str(cutout.array.shape).encode(), mask.weights)
    return out


# -- checks: each returns what it saw, raises AssertionError when wrong ---------------------------------------


def check_ping_with_token(run: Run) -> str:
    key = run.container.keys()["inference"]
    req = urllib.request.Request(
        f"http://127.0.0.1:{run.container.ports.inference}/ping", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        status = json.loads(resp.read())["status"]
    assert status == "Healthy", status
    with U2NetClient(run.container.grpc_target, key_file=run.container.key_file) as client:
        assert client.ping(), "gRPC ping with the key: not healthy"
    return "REST /ping and gRPC ping with the inference key: Healthy"


def check_no_token_refused(run: Run) -> str:
    url = f"http://127.0.0.1:{run.container.ports.inference}/predictions/u2netp"
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=run.image.read_bytes()), timeout=30)
    except urllib.error.HTTPError as exc:
        rest = exc.code
    else:
        raise AssertionError("a prediction without the token was answered")
    assert rest in (400, 401, 403), rest
    with U2NetClient(run.container.grpc_target, token="not-the-key", management_token="not-the-key") as client:
        try:
            client.mask(run.image, "u2netp")
        except U2NetError as exc:
            grpc_code = exc.code.name
        else:
            raise AssertionError("a gRPC mask with a wrong token was answered")
    assert grpc_code == "UNAUTHENTICATED", grpc_code
    return f"REST without a token: {rest}; gRPC with a wrong token: {grpc_code}"


def check_same_answers(run: Run) -> str:
    served = answers(run.container, run.image)
    for model in MODELS:
        want, got = run.reference[model], served[model]
        assert got[2] == want[2], f"{model}: weights {got[2]!r}, the test server's {want[2]!r}"
        for i, kind in enumerate(("mask", "cutout")):
            if got[i] != want[i]:
                a, b = np.frombuffer(got[i], np.uint8), np.frombuffer(want[i], np.uint8)
                diff = int(np.abs(a.astype(int) - b.astype(int)).max()) if a.size == b.size else "shape"
                raise AssertionError(f"{model} {kind} differs from the test server's (max difference {diff})")
    return f"{run.image.name}: masks and cutouts of {', '.join(MODELS)} equal the test server's"


def check_not_root(run: Run) -> str:
    script = (
        "import pathlib\n"
        "for p in pathlib.Path('/proc').glob('[0-9]*/status'):\n"
        "    try: print(p.parent.name, [l.split()[1] for l in p.read_text().splitlines() if l.startswith('Uid:')][0])\n"
        "    except OSError: pass\n"
    )
    out = run.engine("exec", run.container.name, "python", "-c", script).stdout
    uids = {line.split()[1] for line in out.splitlines()}
    assert uids and "0" not in uids, f"uids in the container: {uids}"
    return f"{len(out.splitlines())} processes, uids {sorted(uids)}"


def check_healthy(run: Run) -> str:
    if run.engine.name == "podman":  # no systemd timer here: run the image's HEALTHCHECK once
        result = run.engine("healthcheck", "run", run.container.name, check=False)
        assert result.returncode == 0, f"podman healthcheck run: {result.stdout}{result.stderr}"
        return "podman healthcheck run: healthy"
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = run.engine("inspect", "--format", "{{.State.Health.Status}}", run.container.name).stdout.strip()
        if status == "healthy":
            return "docker health status: healthy"
        time.sleep(1)
    raise AssertionError(f"health status {status!r} after 60 s")


def check_stop_is_quick(run: Run) -> str:
    began = time.monotonic()
    run.engine("stop", "-t", "30", run.container.name, timeout=60)
    took = time.monotonic() - began
    code = run.engine("inspect", "--format", "{{.State.ExitCode}}", run.container.name).stdout.strip()
    assert took < STOP_WITHIN_S, f"stop took {took:.1f} s (exit code {code}): SIGTERM did not end TorchServe"
    return f"stopped in {took:.1f} s (exit code {code})"


def check_web_ready(run: Run) -> str:
    url = f"{run.container.web_url}/readyz"
    deadline = time.monotonic() + 60  # the gateway starts once TorchServe has written its key file
    while True:
        try:
            ready = httpx.get(url, timeout=30)
            if ready.status_code == 200 or time.monotonic() > deadline:
                break
        except httpx.TransportError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}: {exc!r}") from exc
        time.sleep(1)
    assert ready.status_code == 200 and ready.json()["ready"] is True, f"/readyz {ready.status_code}: {ready.text}"
    assert ready.json()["models"] == dict.fromkeys(MODELS, True), ready.text
    return f"/readyz 200 {ready.json()}"


def check_web_page(run: Run) -> str:
    page = httpx.get(f"{run.container.web_url}/", timeout=30)
    assert page.status_code == 200, f"/ answered {page.status_code}"
    assert page.headers["content-type"].startswith("text/html"), page.headers["content-type"]
    assert 'data-testid="drop"' in page.text and 'data-testid="file-input"' in page.text, page.text[:300]
    return f"/ 200 text/html, {len(page.content)} bytes with the drop zone"


def check_web_api_remove(run: Run) -> str:
    """rembg's call through the published port: the cutout's alpha is the mask the container's gRPC serves."""
    url = f"{run.container.web_url}/api/remove"
    files = {"file": (run.image.name, run.image.read_bytes(), "image/jpeg")}
    key = run.container.keys()["inference"]
    with httpx.Client(timeout=300) as http:
        refused = {"no key": http.post(url, files=files).status_code}
        refused["wrong key"] = http.post(url, files=files, headers={"X-Api-Key": "not-the-key"}).status_code
        answer = http.post(url, files=files, headers={"X-Api-Key": key})
    assert refused == {"no key": 401, "wrong key": 403}, f"without the key: {refused}"
    assert answer.status_code == 200, f"/api/remove with the key: {answer.status_code} {answer.text[:300]}"
    assert answer.headers["content-type"] == "image/png", answer.headers["content-type"]
    cutout = Image.open(io.BytesIO(answer.content))
    with Image.open(run.image) as original:
        size = original.size
    assert cutout.format == "PNG" and cutout.mode == "RGBA" and cutout.size == size, (cutout.mode, cutout.size)
    with U2NetClient(run.container.grpc_target, key_file=run.container.key_file) as client:
        served = client.mask(run.image, REMBG_MODEL).array
    alpha = np.asarray(cutout)[..., 3]
    diff = int(np.abs(alpha.astype(int) - served.astype(int)).max())
    assert diff == 0, f"the cutout's alpha differs from the container's {REMBG_MODEL} gRPC mask by up to {diff}"
    assert served.tobytes() == run.reference[REMBG_MODEL][0], f"{REMBG_MODEL}: mask differs from the test server's"
    return (f"{run.image.name}: PNG {size[0]}x{size[1]} RGBA whose alpha equals the {REMBG_MODEL} mask (container "
            f"gRPC and test server); no key {refused['no key']}, wrong key {refused['wrong key']}")  # fmt: skip


CHECKS: tuple[Callable[[Run], str], ...] = (
    check_ping_with_token,
    check_no_token_refused,
    check_same_answers,
    check_not_root,
    check_web_ready,  # before the health check: it asks /readyz too
    check_web_page,
    check_web_api_remove,
    check_healthy,
    check_stop_is_quick,  # last: it ends the container
)


# -- build, run, clean up -----------------------------------------------------------------------------------


def build(engine: Engine, image: str, torch_index: str) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    base = local_base(engine, CACHE)
    limit_ulimits(engine, base, CACHE)
    pip = pip_build(engine, CACHE)
    flags = ["--format", "docker"] if engine.name == "podman" else []  # OCI images drop HEALTHCHECK
    args = ["--build-arg", f"BASE={base}", "--build-arg", "SERVING=cpu", "--build-arg", f"TORCH_INDEX={torch_index}"]
    engine.stream("build", *flags, "--network", "host", "--force-rm", "-t", image, *args, *pip.flags, str(ROOT))


def publish_flags(ports: Ports, web_port: int) -> list[str]:
    apis = [f.name for f in fields(Ports) if f.name != "worker_base"]  # worker sockets stay inside
    pairs = [(getattr(ports, api), getattr(CONTAINER_PORTS, api)) for api in apis] + [(web_port, WEB_PORT_IN_IMAGE)]
    return [flag for host, inside in pairs for flag in ("-p", f"127.0.0.1:{host}:{inside}")]


def start_container(engine: Engine, image: str, home: Path) -> ContainerServer:
    ports = Ports.free()
    web_port = ports.worker_base  # a free port of its own: the container's workers use their own range inside
    name = f"u2serve-docker-test-{os.getpid()}"
    # podman's health timer needs systemd: checked by `podman healthcheck run` instead.
    health = ["--health-interval", "disable"] if engine.name == "podman" else ["--health-interval", "2s"]
    engine("run", "-d", "--name", name, *health, *publish_flags(ports, web_port), image)
    server = ContainerServer(home, ports, MODELS, engine=engine, name=name, web_port=web_port)
    home.mkdir(mode=0o700)
    deadline = time.monotonic() + 120
    while engine("exec", name, "test", "-s", KEY_FILE_IN_IMAGE, check=False).returncode != 0:
        if time.monotonic() > deadline or not server.alive():
            raise ServerError(f"the container wrote no key file:\n{server.log_tail()}")
        time.sleep(1)
    server.key_file.write_text(engine("exec", name, "cat", KEY_FILE_IN_IMAGE).stdout)
    server.key_file.chmod(0o600)
    return server


def leftovers(engine: Engine, name: str, mounts_before: set[str]) -> list[str]:
    """Containers, mounts and processes of this run still there after it."""
    found = []
    if engine("ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}").stdout.strip():
        found.append(f"container {name}")
    found += [f"mount {m}" for m in _mounts() - mounts_before if "container" in m or "overlay" in m]
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = proc.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if name in cmdline and str(os.getpid()) != proc.parent.name:
            found.append(f"process {proc.parent.name}: {cmdline[:120]}")
    return found


def _mounts() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="u2serve:cpu")
    parser.add_argument("--torch-index", default=DEFAULT_TORCH_INDEX, help="extra index for torch ('' for none)")
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="build the image (and its base) and stop: CI builds it beside the test suite, and the run that "
        "follows finds its layers cached",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="docker-test %(asctime)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request of the web checks
    began = time.monotonic()
    image = reference_image()
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        engine = find_engine(CACHE)
        build(engine, args.image, args.torch_index)
    except EngineError as exc:
        print(f"docker-test: cannot build the image here: {exc}", file=sys.stderr)
        return 2
    built = time.monotonic()
    log.info("built %s with %s in %.0f s", args.image, engine.name, built - began)
    if args.build_only:
        return 0
    mounts_before = _mounts()
    with tempfile.TemporaryDirectory(prefix="u2serve-docker-test-") as tmp:
        reference = start(Path(tmp, "reference"), ROOT / "model_store", MODELS, Ports.free())
        container = None
        results: list[tuple[str, bool, str]] = []
        try:
            container = start_container(engine, args.image, Path(tmp, "container"))
            reference.wait_ready(timeout=300)
            container.wait_ready(timeout=300)
            log.info("container and test server ready after %.0f s", time.monotonic() - built)
            run = Run(engine, container, answers(reference, image), image)
            reference.stop()
            for check in CHECKS:
                try:
                    results.append((check.__name__, True, check(run)))
                except (AssertionError, U2NetError, OSError, EngineError, httpx.HTTPError, KeyError, ValueError) as exc:
                    results.append((check.__name__, False, str(exc)))
        except (ServerError, EngineError, OSError) as exc:
            results.append(("start", False, str(exc)))
        finally:
            reference.stop()
            name = container.name if container else f"u2serve-docker-test-{os.getpid()}"
            engine("rm", "-f", "-t", "0", name, check=False)
    left = leftovers(engine, name, mounts_before)
    results.append(("nothing_left_behind", not left, "; ".join(left) or "no container, mount or process"))
    for check_name, ok, said in results:
        print(f"{'PASS' if ok else 'FAIL'} {check_name}: {said}")
    failed = sum(not ok for _, ok, _ in results)
    print(f"docker-test ({engine.name}, {time.monotonic() - began:.0f} s in all, build {built - began:.0f} s):")
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
