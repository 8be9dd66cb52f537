"""`make gpu-check`'s dry run (tools/gpu_check.py): its CPU parts against the session's TorchServe, loudly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from benchmarks import report, sweep
from benchmarks import results as R
from tools import gpu_check


def test_the_gpu_check_dry_run_records_the_bench_on_the_cpu_and_says_what_it_did_not_check(
    server, model_store: Path, reference_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.setenv("U2SERVE_REFERENCE_DIR", str(reference_dir))
    target = [
        "--target", server.grpc_target, "--management-target", server.grpc_management_target,
        "--key-file", str(server.key_file), "--metrics-url", f"http://127.0.0.1:{server.ports.metrics}/metrics",
    ]  # fmt: skip
    caplog.set_level(logging.INFO)
    argv = ["--dry-run", "--skip-tests", "--out", str(tmp_path), "--model-store", str(model_store)]
    assert gpu_check.main([*argv, "--bench-server", *target]) == 0
    # Loud about each part it could not run here.
    said_all = ("CUDA archives NOT built", "gpu tests NOT run", "NO GPU FIGURES", "model-only engines ran on the CPU")
    for said in (*said_all, "DRY RUN COMPLETE"):
        assert said in caplog.text
    (run,) = R.read_all([tmp_path / "benchmarks/results"])
    assert isinstance(run, R.EndToEnd) and run.smoke and run.kind != "cuda" and run.served.device == "cpu"
    assert {(c.path, c.op, c.concurrency) for c in run.cells} == {
        *(("rembg", op, 1) for op in sweep.OPS),
        *(("served", op, c) for op in sweep.OPS for c in (1, 2)),
    }
    assert [(p.op, p.concurrency) for p in run.sweep] == [(op, c) for c in (1, 2) for op in sweep.OPS]
    assert not any(p.errors for p in run.sweep) and all(p.latency_ms for p in run.sweep)
    # Queue and compute time come from the running server's counters.
    assert all(sweep.figures(p).compute_ms for p in run.sweep)
    assert (tmp_path / "BENCHMARKS.md").is_file() and (tmp_path / report.sweep_plot(run)).is_file()
