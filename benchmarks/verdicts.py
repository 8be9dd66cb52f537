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
    OptionRow,
    OptionSample,
    OptionsStudy,
    Ratio,
    StudyFigures,
    StudyRow,
    VideoRun,
    cell_id,
)
from handler import precision

# (call, callers, at least this many times the throughput of rembg remove() with the same model's session), by
# model, then by the record's kind: every kind holds "every kind"'s list unless it has its own.
# U2NETP (issue 16): every CPU kind and a GPU's record the first list; a CPU with native bf16 (torchscript-bf16)
# more. U2NET (issue 28): one list for every kind.
SERVED_TARGETS = {
    "u2netp": {
        "every kind": [("cutout", 4, 1.25), ("mask", 4, 1.5)],
        "cpu-bf16": [("cutout", 4, 1.5), ("mask", 4, 2.0)],
    },
    "u2net": {"every kind": [("cutout", 4, 1.5), ("mask", 4, 2.0)]},
}
# Issue 16: served throughput keeps at least this share of the served engine's model-only ceiling.
CEILING_SHARE_TARGET = 0.9
# The served engine's model-only throughput against onnxruntime's (our batched ONNX file, and rembg's own
# file run one image at a time), batch for batch.
ENGINE_TARGET = 1.0
ENGINE_REFERENCES = ("onnxruntime", "onnxruntime-rembg")
# Issue 11: a common option costs at most this many times today's RGBA cutout's server time.
OPTION_TARGET = 1.15
# Issues 12 and 15: the web gateway keeps, and Triton reaches, this share of the gRPC SDK path's throughput
# to TorchServe (same call, same callers, same round).
PATH_TARGETS = {"web": 0.9, "triton": 0.9}
# Issue 13: `u2net-client video` runs at least this many times rembg's frame rate (frame by frame, same clip,
# same machine), its masks within this mean absolute error (0..1) of rembg's.
VIDEO_TARGET = 1.5
VIDEO_MAE_TARGET = 0.01
# The counters bench.py records per round (TorchServe metrics of the handler).
REQUESTS = "U2ServeRequests"
BATCHES = "U2ServeBatches"
# The Triton cells' counters per batch size (Triton's statistics API: executions of that size).
BATCHES_OF = "TritonBatchesOfSize"


def batches_of(size: int) -> str:
    return f"{BATCHES_OF}{size}"


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
    """The engine the worker serves with (what describe reported: the archive's engine, or the fallback the
    worker's CPU took), else the archive's."""
    return run.served.engine or run.served.archive_engine or "torchscript"


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


def served_goals(run: EndToEnd) -> list[tuple[str, int, float]]:
    """The SERVED_TARGETS of the record's model and kind: (call, callers, goal); none for a model without any."""
    by_kind = SERVED_TARGETS.get(run.served.model, {})
    return by_kind.get(run.kind, by_kind.get("every kind", []))


def served_targets(run: EndToEnd) -> list[ServedVerdict]:
    """The record's served_goals, each judged against the stronger peer: rembg one at a time, or from as many
    threads."""
    verdicts = []
    single = find(run, "rembg", "cutout", 1)
    for op, callers, goal in served_goals(run):
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
class CeilingShare:
    """A served cell's throughput over the ceiling's (the served engine alone): the work around the model."""

    op: str
    callers: int
    share: float
    goal: float

    @property
    def met(self) -> bool:
        return self.share >= self.goal


def ceiling_shares(run: EndToEnd) -> list[CeilingShare]:
    """The served cells of the kind's targets against the ceiling; none where either is not measured."""
    roof = ceiling(run)
    shares = []
    for op, callers, _ in served_goals(run):
        cell = find(run, "served", op, callers)
        if roof is not None and cell is not None:
            share = cell_figures(cell).images_per_s / roof.images_per_s
            shares.append(CeilingShare(op, callers, share, CEILING_SHARE_TARGET))
    return shares


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


# ---- end to end: the other paths (benchmarks/paths.py) ----


def server_ms(sample: OptionSample, stages: tuple[str, ...] | None = None) -> float:
    """The handler's own time for a request: the sum of its stages (all, or `stages`)."""
    return sum(ms for stage, ms in sample.server_ms.items() if stages is None or stage in stages)


@dataclass(frozen=True)
class OptionFigures:
    """An option row's medians over its answered rounds, and its server time over the baseline's."""

    server_ms: float | None
    compose_encode_ms: float | None  # postprocess (mask resize, refine, compose) + encode
    latency_ms: float | None
    output_mb: float | None
    vs_baseline: Ratio | None
    compose_encode_vs_baseline: Ratio | None  # the same stages only: the option's own cost, without inference
    errors: list[str]


COMPOSE_ENCODE = ("postprocess", "encode")


def option_ratio(row: OptionRow, base: OptionRow, stages: tuple[str, ...] | None = None) -> Ratio | None:
    """`row`'s server time over `base`'s: the median of the ratios within the rounds where both were answered."""
    per_round = [
        server_ms(mine, stages) / server_ms(theirs, stages)
        for mine, theirs in zip(row.rounds, base.rounds, strict=True)
        if mine.error is None and theirs.error is None and server_ms(theirs, stages) > 0
    ]
    return Ratio(statistics.median(per_round), per_round) if per_round else None


def option_figures(study: OptionsStudy, row: OptionRow) -> OptionFigures:
    base = option_row(study, study.baseline)
    ok = [s for s in row.rounds if s.error is None]

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    against = base is not None and row is not base
    return OptionFigures(
        server_ms=median([server_ms(s) for s in ok]),
        compose_encode_ms=median([server_ms(s, COMPOSE_ENCODE) for s in ok]),
        latency_ms=median([s.latency_ms for s in ok]),
        output_mb=median([s.output_bytes / 1e6 for s in ok]),
        vs_baseline=option_ratio(row, base) if base is not None and against else None,
        compose_encode_vs_baseline=option_ratio(row, base, COMPOSE_ENCODE) if base is not None and against else None,
        errors=[s.error for s in row.rounds if s.error is not None],
    )


def option_row(study: OptionsStudy, name: str) -> OptionRow | None:
    return next((r for r in study.rows if r.name == name), None)


@dataclass(frozen=True)
class OptionVerdict:
    name: str
    ratio: Ratio | None
    goal: float
    met: bool | None  # None: not measured (failed in every round)


def option_targets(study: OptionsStudy) -> list[OptionVerdict]:
    """Each common option's server time against today's cutout of the same photo, in the same rounds."""
    base = option_row(study, study.baseline)
    verdicts = []
    for row in study.rows:
        if row.common:
            found = option_ratio(row, base) if base is not None else None
            verdicts.append(
                OptionVerdict(row.name, found, OPTION_TARGET, found.median <= OPTION_TARGET if found else None)
            )
    return verdicts


def jpeg_vs_png(study: OptionsStudy) -> Ratio | None:
    """The encode stage of the opaque result as JPEG over the same result as PNG (below 1: JPEG is cheaper)."""
    jpeg, png = (option_row(study, name) for name in study.jpeg_vs_png)
    return option_ratio(jpeg, png, ("encode",)) if jpeg and png else None


@dataclass(frozen=True)
class MattingCost:
    megapixels: float
    ms_per_mp: float  # the matting row's whole server time per megapixel
    extra_ms_per_mp: float | None  # over today's cutout of the same photo, same rounds


def matting_cost(study: OptionsStudy) -> MattingCost | None:
    row = next((r for r in study.rows if r.matting), None)
    figures = option_figures(study, row) if row else None
    if row is None or figures is None or figures.server_ms is None:
        return None
    megapixels = study.width * study.height / 1e6
    base = option_row(study, study.baseline)
    extra = [
        (server_ms(mine) - server_ms(theirs)) / megapixels
        for mine, theirs in zip(row.rounds, base.rounds, strict=True)
        if mine.error is None and theirs.error is None
    ] if base else []  # fmt: skip
    return MattingCost(megapixels, figures.server_ms / megapixels, statistics.median(extra) if extra else None)


def formed_batch_sizes(cell: Cell) -> dict[int, int]:
    """Batch size -> batches the server formed over the cell's rounds, where its counters say (Triton's)."""
    sizes: Counter[int] = Counter()
    for r in cell.rounds or []:
        for name, count in r.counters.items():
            if name.startswith(BATCHES_OF) and count:
                sizes[int(name.removeprefix(BATCHES_OF))] += int(count)
    return dict(sorted(sizes.items()))


@dataclass(frozen=True)
class PathVerdict:
    """A web or Triton cell against the gRPC SDK path to TorchServe with the same call and callers."""

    path: str
    op: str
    callers: int
    goal: float
    ratio: Ratio | None
    met: bool | None  # None: not measured (no such served cell in the run)


def path_verdicts(run: EndToEnd) -> list[PathVerdict]:
    verdicts = []
    paths = run.paths
    for cell in (paths.web + paths.triton) if paths else []:
        peer = find(run, "served", cell.op, cell.concurrency)
        found = ratio(cell, peer) if peer else None
        goal = PATH_TARGETS[cell.path]
        verdicts.append(
            PathVerdict(cell.path, cell.op, cell.concurrency, goal, found, found.median >= goal if found else None)
        )
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


# ---- the video study ----


@dataclass(frozen=True)
class VideoVerdict:
    """`u2net-client video` against rembg frame by frame: frame-rate ratios and the two targets."""

    speedup: float  # the plain run's frames/s over rembg's
    speedup_smooth: float  # with --smooth
    met: bool  # speedup >= VIDEO_TARGET
    mae_met: bool  # mask_mae <= VIDEO_MAE_TARGET


def video_verdict(run: VideoRun) -> VideoVerdict:
    speedup = run.served.fps / run.rembg.fps
    smooth = run.served_smooth.fps / run.rembg.fps
    return VideoVerdict(speedup, smooth, speedup >= VIDEO_TARGET, run.mask_mae <= VIDEO_MAE_TARGET)
