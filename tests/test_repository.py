"""The repository is whole by itself: what its tests, tools and benchmarks read lies inside it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tools import REFERENCE_DIR

ROOT = Path(__file__).resolve().parents[1]
CODE = (".py", ".sh", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".properties", "Makefile", "Dockerfile")
# Spelled in two parts so that this file does not name what it looks for.
BESIDE = "../" + "shared"
SHARED_DATA = "shared/" + "data"


def test_nothing_reads_a_folder_beside_the_clone() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = [
        name
        for name in tracked.splitlines()
        if name.endswith(CODE) and (ROOT / name).is_file()
        and (BESIDE in (text := (ROOT / name).read_text(errors="replace")) or SHARED_DATA in text)
    ]  # fmt: skip
    assert offenders == []


def test_the_reference_data_is_in_the_repository_with_its_licence() -> None:
    images = sorted((REFERENCE_DIR / "images").iterdir())
    assert len(images) == 18
    for masks in ("u2netp_masks", "u2net_masks"):
        assert sorted(p.stem for p in (REFERENCE_DIR / masks).iterdir()) == sorted(p.stem for p in images)
    assert "Apache License" in (REFERENCE_DIR / "LICENSE-U-2-Net").read_text()
    assert "data/u2net-reference/" in (ROOT / "NOTICE").read_text()
