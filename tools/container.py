"""A container engine for `make docker-test`, set up from what this host says, and the local Debian base.

Docker when its engine answers; else podman, installed from Debian's packages when run as root, with a
containers.conf written for this host (never the system's): runc where the cgroup layout is not unified
(crun refuses a hybrid one), cgroupfs and file events where systemd is not the init, and default ulimits
no higher than the hard limits this host and the engine run under (runc cannot raise them).
pip inside the build gets this host's effective pip settings (`pip config list`, environment included)
and CA bundle as build secrets, and the local folders they name as read-only build volumes (podman).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# What podman needs here, from Debian's packages: runc for hybrid cgroup layouts (crun is podman's default).
PODMAN_PACKAGES = ("podman", "runc")
# TorchServe's images bring Java 17; the local base does too, from Debian's packages, with the Python and
# tini the Dockerfile would otherwise fetch package lists for (its first step installs only what is missing).
# debootstrap resolves no virtual packages: python3.11-venv's python3.11-distutils is python3-distutils,
# whose python3:any is python3.
BASE_PACKAGES = ("openjdk-17-jre-headless", "python3.11", "python3.11-venv", "python3-distutils", "python3", "tini")
BUILD_CA_SECRET = "/run/secrets/pip-cert"  # where the Dockerfile mounts the pip-cert secret
# pip settings that name local files or folders; cert travels as a secret of its own.
_PATH_KEYS = ("find-links", "index-url", "extra-index-url", "constraint", "requirement")
_ULIMITS = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC}


class EngineError(RuntimeError):
    """No container engine can build or run here; the message says why."""


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class Engine:
    """`docker` or `podman`, with the environment its commands need (podman: CONTAINERS_CONF)."""

    name: str
    exe: str
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = _run([self.exe, *args], self.env, timeout)
        if check and result.returncode != 0:
            raise EngineError(
                f"{self.name} {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr.strip()}"
            )
        return result

    def stream(self, *args: str) -> None:
        """Run with its output passed through, each line stamped with the seconds since it began (a build)."""
        began = time.monotonic()
        with subprocess.Popen(
            [self.exe, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            for line in proc.stdout or ():
                print(f"[{time.monotonic() - began:5.0f}s] {line}", end="", flush=True)
        if proc.returncode != 0:
            raise EngineError(f"{self.name} {args[0]} failed ({proc.returncode})")

    def has_image(self, ref: str) -> bool:
        return self("image", "inspect", ref, check=False).returncode == 0


# -- the engine ---------------------------------------------------------------------------------------------


def find_engine(work: Path) -> Engine:
    """Docker if its engine answers, else podman (installed as root when missing); EngineError otherwise."""
    reasons = []
    docker = shutil.which("docker")
    if docker:
        info = _run([docker, "info"], timeout=60)
        if info.returncode == 0:
            return Engine("docker", docker)
        reasons.append(f"docker: {(info.stderr.strip().splitlines() or ['no answer'])[-1]}")
    else:
        reasons.append("docker: not installed")
    if not shutil.which("podman"):
        if os.geteuid() != 0:
            raise EngineError(f"{'; '.join(reasons)}; podman: not installed, and only root installs it here")
        apt_install(PODMAN_PACKAGES)
    conf = work / "containers.conf"
    conf.write_text(containers_conf())
    engine = Engine("podman", shutil.which("podman") or "podman", {**os.environ, "CONTAINERS_CONF": str(conf)})
    info = engine("info", "--format", "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}", check=False)
    if info.returncode != 0:
        raise EngineError(f"{'; '.join(reasons)}; podman cannot run here:\n{info.stderr.strip()}")
    log.info("engine: podman (runtime, storage: %s); %s", info.stdout.strip(), "; ".join(reasons))
    return engine


# Seconds apt-get waits for dpkg's lock before giving up.
APT_LOCK_WAIT_S = 600


def apt_install(packages: tuple[str, ...]) -> None:
    if not shutil.which("apt-get"):
        raise EngineError(f"{' '.join(packages)} missing and no apt-get to install them")
    log.info("apt-get install %s", " ".join(packages))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"]  # another apt-get (the browser's install) may hold it
    install = ["apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", *packages]
    for cmd in (["apt-get", *wait, "update", "-q"], install):
        result = _run(cmd, env)
        if result.returncode != 0:
            raise EngineError(f"{' '.join(cmd)} failed:\n{result.stderr.strip()[-2000:]}")


def cgroup_unified(mounts: str) -> bool:
    """Whether /sys/fs/cgroup is one cgroup2 hierarchy (crun's requirement), from /proc/self/mounts' text."""
    return any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in mounts.splitlines() if line.strip())


def containers_conf(ulimits: dict[str, int] | None = None) -> str:
    """containers.conf for this host; `ulimits` (name: hard limit) become default_ulimits."""
    systemd = Path("/run/systemd/system").is_dir()  # systemd is the init
    unified = cgroup_unified(Path("/proc/self/mounts").read_text())
    lines = ["[containers]"]
    if ulimits:
        lines.append("default_ulimits = [" + ", ".join(f'"{k}={v}:{v}"' for k, v in ulimits.items()) + "]")
    lines += ["", "[engine]", f'cgroup_manager = "{"systemd" if systemd else "cgroupfs"}"']
    lines.append(f'events_logger = "{"journald" if systemd else "file"}"')
    if not unified:
        lines.append('runtime = "runc"  # crun refuses a hybrid or legacy cgroup layout')
    return "\n".join(lines) + "\n"


def limit_ulimits(engine: Engine, image: str, work: Path) -> None:
    """Podman: default ulimits at most this host's hard limits and the ones podman itself runs under.

    Podman asks the runtime for 1048576 open files and processes unless told otherwise, and changes its
    own limits at start-up: `--ulimit host` on a container that is created, never started, shows them.
    """
    if engine.name != "podman":
        return
    probe = f"u2serve-ulimit-probe-{os.getpid()}"
    engine("create", "--ulimit", "host", "--name", probe, image, "true")
    try:
        shown = json.loads(engine("inspect", "--format", "{{json .HostConfig.Ulimits}}", probe).stdout)
    finally:
        engine("rm", "-f", probe, check=False)
    engine_limits = {u["Name"].removeprefix("RLIMIT_").lower(): int(u["Hard"]) for u in shown or []}
    limits = {}
    for name, kind in _ULIMITS.items():
        hard = resource.getrlimit(kind)[1]
        candidates = [v for v in (hard, engine_limits.get(name)) if v is not None and v >= 0]
        if candidates:
            limits[name] = min(candidates)
    log.info("default ulimits: %s (host hard: %s; podman's own: %s)", limits,
             {n: resource.getrlimit(k)[1] for n, k in _ULIMITS.items()}, engine_limits)  # fmt: skip
    Path(engine.env["CONTAINERS_CONF"]).write_text(containers_conf(limits))


# -- the local Debian base ----------------------------------------------------------------------------------


def debian_source(os_release: str, sources: list[tuple[str, str]]) -> tuple[str, str, str | None]:
    """(codename, mirror URI, keyring) of the host's Debian main archive, from os-release and apt sources.

    `sources`: (file name, text) of /etc/apt/sources.list and sources.list.d/*, one-line or deb822.
    """
    release = dict(line.split("=", 1) for line in os_release.splitlines() if "=" in line)
    codename = release.get("VERSION_CODENAME", "").strip('"')
    if release.get("ID", "").strip('"') != "debian" or not codename:
        raise EngineError("the local base is made with debootstrap from the host's Debian archive: not a Debian host")
    for name, text in sources:
        for entry in _apt_entries(name, text):
            if "deb" in entry["types"] and codename in entry["suites"] and "main" in entry["components"]:
                return codename, entry["uri"], entry.get("keyring")
    raise EngineError(f"no Debian {codename} main archive in the host's apt sources")


def _apt_entries(name: str, text: str) -> list[dict]:
    if name.endswith(".sources"):
        entries = []
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
            for uri in fields.get("uris", []):
                entry = {"types": fields.get("types", []), "uri": uri, "suites": fields.get("suites", [])}
                entry["components"] = fields.get("components", [])
                if fields.get("signed-by"):
                    entry["keyring"] = fields["signed-by"][0]
                entries.append(entry)
        return entries
    entries = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 4:
            entries.append({"types": [words[0]], "uri": words[1], "suites": [words[2]], "components": words[3:]})
    return entries


def local_base(engine: Engine, cache: Path) -> str:
    """The base image made with debootstrap from the host's Debian archive, kept as a tar under `cache`."""
    sources_dir = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list"), *sorted(sources_dir.glob("*.list")), *sorted(sources_dir.glob("*.sources"))]
    sources = [(p.name, p.read_text()) for p in files if p.is_file()]
    codename, mirror, keyring = debian_source(Path("/etc/os-release").read_text(), sources)
    key = hashlib.sha256(f"{codename} {mirror} {platform.machine()} {BASE_PACKAGES}".encode()).hexdigest()[:12]
    tag = f"localhost/u2serve-base:{codename}-{key}"
    if engine.has_image(tag):
        log.info("base %s: in the engine's storage", tag)
        return tag
    tar = cache / f"base-{codename}-{key}.tar"
    if not tar.is_file():
        if not shutil.which("debootstrap"):
            if os.geteuid() != 0:
                raise EngineError("debootstrap is missing, and only root installs it here")
            apt_install(("debootstrap",))
        rootfs = cache / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        cmd += [f"--keyring={keyring}"] if keyring else []
        log.info("debootstrap %s from %s (%s)", codename, mirror, ", ".join(BASE_PACKAGES))
        result = _run([*cmd, codename, str(rootfs), mirror], timeout=900)
        if result.returncode != 0:
            log_tail = _tail(rootfs / "debootstrap" / "debootstrap.log")
            shutil.rmtree(rootfs, ignore_errors=True)
            raise EngineError(f"debootstrap failed:\n{(result.stdout + result.stderr)[-3000:]}\n{log_tail}")
        partial = tar.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tar)
        shutil.rmtree(rootfs)
    log.info("import %s as %s", tar.name, tag)
    engine("import", str(tar), tag)
    return tag


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- pip inside the build -----------------------------------------------------------------------------------


def pip_settings(listing: str) -> dict[str, dict[str, str]]:
    """{section: {key: value}} from `pip config list`; environment variables (":env:") win, in global."""
    sections: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in listing.splitlines():
        match = re.fullmatch(r"(:env:|[\w-]+)\.([\w-]+)=(.*)", line.strip())
        if not match:
            continue
        section, key, raw = match.groups()
        value = str(ast.literal_eval(raw))
        (env if section == ":env:" else sections.setdefault(section, {}))[key] = value
    sections.setdefault("global", {}).update(env)
    return sections


def _local_path(value: str) -> Path | None:
    parts = urlsplit(value)
    if parts.scheme == "file":
        return Path(parts.path)
    return Path(value) if not parts.scheme and value.startswith("/") else None


@dataclass
class PipBuild:
    """Build flags that hand this host's pip settings to the Dockerfile's install step."""

    flags: list[str]
    dropped: list[str]  # local paths a Docker build cannot mount: pip in the build goes without them


def pip_build(engine: Engine, work: Path) -> PipBuild:
    listing = _run([sys.executable, "-m", "pip", "config", "list"]).stdout
    sections = pip_settings(listing)
    flags: list[str] = []
    dropped: list[str] = []
    volumes: set[Path] = set()
    for values in sections.values():
        cert = values.pop("cert", None)
        if cert and Path(cert).is_file():
            flags += ["--secret", f"id=pip-cert,src={cert}"]
            values["cert"] = BUILD_CA_SECRET
        for key in [k for k in _PATH_KEYS if k in values]:
            kept = [item for item in values[key].split() if _mountable(engine, key, item, volumes, dropped)]
            if kept:
                values[key] = " ".join(kept)
            else:
                del values[key]
    conf = work / "pip.conf"
    conf.write_text("".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in vs.items()) for s, vs in sections.items()))
    conf.chmod(0o600)
    flags += ["--secret", f"id=pip.conf,src={conf}"]
    for path in sorted(volumes):
        flags += ["--volume", f"{path}:{path}:ro"]
    if dropped:
        log.warning("pip in the build goes without these local settings (not mountable here): %s", dropped)
    return PipBuild(flags, dropped)


def _mountable(engine: Engine, key: str, item: str, volumes: set[Path], dropped: list[str]) -> bool:
    """Whether a pip setting's value works in the build: a URL, or a local path podman mounts (added)."""
    path = _local_path(item)
    if path is None:
        return True
    if not path.exists() or engine.name != "podman":  # pip on the host skips a missing one as well
        dropped.append(item)
        return False
    # An index's pages link beside it (simple/ next to files/): its parent goes in too.
    volumes.add(path.parent if key.endswith("index-url") else path)
    return True
