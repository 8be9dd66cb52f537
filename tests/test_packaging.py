"""The client SDK as a package: a client-only install pulls no server stack; the wheel holds the SDK only."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

# Runs the networks (or builds a package): the "server" lane, not the pure one (tests/conftest.py).
pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
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


def _fresh_clone(dest: Path) -> Path:
    """A `git clone` of this repository: what a user who installs from a clone starts from (committed files only)."""
    if not (ROOT / ".git").exists():
        pytest.fail(f"{ROOT} is not a git checkout: the packaging test builds from a fresh clone of it")
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(dest)], check=True, timeout=120)
    assert not (dest / "client" / "u2serve" / "core" / "_generated").exists(), "generated stubs are in git"
    return dest


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build` (the sdist, then the wheel built from it) on a fresh clone, in isolated build envs."""
    tmp = tmp_path_factory.mktemp("dist")
    src = _fresh_clone(tmp / "clone")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(tmp / "out"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return tmp / "out"


@pytest.fixture(scope="module")
def wheel(dist) -> zipfile.ZipFile:
    wheels = list(dist.glob("u2serve-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as whl:
        yield whl


def test_sdist_carries_the_protos_and_no_generated_code(dist):
    (sdist,) = dist.glob("u2serve-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"setup.py", "NOTICE", "protos/generate.py", "protos/u2serve.proto", "protos/inference.proto"} <= names
    assert not [n for n in names if "_generated" in n], "generated stubs belong in the wheel only"


def test_wheel_holds_the_layers_the_stubs_and_types(wheel):
    names = set(wheel.namelist())
    for required in (
        "u2serve/__init__.py",
        "u2serve/core/options.py",
        "u2serve/core/errors.py",
        "u2serve/core/_generated/__init__.py",
        "u2serve/core/_generated/inference_pb2.py",
        "u2serve/core/_generated/inference_pb2_grpc.py",
        "u2serve/core/_generated/management_pb2_grpc.py",
        "u2serve/core/_generated/u2serve_pb2.py",
        "u2serve/core/_generated/u2serve_pb2.pyi",
        "u2serve/apps/cli.py",
        "u2serve/apps/evaluation/paper_figures.json",
        "u2serve/web/__main__.py",
        "u2serve/web/static/index.html",
        "u2net_client/__init__.py",
        "u2net_client/cli.py",
        "u2net_client/aio.py",
        "u2net_client/py.typed",
    ):
        assert required in names, f"{required} missing from the wheel"
    top = {name.split("/")[0] for name in names}
    expected = {"u2serve", "u2net_client", next(t for t in top if t.endswith(".dist-info"))}
    assert top == expected, f"unexpected packages: {top}"


def test_wheel_declares_the_console_script_and_client_only_requirements(wheel):
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    entry_points = wheel.read(info).decode()
    assert re.search(r"(?m)^\[console_scripts\]\s*$", entry_points)
    assert re.search(r"(?m)^u2net-client\s*=\s*u2serve\.apps\.cli:main\s*$", entry_points)
    metadata = wheel.read(info.replace("entry_points.txt", "METADATA")).decode()
    unconditional = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert unconditional and not [r for r in unconditional if SERVER_ONLY.match(_name(r))], unconditional


CLIENT_CALL = """
import sys
from u2net_client import U2NetClient
for server_only in ("torch", "ts", "handler"):
    try:
        __import__(server_only)
    except ImportError:
        continue
    sys.exit(f"{server_only} is importable in the client-only venv")
target, management, token, image = sys.argv[1:5]
with U2NetClient(target, management, token=token, timeout=120) as client:
    mask = client.mask(image)
print(mask.image.mode, *mask.image.size, mask.model)
"""


def test_wheel_in_a_venv_without_torch_or_torchserve_calls_the_server(wheel, tmp_path, server, reference_dir):
    """What a client-only user gets: the wheel in a new venv (no torch, no TorchServe) masks an image for real."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel.filename],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    names = {_name(line) for line in installed.stdout.splitlines() if line.strip()}
    assert not [n for n in names if SERVER_ONLY.match(n)], names
    image = reference_dir / "images" / "im_01.png"
    token = server.keys()["inference"]
    call = subprocess.run(
        [str(python), "-c", CLIENT_CALL, server.grpc_target, server.grpc_management_target, token, str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the repository: nothing of it on sys.path
    )
    assert call.returncode == 0, call.stderr[-3000:]
    mode, width, height, model = call.stdout.split()
    with Image.open(image) as im:
        assert (mode, int(width), int(height), model) == ("L", *im.size, "u2netp")
