"""The benchmark's arithmetic: targets judged against the stronger rembg, the ceiling, the roofline, timing order."""

from __future__ import annotations

import pytest
import torch

from benchmarks import engines, report
from handler import weights


def _cell(path: str, op: str, callers: int, per_round: list[float]) -> report.CellSummary:
    return report.CellSummary(path, op, callers, per_round, 100.0, 150.0, 18, 0, None, None, 0, {})


def _result(cells: list[report.CellSummary], rows: list[report.ModelRow], roofline: report.Roofline | None = None):
    class Info:  # the fields render() reads from the SDK's ModelInfo
        name, device, weights, batch_size, max_batch_delay_ms, engine = "u2netp", "cpu", "w", 8, 20, "onnxruntime"

    machine = report.Machine("AMD EPYC", 2, None, "Python 3", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    archive = report.ArchiveSummary("onnxruntime", "`u2netp.mar`")
    return report.Result(machine, Info(), archive, 18, [1.0, 1.0], 2, 1.0, cells, rows, roofline=roofline)


def test_a_served_target_is_judged_against_the_stronger_rembg() -> None:
    cells = [
        _cell("rembg", "cutout", 1, [3.0, 3.0]),
        _cell("rembg", "cutout", 4, [3.3, 3.3]),  # threads overlap rembg's pre/post with inference
        _cell("served", "cutout", 4, [3.8, 3.8]),  # 1.27x the single caller, 1.15x the threaded one
        _cell("served", "mask", 4, [5.1, 5.1]),  # 1.7x and 1.55x
    ]
    rows = [report.ModelRow("onnxruntime", 1, [250.0, 250.0])]
    text = report.render(_result(cells, rows))
    cutout = next(line for line in text.splitlines() if line.startswith("- served cutout"))
    mask = next(line for line in text.splitlines() if line.startswith("- served mask"))
    assert "1.27× rembg with 1 caller(s)" in cutout and "1.15× rembg with 4 caller(s)" in cutout
    assert cutout.endswith("NOT met")
    assert "1.70× rembg with 1 caller(s)" in mask and "1.55× rembg with 4 caller(s)" in mask
    assert mask.endswith("— met")
    # The ceiling: the engine alone (4 img/s) over the best rembg (3.3 img/s).
    assert "runs 4.00 img/s (batch 1) = 1.21× rembg remove() with 4 caller(s)" in text
    # The end-to-end table has the same-callers column, filled only where rembg ran with as many callers.
    served_row = next(line for line in text.splitlines() if line.startswith("| u2serve SDK | cutout | 4 |"))
    assert served_row.split("|")[7:10] == [" 1.27 ", " 1.15 ", " 1.27 "]


def test_the_model_table_reads_each_engine_against_the_matmul_roofline() -> None:
    cells = [_cell("rembg", "cutout", 1, [3.0])]
    rows = [report.ModelRow("onnxruntime", 1, [250.0])]
    roof = report.Roofline(macs_per_image=20_000_000_000, matmul_gflops=200.0, threads=2)
    text = report.render(_result(cells, rows, roof))
    assert "convolutions are 20.00 GMAC per image" in text and "runs at 200 GFLOP/s" in text
    # 4 img/s x 2 x 20 GMAC = 160 GFLOP/s, 80 % of the matmul rate.
    assert "| onnxruntime (served) | 1 | 250.0 | 4.00 | 160 | 80 |" in text
    assert "| % of fp32 matmul peak |" in text


def test_u2netp_convolutions_are_19_8_gmac_per_image() -> None:
    model = weights.random_weights("u2netp", 0).model
    assert engines.conv_macs(model, 320) == pytest.approx(19.76e9, rel=1e-3)
    assert engines.conv_macs(model, 160) == pytest.approx(19.76e9 / 4, rel=1e-3)


def test_matmul_rate_is_measured_and_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    assert engines.matmul_gflops(1, n=256, repeats=2) > 0.1
    assert torch.get_num_threads() == before


def test_engines_are_timed_in_an_order_that_rotates_from_round_to_round() -> None:
    calls: list[str] = []

    def recorder(name: str):
        return lambda x: calls.append(name) or x

    runs = {name: recorder(name) for name in ("a", "b", "c")}
    times = engines._time_interleaved(runs, {1: torch.zeros(1)}, rounds=2, first_round=1)
    assert calls == ["b", "c", "a", "c", "a", "b"]  # no engine always runs right after the same one
    assert set(times) == {("a", 1), ("b", 1), ("c", 1)}
