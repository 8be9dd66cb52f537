"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# shared/ lies beside the repository: <parent>/main and <parent>/shared.
_DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/u2net-reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The authors' test images and published masks; U2SERVE_REFERENCE_DIR overrides the location."""
    override = os.environ.get("U2SERVE_REFERENCE_DIR")
    path = Path(override) if override else _DEFAULT_REFERENCE_DIR
    if not (path / "images").is_dir():
        pytest.skip(f"U²-Net reference data not found at {path}; set U2SERVE_REFERENCE_DIR")
    return path
