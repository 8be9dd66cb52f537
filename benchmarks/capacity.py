"""The capacity planner's table, from the bench records and deploy/k8s: per machine kind and model, the served
engine and batching, images per second per core, the worker's memory, and the replicas for a target load.

A pod's rate is the best sweep point's (callers sending back to back) per core of the bench machine, times the
Deployment's CPU request; the replicas for a load are that load over a pod's rate, rounded up, plus one so a
drain or a restart (the PodDisruptionBudget's one) leaves the load served. The engine study adds the model-only
rate per core of every engine it timed (no decode, pre- or postprocessing, no batching wait).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import yaml

from benchmarks import results as R

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = ROOT / "deploy" / "k8s" / "deployment.yaml"
# Loads a planner asks about, in images per second: inputs, not measurements.
TARGET_LOADS = (10, 50, 200)
MODEL_ORDER = ("u2netp", "u2net")
NO_RECORD = "No end-to-end record with a sweep yet: `make bench` records one per model."


def pod_cores(deployment: Path = DEPLOYMENT) -> float:
    """The CPU request of deploy/k8s's container, in cores."""
    (container,) = yaml.safe_load(deployment.read_text())["spec"]["template"]["spec"]["containers"]
    cpu = str(container["resources"]["requests"]["cpu"])
    return int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def best_rate(run: R.EndToEnd, op: str) -> float:
    """The sweep's best images per second for `op` (requests answered over the point's wall time)."""
    return max((p.requests / p.seconds for p in run.sweep if p.op == op and p.seconds > 0), default=0.0)


def replicas(load: float, pod_rate: float) -> int:
    return math.ceil(load / pod_rate) + 1


def latest_runs(records: list[R.Record]) -> list[R.EndToEnd]:
    """The newest end-to-end record with a sweep per (kind, model), U2NETP first."""
    newest: dict[tuple[str, str], R.EndToEnd] = {}
    for r in sorted((r for r in records if isinstance(r, R.EndToEnd) and r.sweep), key=lambda r: r.date):
        newest[r.kind, r.served.model] = r
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    return sorted(newest.values(), key=lambda r: (r.kind, order.get(r.served.model, len(order))))


def render_capacity(records: list[R.Record]) -> str:
    cores = pod_cores()
    runs = latest_runs(records)
    models = {r.served.model for r in runs}
    lines = [
        "| machine | model | engine | batch (delay) | cores | cutout img/s per core | mask img/s per core "
        "| worker RSS peak MiB | " + " | ".join(f"replicas for {load} cutouts/s" for load in TARGET_LOADS) + " |",
        "|---|---|---|--:|--:|--:|--:|--:|" + "--:|" * len(TARGET_LOADS),
    ]
    for run in runs:
        per_core = {op: best_rate(run, op) / (run.machine.cores or 1) for op in ("cutout", "mask")}
        rss = max(x for p in run.sweep for x in p.worker_rss_mib) if any(p.worker_rss_mib for p in run.sweep) else 0
        fleet = " | ".join(str(replicas(load, per_core["cutout"] * cores)) for load in TARGET_LOADS)
        lines.append(
            f"| {R.KIND_SHORT.get(run.kind, run.kind)} | {run.served.model} | {run.served.engine} "
            f"| {run.served.batch_size} ({run.served.max_batch_delay_ms} ms) | {run.machine.cores} "
            f"| {per_core['cutout']:.2f} | {per_core['mask']:.2f} | {rss:.0f} | {fleet} |"
        )
    missing = [m for m in MODEL_ORDER if m not in models]
    notes = [
        "",
        f"A pod is the Deployment's CPU request, {cores:g} cores, serving both models; replicas = load / (img/s per "
        "core x cores), rounded up, + 1 for a drain or a restart. Each row is its model's pod alone: a pod serving "
        "both splits its cores between them. Worker RSS: the peak sampled over the sweep (callers 1 to 16).",
    ]
    if missing:
        notes.append(f"{', '.join(m.upper() for m in missing)}: {NO_RECORD}")
    return "\n".join((lines if runs else [NO_RECORD]) + notes + ["", render_engine_rates(records)])


def fails_gate(row: R.StudyRow, settings: R.StudySettings) -> bool:
    """Whether the row's masks were checked and missed the gate in force when the study ran."""
    if row.mae_mean is None or row.mae_max is None:
        return False
    return row.mae_mean > settings.gate_mean_mae or row.mae_max > settings.gate_max_mae


def render_engine_rates(records: list[R.Record]) -> str:
    """Model-only images per second per core of each engine that passed the study's accuracy gate, from the newest
    engine study of each kind and model."""
    newest: dict[tuple[str, str], R.EngineStudy] = {}
    for r in sorted((r for r in records if isinstance(r, R.EngineStudy)), key=lambda r: r.date):
        newest[r.kind, r.settings.model] = r
    rows = []
    for (kind, model), study in sorted(newest.items()):
        best: dict[str, tuple[float, int]] = {}  # engine -> (img/s per thread, batch) at its best batch
        for row in study.rows:
            if fails_gate(row, study.settings):
                continue  # not servable
            ms = statistics.median(row.ms) if row.ms else (row.recorded.ms if row.recorded else None)
            if ms:
                rate = row.batch / (ms / 1000) / study.settings.threads
                best[row.engine] = max(best.get(row.engine, (0.0, 0)), (rate, row.batch))
        for engine, (rate, batch) in sorted(best.items(), key=lambda item: -item[1][0]):
            label = R.KIND_SHORT.get(kind, kind)
            rows.append(f"| {label} | {model} | {engine} | {batch} | {study.settings.threads} | {rate:.2f} |")
    if not rows:
        return "No engine study recorded yet: `python -m benchmarks.engines` times every engine."
    head = ["| machine | model | engine (model only) | best batch | threads | img/s per thread |"]
    head.append("|---|---|---|--:|--:|--:|")
    return "\n".join(head + rows)
