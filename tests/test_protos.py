"""The .proto files: TorchServe's three are its own, byte for byte; ours generates what the SDK imports."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
TORCHSERVE_PROTOS = ("inference.proto", "management.proto", "open_inference_grpc.proto")


def _jar() -> Path:
    spec = importlib.util.find_spec("ts")
    assert spec is not None and spec.submodule_search_locations, "torchserve is not installed (make test installs it)"
    return Path(spec.submodule_search_locations[0]) / "frontend" / "model-server.jar"


@pytest.mark.parametrize("name", TORCHSERVE_PROTOS)
def test_torchserve_protos_equal_the_installed_jars(name):
    # An upgrade of TorchServe that changes its API shows up here, not as a confusing runtime error.
    with zipfile.ZipFile(_jar()) as jar:
        assert (PROTOS / name).read_bytes() == jar.read(name), f"protos/{name} differs from {_jar().name}'s"


def test_notice_names_the_copied_protos_and_their_licence():
    notice = (ROOT / "NOTICE").read_text()
    assert all(f"protos/{name}" in notice for name in TORCHSERVE_PROTOS)
    assert "TorchServe" in notice and "Apache License, Version 2.0" in notice


def test_generated_stubs_come_from_the_protos(tmp_path):
    """protos/generate.py (the build hook's generator) writes importable modules for every proto."""
    spec = importlib.util.spec_from_file_location("generate", PROTOS / "generate.py")
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    written = {p.name for p in generate.generate(tmp_path / "_generated")}
    for stem in ("inference", "management", "open_inference_grpc", "u2serve"):
        assert {f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"} <= written
    assert set(generate.PROTOS) == {p.name for p in PROTOS.glob("*.proto")}
