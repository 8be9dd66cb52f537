"""`make k8s-test`: the Deployment of deploy/k8s run for real with `podman kube play`, checked through its port.

    python tools/k8s_test.py [--image u2serve:cpu] [--skip-build]

Builds the image as docker-test does (its layers cached), renders the Deployment with that image, hostPorts
on 127.0.0.1 for the gateway's HTTP and gRPC ports and a generated key, plays it, and checks through the
published ports: /readyz, a mask and a cutout with the key over HTTP and through the SDK over gRPC, refused
without it (401/403, UNAUTHENTICATED), TorchServe's ports closed on the pod's address, a key rotation, and
that a killed TorchServe comes back while the SDK (`U2NetClient` and its RetryPolicy) rides through. Then
`podman kube down` and nothing of it left. Each check prints PASS or FAIL; what it measured goes to
build/k8s-test.json. Exit 1 when a check fails, 2 when podman cannot run here.

What podman does not do as a kubelet does, and what the render does instead (docs/deployment.md):
the Secret and ConfigMap volumes become host folders in the kubelet's layout (podman 4.3.1 crashes playing
a Secret volume, and would not update one in place), so the rotation is the kubelet's atomic swap made on
that folder; podman runs no
probe without systemd's timers, so the restart comes from the restartPolicy (the entrypoint exits when
TorchServe does), not from the livenessProbe.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.container import Engine, EngineError, apt_install, find_engine
from tools.docker_test import CACHE, DEFAULT_TORCH_INDEX, build, reference_image
from tools.torchserve import free_ports
from u2net_client import RetryPolicy, U2NetClient, U2NetError

log = logging.getLogger("k8s_test")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "k8s"
RECORD = ROOT / "build" / "k8s-test.json"
MODELS = ("u2netp", "u2net")
READY_WITHIN_S = 600  # both models load on a shared 2-core machine
RECOVER_WITHIN_S = 600
# The rider's policy: retries (UNAVAILABLE while the container restarts, RESOURCE_EXHAUSTED while workers
# start) until the call's deadline, RECOVER_WITHIN_S, at most 2 s apart: a restart of a minute or more rides.
RIDE = RetryPolicy(max_attempts=1000, initial_backoff=0.5, max_backoff=2.0)
JAVA_MAIN = b"org.pytorch.serve.ModelServer"


@dataclass
class Pod:
    """The played pod: its name, its container, the gateway's published URL and gRPC target, the host folders
    it mounts."""

    engine: Engine
    name: str
    container: str
    url: str
    grpc_target: str
    keys_dir: Path
    manifest: Path
    key: str  # the Secret's key at the start

    def inspect(self, fmt: str) -> str:
        return self.engine("inspect", "--format", fmt, self.container).stdout.strip()


@dataclass
class Run:
    pod: Pod
    key: str
    image: bytes
    measured: dict[str, object] = field(default_factory=dict)


# -- rendering ------------------------------------------------------------------------------------------------


def write_secret_folder(folder: Path, keys: str, version: int) -> None:
    """The Secret's file as the kubelet writes it: a new timestamped folder, `..data` swapped to it at once."""
    data = folder / f"..k8s_test_{version}"
    data.mkdir(mode=0o755)
    (data / "keys").write_text(keys)
    (data / "keys").chmod(0o644)
    (folder / "..data_tmp").symlink_to(data.name)
    (folder / "..data_tmp").rename(folder / "..data")
    if not (folder / "keys").is_symlink():
        (folder / "keys").symlink_to("..data/keys")


def render(image: str, name: str, ports: dict[str, int], work: Path, key: str) -> Path:
    """deploy/k8s's Deployment for podman: the local image, one replica, the gateway's ports on 127.0.0.1
    (`ports`: host port by container port name), the Secret and ConfigMap as host folders (their files as the
    kubelet lays them out), emptyDirs too."""
    docs = {d["kind"]: d for p in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d}
    deployment = copy.deepcopy(docs["Deployment"])
    deployment["metadata"]["name"] = name
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    container["image"] = image
    for p in container["ports"]:
        p.update(hostPort=ports[p["name"]], hostIP="127.0.0.1")
    volumes = {}
    for volume in pod["volumes"]:
        folder = work / volume["name"]
        folder.mkdir(mode=0o755)
        if "secret" in volume:
            write_secret_folder(folder, f"{key}\n", 1)
        elif "configMap" in volume:
            for file, text in docs["ConfigMap"]["data"].items():
                (folder / file).write_text(text)
                (folder / file).chmod(0o644)
        elif os.geteuid() == 0:  # emptyDir: writable by the pod's user (podman here runs as root)
            os.chown(folder, pod["securityContext"]["runAsUser"], pod["securityContext"]["fsGroup"])
        volumes[volume["name"]] = folder
    for mount in container["volumeMounts"]:  # a subPath mount becomes the file itself
        if sub := mount.pop("subPath", None):
            mount["name"] = f"{mount['name']}-file"
            volumes[mount["name"]] = volumes[mount["name"].removesuffix("-file")] / sub
    pod["volumes"] = [
        {"name": n, "hostPath": {"path": str(p), "type": "File" if p.is_file() else "Directory"}}
        for n, p in volumes.items() if any(m["name"] == n for m in container["volumeMounts"])
    ]  # fmt: skip
    out = work / "deployment.yaml"
    out.write_text(yaml.safe_dump(deployment, sort_keys=False))
    return out


# -- checks: each returns what it saw, raises AssertionError when wrong ---------------------------------------


def wait_ready(url: str, within_s: float) -> float:
    began = time.monotonic()
    last = ""
    while time.monotonic() - began < within_s:
        try:
            answer = httpx.get(f"{url}/readyz", timeout=10)
            if answer.status_code == 200:
                return time.monotonic() - began
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(1)
    raise AssertionError(f"/readyz not 200 within {within_s:.0f} s: {last}")


def post(run: Run, path: str, key: str | None, timeout: float = 120) -> httpx.Response:
    headers = {"X-Api-Key": key} if key else {}
    return httpx.post(f"{run.pod.url}{path}", files={"file": ("photo.jpg", run.image)}, headers=headers,
                      timeout=timeout)  # fmt: skip


def check_ready(run: Run) -> str:
    answer = httpx.get(f"{run.pod.url}/readyz", timeout=10)
    assert answer.status_code == 200 and answer.json()["models"] == dict.fromkeys(MODELS, True), answer.text
    return f"/readyz 200 {answer.json()} after {run.measured['ready_s']:.0f} s"


def check_mask_and_cutout(run: Run) -> str:
    seen = []
    with Image.open(io.BytesIO(run.image)) as original:
        size = original.size
    for model in MODELS:
        for task, mode in (("mask", "L"), ("cutout", "RGBA")):
            answer = post(run, f"/v1/models/{model}/{task}", run.key)
            assert answer.status_code == 200, f"{model} {task}: {answer.status_code} {answer.text[:300]}"
            with Image.open(io.BytesIO(answer.content)) as result:
                assert (result.mode, result.size) == (mode, size), (model, task, result.mode, result.size)
            seen.append(f"{model} {task} {mode}")
    return f"with the Secret's key: {', '.join(seen)} {size[0]}x{size[1]}"


def sdk(run: Run, key: str | None, retry: RetryPolicy | None = None) -> U2NetClient:
    """The SDK pointed at the published gRPC port as at the Service: both APIs there, one key ("" sends none)."""
    token = key or ""
    return U2NetClient(run.pod.grpc_target, run.pod.grpc_target, token=token, management_token=token, retry=retry)


def check_grpc_mask_and_cutout_with_the_sdk(run: Run) -> str:
    seen = []
    with Image.open(io.BytesIO(run.image)) as original:
        size = original.size
    with sdk(run, run.key) as client:
        served = sorted(m.name for m in client.models())
        assert served == sorted(MODELS), served
        for model in MODELS:
            mask, cutout = client.mask(run.image, model, timeout=120), client.cutout(run.image, model, timeout=120)
            assert (mask.image.mode, mask.image.size) == ("L", size), (model, mask.image.mode, mask.image.size)
            assert (cutout.image.mode, cutout.image.size) == ("RGBA", size), (model, cutout.image.mode)
            seen.append(f"{model} mask L, cutout RGBA (batch {mask.batch_size})")
    return f"U2NetClient at {run.pod.grpc_target} with the Secret's key: models {served}; {', '.join(seen)}"


def check_grpc_refused_without_the_key(run: Run) -> str:
    codes = []
    for key in (None, "not-the-key"):
        with sdk(run, key) as client:
            try:
                client.mask(run.image, "u2netp", timeout=60)
                codes.append("answered")
            except U2NetError as exc:
                codes.append(exc.code.name)
    assert codes == ["UNAUTHENTICATED", "UNAUTHENTICATED"], codes
    return f"the SDK's U2NetError: no key {codes[0]}, another key {codes[1]} (the gateway answers as TorchServe)"


def check_refused_without_the_key(run: Run) -> str:
    codes = (post(run, "/v1/models/u2netp/mask", None).status_code,
             post(run, "/v1/models/u2netp/mask", "not-the-key").status_code)  # fmt: skip
    assert codes == (401, 403), codes
    return f"no key {codes[0]}, another key {codes[1]}"


def check_torchserve_only_on_loopback(run: Run) -> str:
    address = run.pod.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    assert address, "the pod has no address on podman's network"
    open_ports = []
    for port in (7070, 7071, 8080, 8081, 8082):
        with socket.socket() as s:
            s.settimeout(2)
            if s.connect_ex((address, port)) == 0:
                open_ports.append(port)
    assert not open_ports, f"TorchServe answers on the pod's address {address}: {open_ports}"
    assert httpx.get(f"http://{address}:7000/healthz", timeout=10).status_code == 200
    with grpc.insecure_channel(f"{address}:7001") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
    return f"pod address {address}: the gateway's 7000 and 7001 answer, TorchServe's 7070/7071/8080-8082 refuse"


def check_key_rotation_without_restart(run: Run) -> str:
    restarts = run.pod.inspect("{{.RestartCount}}")
    new = secrets.token_hex(16)
    write_secret_folder(run.pod.keys_dir, f"{run.key}\n{new}\n", 2)  # the overlap: both
    overlap = (post(run, "/v1/models/u2netp/mask", run.key).status_code,
               post(run, "/v1/models/u2netp/mask", new).status_code)  # fmt: skip
    write_secret_folder(run.pod.keys_dir, f"{new}\n", 3)
    after = (post(run, "/v1/models/u2netp/mask", run.key).status_code,
             post(run, "/v1/models/u2netp/mask", new).status_code)  # fmt: skip
    grpc_after = tuple(grpc_answer(run, key) for key in (run.key, new))
    assert overlap == (200, 200) and after == (403, 200), f"overlap {overlap}, after {after}"
    assert grpc_after == ("UNAUTHENTICATED", "OK"), f"gRPC after {grpc_after}"
    assert run.pod.inspect("{{.RestartCount}}") == restarts, "the container restarted"
    run.key = new
    return (f"overlap old/new {overlap}, then old/new {after} (gRPC {grpc_after}), no restart "
            "(the kubelet's swap, made on the folder)")  # fmt: skip


def grpc_answer(run: Run, key: str) -> str:
    with sdk(run, key) as client:
        try:
            client.mask(run.image, "u2netp", timeout=60)
        except U2NetError as exc:
            return exc.code.name
    return "OK"


def java_pids(container_id: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if JAVA_MAIN in (proc / "cmdline").read_bytes() and container_id in (proc / "cgroup").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def check_killed_torchserve_recovers(run: Run) -> str:
    container_id = run.pod.inspect("{{.Id}}")
    (pid,) = java_pids(container_id)
    restarts = int(run.pod.inspect("{{.RestartCount}}"))
    rider = Rider(run)
    rider.start()
    time.sleep(3)  # answered before the kill
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    recovered = killed + wait_ready(run.pod.url, RECOVER_WITHIN_S)
    time.sleep(3)  # answered after
    rider.stop()
    after = int(run.pod.inspect("{{.RestartCount}}"))
    run.measured.update(recovery_s=round(recovered - killed, 1), restarts=after - restarts, rider=rider.summary())
    assert after == restarts + 1, f"restart count {restarts} -> {after}"
    assert rider.failed == 0, f"{rider.failed} SDK calls failed after their retries: {rider.errors[:3]}"
    assert rider.answered_after(killed) and rider.answered_after(recovered), rider.summary()
    s = rider.summary()
    return (f"java {pid} killed; the container restarted ({restarts} -> {after}) and /readyz was 200 again after "
            f"{recovered - killed:.0f} s; the SDK over gRPC (U2NetClient, {RIDE.max_backoff:g} s max backoff): "
            f"{s['answered']} answered, 0 failed, {s['retries']} retries, longest call {s['longest_s']:.0f} s"
            )  # fmt: skip


class CountingRandom(random.Random):
    """The RetryPolicy's source of jitter, which it draws once before each retry: the draws are the retries."""

    def __init__(self) -> None:
        super().__init__()
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return super().uniform(a, b)


class Rider:
    """One caller sending masks back to back through the SDK's gRPC, which retries UNAVAILABLE and
    RESOURCE_EXHAUSTED (RIDE) within each call's deadline of RECOVER_WITHIN_S: what an SDK user of the Service
    sees while a pod restarts. A call that still fails counts as failed."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.answered: list[tuple[float, float]] = []  # (sent, answered)
        self.jitter = CountingRandom()
        self.failed = 0
        self.errors: list[str] = []

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=RECOVER_WITHIN_S)

    def _loop(self) -> None:
        policy = dataclasses.replace(RIDE, rng=self.jitter)
        with sdk(self.run, self.run.key, retry=policy) as client:
            while not self.done.is_set():
                sent = time.monotonic()
                try:
                    client.mask(self.run.image, "u2netp", timeout=RECOVER_WITHIN_S)
                    self.answered.append((sent, time.monotonic()))
                except U2NetError as exc:
                    self.failed += 1
                    self.errors.append(str(exc)[:300])

    @property
    def retries(self) -> int:
        return self.jitter.draws

    def answered_after(self, moment: float) -> bool:
        return any(sent > moment for sent, _ in self.answered)

    def summary(self) -> dict[str, float]:
        longest = max((done - sent for sent, done in self.answered), default=0.0)
        return {"answered": len(self.answered), "failed": self.failed, "retries": self.retries,
                "longest_s": round(longest, 1)}  # fmt: skip


def check_memory_under_the_limit(run: Run) -> str:
    stats = json.loads(run.pod.engine("stats", "--no-stream", "--format", "json", run.pod.container).stdout)
    used, limit = (size_bytes(part) for part in stats[0]["mem_usage"].split("/"))
    run.measured.update(memory_mib=round(used / 2**20), memory_limit_mib=round(limit / 2**20))
    assert used < limit, stats[0]["mem_usage"]
    return f"after both models' masks and cutouts: {stats[0]['mem_usage']} (used / the Deployment's limit)"


def size_bytes(text: str) -> float:
    """podman's "1.878GB" (decimal units) in bytes."""
    number, unit = re.fullmatch(r"\s*([\d.]+)\s*([kMG]?B)\s*", text).groups()  # type: ignore[union-attr]
    return float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


CHECKS: tuple[Callable[[Run], str], ...] = (
    check_ready,
    check_mask_and_cutout,
    check_refused_without_the_key,
    check_grpc_mask_and_cutout_with_the_sdk,
    check_grpc_refused_without_the_key,
    check_torchserve_only_on_loopback,
    check_memory_under_the_limit,
    check_key_rotation_without_restart,
    check_killed_torchserve_recovers,  # last: it restarts the container
)


# -- play, check, tear down ---------------------------------------------------------------------------------


def play(engine: Engine, image: str, work: Path, name: str) -> Pod:
    ports = dict(zip(("http", "grpc"), free_ports(2), strict=True))
    key = secrets.token_hex(16)
    manifest = render(image, name, ports, work, key)
    engine("kube", "play", str(manifest), timeout=300)
    # podman names a Deployment's pod <name>-pod-0 (4.3; other versions differ) and its containers <pod>-<container>.
    (container,) = [c for c in engine("ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}").stdout.split()
                    if c.endswith("-u2serve")]  # fmt: skip
    pod = container.removesuffix("-u2serve")
    url, grpc_target = f"http://127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"
    return Pod(engine, pod, container, url, grpc_target, work / "keys", manifest, key)


def leftovers(engine: Engine, name: str) -> list[str]:
    found = engine("ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}").stdout.split()
    found += engine("pod", "ps", "--filter", f"name={name}", "--format", "{{.Name}}").stdout.split()
    return found


def play_and_check(
    engine: Engine, image: str, work: Path, name: str, measured: dict[str, object]
) -> list[tuple[str, bool, str]]:
    """Play the rendered Deployment in `work`, run CHECKS through its port, and take it down again."""
    work.chmod(0o755)
    results: list[tuple[str, bool, str]] = []
    pod = None
    try:
        pod = play(engine, image, work, name)
        run = Run(pod, pod.key, reference_image().read_bytes(), measured)
        measured["ready_s"] = round(wait_ready(pod.url, READY_WITHIN_S), 1)
        for check in CHECKS:
            try:
                results.append((check.__name__, True, check(run)))
            except (AssertionError, OSError, EngineError, httpx.HTTPError, U2NetError, grpc.FutureTimeoutError,
                    KeyError, ValueError) as exc:  # fmt: skip
                results.append((check.__name__, False, str(exc)))
    except (AssertionError, EngineError, OSError) as exc:
        results.append(("play", False, str(exc)))
        if pod is not None:
            log.info("the pod's log:\n%s", engine("logs", "--tail", "60", pod.container, check=False).stdout)
    finally:
        if pod is not None:
            engine("kube", "down", str(pod.manifest), check=False, timeout=120)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="u2serve:cpu")
    parser.add_argument("--torch-index", default=DEFAULT_TORCH_INDEX, help="extra index for torch ('' for none)")
    parser.add_argument("--skip-build", action="store_true", help="play the image as it is")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="k8s-test %(asctime)s: %(message)s", datefmt="%H:%M:%S")
    # A CI timeout's SIGTERM (and a background job's, whose SIGINT is ignored) still takes the pod down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    began = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        engine = find_engine(CACHE)
        if engine.name != "podman":
            raise EngineError("k8s-test plays the Deployment with `podman kube play`: podman is needed")
        if not shutil.which("catatonit"):  # podman builds its pause image from it
            apt_install(("catatonit",))
        if not args.skip_build:
            build(engine, args.image, args.torch_index)
    except EngineError as exc:
        print(f"k8s-test: cannot run here: {exc}", file=sys.stderr)
        return 2
    built = time.monotonic()
    image = f"localhost/{args.image}" if "/" not in args.image else args.image
    measured: dict[str, object] = {"build_s": round(built - began, 1)}
    name = f"u2serve-k8s-test-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="u2serve-k8s-test-") as tmp:
        results = play_and_check(engine, image, Path(tmp), name, measured)
    left = leftovers(engine, name)
    results.append(("nothing_left_behind", not left, ", ".join(left) or "no pod or container"))
    measured["total_s"] = round(time.monotonic() - began, 1)
    measured["checks"] = {n: {"passed": ok, "said": said} for n, ok, said in results}
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(measured, indent=2) + "\n")
    for check_name, ok, said in results:
        print(f"{'PASS' if ok else 'FAIL'} {check_name}: {said}")
    failed = sum(not ok for _, ok, _ in results)
    times = f"build {measured['build_s']} s, ready {measured.get('ready_s', '-')} s"
    times += f", recovery {measured.get('recovery_s', '-')} s, the SDK rider {measured.get('rider', '-')}"
    print(f"k8s-test (podman kube play, {measured['total_s']} s in all: {times}; {RECORD}):")
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
