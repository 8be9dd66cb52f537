"""The benchmark's arithmetic on a record: summaries, ratios, the targets, the ceiling and the accuracy gate.

Pure functions of benchmarks/results.py's records; the markdown (benchmarks/report.py) only prints them,
and the tests check them on synthetic records.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np

from benchmarks.results import (
    Cell,
    CellFigures,
    EndToEnd,
    EngineStudy,
    ModelFigures,
    ModelOnly,
    Ratio,
    StudyFigures,
    StudyRow,
    cell_id,
)
from handler import precision

# (call, callers, at least this many times rembg remove()'s throughput)
SERVED_TARGETS = [("cutout", 4, 1.2), ("mask", 4, 1.5)]
# The served engine's model-only throughput against onnxruntime's (our batched ONNX file, and rembg's own
# file run one image at a time), batch for batch.
ENGINE_TARGET = 1.0
ENGINE_REFERENCES = ("onnxruntime", "onnxruntime-rembg")
# The counters bench.py records per round (TorchServe metrics of the handler).
REQUESTS = "U2ServeRequests"
BATCHES = "U2ServeBatches"


# ---- end to end: one cell ----


def cell_figures(cell: Cell) -> CellFigures:
    """The cell's summary from its rounds: img/s the median over rounds, percentiles over every request."""
    if cell.rounds is None:
        if cell.recorded is None:
            raise ValueError(f"{cell.id}: neither rounds nor recorded figures")
        return cell.recorded
    latencies = [ms for r in cell.rounds for ms in r.latency_ms]
    errors = [e for r in cell.rounds for e in r.errors]
    p50, p90, p95, p99 = percentiles(latencies, (50, 90, 95, 99))
    counted = [r.counters for r in cell.rounds if REQUESTS in r.counters and BATCHES in r.counters]
    formed = requests = None
    if counted:
        formed = sum(c[BATCHES] for c in counted)
        requests = sum(c[REQUESTS] for c in counted)
    sizes = Counter(size for r in cell.rounds for size in r.batch_size)
    return CellFigures(
        images_per_s=statistics.median(throughputs(cell)),
        p50_ms=p50,
        p95_ms=p95,
        p90_ms=p90,
        p99_ms=p99,
        requests=len(latencies),
        errors=len(errors),
        first_error=errors[0] if errors else None,
        formed_batches=int(formed) if formed is not None else None,
        mean_formed_batch=requests / formed if formed else None,
        batch_sizes=dict(sorted(sizes.items())),
    )


def percentiles(samples: list[float], points: tuple[int, ...]) -> list[float | None]:
    """numpy's (linearly interpolated) percentiles of `samples`; None each where there are none."""
    if not samples:
        return [None] * len(points)
    return [float(x) for x in np.percentile(np.asarray(samples), points)]


def throughputs(cell: Cell) -> list[float]:
    """Images per second in each round."""
    if cell.rounds is None:
        raise ValueError(f"{cell.id}: a converted record has no per-round throughput")
    return [r.images_per_s for r in cell.rounds]


def ratio(cell: Cell, peer: Cell) -> Ratio | None:
    """`cell`'s throughput over `peer`'s: the median of the ratios within each round (both ran in each round).

    None when it cannot be known (a converted record that did not print it).
    """
    if cell.rounds is not None and peer.rounds is not None:
        per_round = [mine / theirs for mine, theirs in zip(throughputs(cell), throughputs(peer), strict=True)]
        return Ratio(statistics.median(per_round), per_round)
    return cell.recorded.ratios.get(peer.id) if cell.recorded else None


# ---- end to end: the run ----


def find(run: EndToEnd, path: str, op: str, concurrency: int) -> Cell | None:
    return next((c for c in run.cells if c.id == cell_id(path, op, concurrency)), None)


def served_engine(run: EndToEnd) -> str:
    """The engine the archive serves with (what the SDK reported, against a server not started here)."""
    return run.served.archive_engine or run.served.engine or "torchscript"


def model_figures(run: EndToEnd, row: ModelOnly) -> ModelFigures:
    """A model-only row's summary: the median ms per batch, and its arithmetic rate against the roofline."""
    if row.ms is None:
        if row.recorded is None:
            raise ValueError(f"{row.engine} batch {row.batch}: neither ms nor recorded figures")
        return row.recorded
    ms = statistics.median(row.ms)
    images_per_s = 1000.0 * row.batch / ms
    gflops = peak = None
    if run.roofline:
        gflops = 2.0 * run.roofline.macs_per_image * images_per_s / 1e9
        peak = 100.0 * gflops / run.roofline.matmul_gflops
    return ModelFigures(ms, images_per_s, gflops, peak)


def model_ratio(row: ModelOnly, ref: ModelOnly) -> Ratio | None:
    """`row`'s throughput over `ref`'s (same batch): the median of the ratios within each round."""
    if row.ms is not None and ref.ms is not None:
        per_round = [theirs / mine for mine, theirs in zip(row.ms, ref.ms, strict=True)]
        return Ratio(statistics.median(per_round), per_round)
    return row.recorded.ratios.get(ref.engine) if row.recorded else None


def model_row(run: EndToEnd, engine: str, batch: int) -> ModelOnly | None:
    return next((r for r in run.model_only if r.engine == engine and r.batch == batch), None)


def best_served_model_only(run: EndToEnd) -> float | None:
    """The served engine's best model-only img/s over the batch sizes (what "÷ model-only best" divides by)."""
    own = [model_figures(run, r).images_per_s for r in run.model_only if r.engine == served_engine(run)]
    return max(own, default=None)


@dataclass(frozen=True)
class Versus:
    """One peer a target is judged against."""

    peer_callers: int
    ratio: Ratio


@dataclass(frozen=True)
class ServedVerdict:
    """A served target: its call and callers, the goal, the ratio against each rembg peer, met or not."""

    op: str
    callers: int
    goal: float
    against: list[Versus]  # empty: not measured
    met: bool | None  # None: not measured


def served_targets(run: EndToEnd) -> list[ServedVerdict]:
    """Each SERVED_TARGETS entry judged against the stronger peer: rembg one at a time, or from as many threads."""
    verdicts = []
    single = find(run, "rembg", "cutout", 1)
    for op, callers, goal in SERVED_TARGETS:
        cell = find(run, "served", op, callers)
        peers = [single] + ([find(run, "rembg", "cutout", callers)] if callers != 1 else [])
        against = []
        for peer in peers:
            found = ratio(cell, peer) if cell and peer else None
            if found is not None and peer is not None:
                against.append(Versus(peer.concurrency, found))
        met = min(v.ratio.median for v in against) >= goal if cell and against else None
        verdicts.append(ServedVerdict(op, callers, goal, against if met is not None else [], met))
    return verdicts


@dataclass(frozen=True)
class Ceiling:
    """The served engine alone, at its best batch, over the fastest rembg cutout: a bound on served ratios."""

    engine: str
    batch: int
    images_per_s: float
    peer_callers: int
    peer_images_per_s: float

    @property
    def ratio(self) -> float:
        return self.images_per_s / self.peer_images_per_s


def ceiling(run: EndToEnd) -> Ceiling | None:
    engine = served_engine(run)
    own = [(model_figures(run, r).images_per_s, r.batch) for r in run.model_only if r.engine == engine]
    peers = [(cell_figures(c).images_per_s, c.concurrency) for c in run.cells if c.path == "rembg" and c.op == "cutout"]
    if not own or not peers:
        return None
    best, batch = max(own)
    peer, callers = max(peers)
    return Ceiling(engine, batch, best, callers, peer)


@dataclass(frozen=True)
class EngineVerdict:
    """The served engine model-only against a reference engine, batch for batch."""

    engine: str
    reference: str
    goal: float
    ratios: list[tuple[int, Ratio]]  # (batch, ratio)
    same_engine: bool
    met: bool | None  # None: not measured, or the same engine


def engine_targets(run: EndToEnd) -> list[EngineVerdict]:
    engine = served_engine(run)
    verdicts = []
    for ref in ENGINE_REFERENCES:
        ratios = []
        for row in run.model_only:
            other = model_row(run, ref, row.batch) if row.engine == engine else None
            found = model_ratio(row, other) if other else None
            if found is not None:
                ratios.append((row.batch, found))
        same = ref == engine
        met = all(r.median >= ENGINE_TARGET for _, r in ratios) if ratios and not same else None
        verdicts.append(EngineVerdict(engine, ref, ENGINE_TARGET, ratios, same, met))
    return verdicts


# ---- the engine study ----


def study_figures(study: EngineStudy, row: StudyRow) -> StudyFigures:
    """A study row's summary: median ms per batch, img/s, ms over the peer's (below 1: faster), GFLOP/s."""
    if row.ms is None:
        if row.recorded is None:
            raise ValueError(f"{row.engine} batch {row.batch}: neither ms nor recorded figures")
        return row.recorded
    ms = statistics.median(row.ms)
    peer = next((r for r in study.rows if r.engine == study.settings.peer and r.batch == row.batch), None)
    vs_peer = ms / statistics.median(peer.ms) if peer and peer.ms else None
    return StudyFigures(ms, 1000.0 * row.batch / ms, vs_peer, 2.0 * study.macs_per_image * row.batch / ms / 1e6)


def gate(row: StudyRow) -> bool | None:
    """Whether the row's masks pass the serving accuracy gate (handler.precision); None when not checked."""
    if row.mae_mean is None or row.mae_max is None:
        return None
    return precision.passes_gate(row.mae_mean, row.mae_max)
