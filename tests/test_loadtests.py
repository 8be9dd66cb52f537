"""The Locust load test and the benchmark, each run briefly as a command against the session's TorchServe."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The two smallest reference photos: short calls, so a few seconds of load test see many of them.
SMALL_IMAGES = ("rifle2.jpeg", "girl.png")


def _env() -> dict[str, str]:
    # The subprocesses import the SDK from this checkout, installed or not, and tools/ from the root.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "client"), str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def small_images(reference_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in SMALL_IMAGES:
        shutil.copy(reference_dir / "images" / name, folder / name)
    return folder


def test_locust_runs_mask_and_cutout_without_failures(server, small_images: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"), "--headless",
        "-u", "2", "-r", "2", "-t", "5s", "--stop-timeout", "60", "--only-summary", "--csv", str(tmp_path / "run"),
        "--host", server.grpc_target, "--key-file", str(server.key_file), "--images", str(small_images),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    with (tmp_path / "run_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ("mask", "cutout"):
        assert name in rows, f"no {name} row in {sorted(rows)}:\n{done.stderr[-2000:]}"
        assert rows[name]["Type"] == "grpc"
        assert int(rows[name]["Request Count"]) > 0
        assert int(rows[name]["Failure Count"]) == 0


def test_locust_refuses_an_empty_images_folder(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests/locustfile.py"), "--headless",
        "-u", "1", "-t", "1s", "--host", "127.0.0.1:1", "--images", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"--images {tmp_path}: no" in done.stderr


def test_benchmark_smoke_prints_rembg_and_served_rows(server, reference_dir: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks.bench", "--smoke", "--no-model-only",
        # The other paths and the sweep have tests of their own (test_bench_paths.py, the gpu-check dry run);
        # the web path would also add a gRPC cell with its 4 callers. U2NETP alone: the second model's rows come
        # from the same code (test_benchmarks.py runs both models' rounds together).
        "--models", "u2netp", "--no-options", "--no-web", "--no-triton", "--no-sweep",
        "--images", str(reference_dir / "images"),
        "--target", server.grpc_target, "--management-target", server.grpc_management_target,
        "--key-file", str(server.key_file), "--metrics-url", f"http://127.0.0.1:{server.ports.metrics}/metrics",
        "--write", str(tmp_path / "BENCHMARKS.md"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    table = done.stdout
    for callers in (1, 2):  # rembg one image at a time, and from two threads sharing its session
        assert re.search(rf"^\| rembg remove\(\) \| cutout \| {callers} \|", table, re.M), table
        assert re.search(rf"^\| rembg remove\(\) \| mask \(only_mask=True\) \| {callers} \|", table, re.M), table
    for op in ("cutout", "mask"):
        for callers in (1, 2):
            row = re.search(rf"^\| u2serve SDK \| {op} \| {callers} \|.*\| ([^|]*) \|$", table, re.M)
            assert row, f"no served {op} x{callers} row:\n{table}"
            assert row.group(1) == "0", f"served {op} x{callers} had errors:\n{table}"
            same_callers = row.group(0).split("|")[8].strip()
            assert float(same_callers) > 0, row.group(0)  # against rembg with as many callers
    assert re.search(r"^- served cutout with 4 callers .*: not measured$", table, re.M), table
    written = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- bench:cpu -->" in written and "<!-- bench:cuda -->" in written
