"""Command-line tools that start, stop and check the servers, and what the repository's tools share."""

from __future__ import annotations

import os
from pathlib import Path

REFERENCE_ENV = "U2SERVE_REFERENCE_DIR"
# The authors' 18 test images with their published U2NETP and U2NET masks (Apache-2.0, data/u2net-reference/).
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "u2net-reference"


def reference_dir() -> Path:
    """The reference data the tests, the accuracy gate and the benchmarks use: $U2SERVE_REFERENCE_DIR, else the
    repository's own copy."""
    override = os.environ.get(REFERENCE_ENV)
    return Path(override) if override else REFERENCE_DIR
