"""Build hook: the package's gRPC stubs are generated from protos/ by protoc while it is built.

Everything else about the package is in pyproject.toml. In an editable install the stubs are written
into the source package (client/u2serve/core/_generated, ignored by git); in a wheel, into the build.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
GENERATED = Path("u2serve") / "core" / "_generated"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("u2serve_protos_generate", ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    """build_py, then protoc over protos/*.proto into u2serve/core/_generated."""

    def run(self) -> None:
        super().run()
        base = ROOT / "client" if self.editable_mode else Path(self.build_lib)
        _generator().generate(base / GENERATED)


setup(cmdclass={"build_py": BuildPyWithStubs})
