"""The deployment page's capacity table: rendered from the bench records and deploy/k8s, its figures the data's."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from benchmarks import capacity
from benchmarks import results as R

ROOT = Path(__file__).resolve().parents[1]


def test_a_pod_is_the_deployments_cpu_request():
    (container,) = yaml.safe_load(capacity.DEPLOYMENT.read_text())["spec"]["template"]["spec"]["containers"]
    assert capacity.pod_cores() == float(container["resources"]["requests"]["cpu"])


def test_replicas_carry_the_load_with_one_to_spare():
    assert capacity.replicas(10, 5.0) == 3
    assert capacity.replicas(10.5, 5.0) == 4


def test_each_row_is_the_newest_sweep_of_its_kind_and_model():
    records = R.read_all([R.RESULTS_DIR])
    table = capacity.render_capacity(records)
    runs = capacity.latest_runs(records)
    assert runs, "no end-to-end record with a sweep in benchmarks/results"
    for run in runs:
        label = R.KIND_SHORT[run.kind]
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} | {run.served.model} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        cores = run.machine.cores or 1
        assert float(cells[5]) == round(capacity.best_rate(run, "cutout") / cores, 2)
        assert float(cells[6]) == round(capacity.best_rate(run, "mask") / cores, 2)
        per_pod = capacity.best_rate(run, "cutout") / cores * capacity.pod_cores()
        assert [int(c) for c in cells[8:]] == [capacity.replicas(load, per_pod) for load in capacity.TARGET_LOADS]
    for model in capacity.MODEL_ORDER:  # a model without a record says so instead of vanishing
        assert model in {r.served.model for r in runs} or f"{model.upper()}: {capacity.NO_RECORD}" in table


def test_the_deployment_page_carries_the_section():
    text = (ROOT / "docs" / "deployment.md").read_text()
    assert re.search(r"<!-- bench:capacity -->\n(?:.*\n)??<!-- /bench:capacity -->", text)


def test_the_engine_rates_leave_out_engines_that_fail_the_gate():
    records = R.read_all([R.RESULTS_DIR])
    newest: dict[tuple[str, str], R.EngineStudy] = {}
    for r in sorted((r for r in records if isinstance(r, R.EngineStudy)), key=lambda r: r.date):
        newest[r.kind, r.settings.model] = r
    shown = {tuple(c.strip() for c in line.strip("|").split("|")[:3]) for line in capacity.render_engine_rates(records)
             .splitlines()[2:]}  # fmt: skip
    failing = {
        (R.KIND_SHORT[kind], model, row.engine)
        for (kind, model), study in newest.items()
        for row in study.rows
        if capacity.fails_gate(row, study.settings)
    }
    assert failing, "no recorded engine fails the gate: this test would check nothing"
    assert not failing & shown
    assert ("CPU, AVX-512", "u2netp", "mnn") in shown
