"""Image build: print the requirements of pyproject.toml (build system, dependencies, the extras named).

    python docker/requirements.py server web > requirements.txt

The Dockerfile installs these in a layer that only pyproject.toml invalidates, then the package itself
with --no-deps --no-build-isolation: a change to the client, the handler or the README reuses the
dependencies' layer (torch and the rest) instead of installing them again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"no extras {unknown} in pyproject.toml; it has {sorted(optional)}")
    return [*pyproject["build-system"]["requires"], *project["dependencies"], *(r for e in extras for r in optional[e])]


if __name__ == "__main__":
    print("\n".join(requirements(tomllib.loads(Path("pyproject.toml").read_text()), sys.argv[1:])))
