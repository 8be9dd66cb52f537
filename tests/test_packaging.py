"""The client SDK as a package: a client-only install pulls no server stack; the wheel holds the SDK only."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "client" / "u2net_client" / "_generated"
# A client-only install must not drag these in: gigabytes, and a server's attack surface.
SERVER_ONLY = re.compile(r"^(torch|torchserve|torch-model-archiver|torch-workflow-archiver|torchvision|onnx.*)$")


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    """The normalised project name of a requirement string ("torch==2.1; extra" -> "torch")."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"unreadable requirement {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def test_client_only_install_pulls_neither_torch_nor_torchserve():
    project = _pyproject()["project"]
    base = [_name(r) for r in project["dependencies"]]
    assert "grpcio" in base and "protobuf" in base
    assert not [n for n in base if SERVER_ONLY.match(n)], f"server packages in the base install: {base}"
    server = {_name(r): r for r in project["optional-dependencies"]["server"]}
    assert {"torch", "torchserve", "torch-model-archiver"} <= set(server)


def test_server_stack_is_pinned_to_versions_known_to_work_together():
    extras = _pyproject()["project"]["optional-dependencies"]
    loose = [r for r in extras["server"] + extras["dev"] if "==" not in r]
    assert not loose, f"unpinned in [server]/[dev]: {loose}"


def _copy_sources(dest: Path) -> Path:
    """The repository without its environments and build outputs, so a build here touches nothing there."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "var", "model_store", "weights", "*.egg-info", "__pycache__", ".*_cache", "loadtests"
    )
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def _build_wheel(src: Path, out: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check", "-w", str(out)]
    # Building against the environment's setuptools avoids fetching one into an isolated build env.
    try:
        if int(importlib.metadata.version("setuptools").split(".")[0]) >= 68:
            cmd.append("--no-build-isolation")
    except importlib.metadata.PackageNotFoundError:
        pass
    result = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(out.glob("u2serve-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if not (GENERATED / "inference_pb2.py").is_file():
        pytest.skip(f"{GENERATED.relative_to(ROOT)} is missing: run `make protos` before building the wheel")
    tmp = tmp_path_factory.mktemp("wheel")
    with zipfile.ZipFile(_build_wheel(_copy_sources(tmp / "src"), tmp / "dist")) as whl:
        yield whl


def test_wheel_holds_the_sdk_its_stubs_and_types(wheel):
    names = set(wheel.namelist())
    for required in (
        "u2net_client/__init__.py",
        "u2net_client/cli.py",
        "u2net_client/aio.py",
        "u2net_client/py.typed",
        "u2net_client/_generated/__init__.py",
        "u2net_client/_generated/inference_pb2.py",
        "u2net_client/_generated/inference_pb2_grpc.py",
        "u2net_client/_generated/management_pb2_grpc.py",
        "u2net_client/_generated/u2serve_pb2.py",
        "u2net_client/_generated/u2serve_pb2.pyi",
    ):
        assert required in names, f"{required} missing from the wheel"
    top = {name.split("/")[0] for name in names}
    assert top == {"u2net_client", next(t for t in top if t.endswith(".dist-info"))}, f"unexpected packages: {top}"


def test_wheel_declares_the_console_script_and_client_only_requirements(wheel):
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    entry_points = wheel.read(info).decode()
    assert re.search(r"(?m)^\[console_scripts\]\s*$", entry_points)
    assert re.search(r"(?m)^u2net-client\s*=\s*u2net_client\.cli:main\s*$", entry_points)
    metadata = wheel.read(info.replace("entry_points.txt", "METADATA")).decode()
    unconditional = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert unconditional and not [r for r in unconditional if SERVER_ONLY.match(_name(r))], unconditional
