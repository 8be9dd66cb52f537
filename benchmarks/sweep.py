"""A concurrency sweep in the style of Triton's perf_analyzer: the served calls at 1, 2, 4, 8, 16 callers.

At each concurrency, that many callers send requests back to back (a closed loop: each sends its next
request when its last one is answered) for the cutout and then the mask. A point records every latency,
each reply's server-side stage times (the handler's decode, preprocess, model, postprocess and encode for
that request), TorchServe's counters over the point (`ts_queue_latency_microseconds`: time requests waited
in the frontend's queue; `ts_inference_latency_microseconds`: arrival to reply; the handler's
U2ServeRequests and U2ServeBatches) and the worker's resident memory sampled while it ran. TorchServe 0.12
leaves its two latency counters empty for gRPC requests (pytorch/serve issue 1467), the SDK's protocol: then
compute time is the reply's stage times, and queue time the rest of the latency (TorchServe's queue, the
batching wait, batch mates' decode and encode, transport).
benchmarks/bench.py runs it after its rounds (`--no-sweep` skips it) and records the points in its JSON
record; BENCHMARKS.md shows them as a table (`render`) and a PNG (`plot`: throughput and p95 latency
against concurrency).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import results as R
from benchmarks import verdicts as V

if TYPE_CHECKING:  # bench.py finds the SDK of this checkout when it is not installed
    from u2net_client import CutoutResult, MaskResult, U2NetClient

CONCURRENCIES = [1, 2, 4, 8, 16]
OPS = ("cutout", "mask")
QUEUE = "ts_queue_latency_microseconds"
IN_SERVER = "ts_inference_latency_microseconds"
SERVED = "ts_inference_requests_total"
COUNTERS = (QUEUE, IN_SERVER, SERVED, V.REQUESTS, V.BATCHES)
RSS_EVERY_S = 0.25  # how often the worker's memory is sampled during a point


@dataclass(frozen=True)
class Probes:
    """What the sweep reads off the server besides the replies; each None where it cannot be read."""

    counters: Callable[[], dict[str, float] | None]  # COUNTERS' current totals for the model
    worker_rss_mib: Callable[[], float | None]  # the model's worker's resident memory now


def requests_at(concurrency: int, images: int) -> int:
    """Requests per point: every image at least once, and four per caller so each caller's loop turns."""
    return max(images, 4 * concurrency)


def run(
    client: U2NetClient, model: str, images: Sequence[bytes], concurrencies: Sequence[int], probes: Probes
) -> list[R.SweepPoint]:
    """Every op at every concurrency, through the SDK (`client.map` keeps that many calls in flight)."""
    points = []
    for concurrency in concurrencies:
        for op in OPS:
            method = client.cutout if op == "cutout" else client.mask
            stream = [images[i % len(images)] for i in range(requests_at(concurrency, len(images)))]
            # Untimed: the batch sizes this concurrency forms, once (TorchScript optimises per shape).
            list(client.map(lambda image, m=method: m(image, model), stream[:concurrency], concurrency=concurrency))
            points.append(_point(client, lambda image, m=method: m(image, model), op, concurrency, stream, probes))
    return points


def _point(
    client: U2NetClient,
    call: Callable[[bytes], MaskResult | CutoutResult],
    op: str,
    concurrency: int,
    stream: list[bytes],
    probes: Probes,
) -> R.SweepPoint:
    def one(image: bytes) -> tuple[float, float]:
        started = time.perf_counter()
        result = call(image)
        return (time.perf_counter() - started) * 1000.0, sum(result.timings.values())

    rss: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            if (mib := probes.worker_rss_mib()) is not None:
                rss.append(round(mib, 1))
            done.wait(RSS_EVERY_S)

    sampler = threading.Thread(target=sample, name="worker-rss", daemon=True)
    before = probes.counters()
    sampler.start()
    started = time.perf_counter()
    outcomes = list(client.map(one, stream, concurrency=concurrency))
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = probes.counters()
    deltas = {k: after[k] - before[k] for k in after if k in before} if before and after else {}
    return R.SweepPoint(
        op=op,
        concurrency=concurrency,
        seconds=seconds,
        requests=len(stream),
        latency_ms=[x[0] for x in outcomes if isinstance(x, tuple)],
        errors=[str(x) for x in outcomes if not isinstance(x, tuple)],  # the SDK's U2NetError
        counters=deltas,
        worker_rss_mib=rss,
        server_ms=[x[1] for x in outcomes if isinstance(x, tuple)],
    )


# ---- the figures ----


@dataclass(frozen=True)
class Figures:
    """A point's summary: throughput over the point, percentiles over every answered request."""

    images_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    queue_ms: float | None  # mean time a request waited (module docstring: which wait, by which source)
    compute_ms: float | None  # mean time the server worked on it
    timing_source: str  # "TorchServe's counters", "the replies' stage times" or "none"
    mean_batch: float | None  # requests per batch the handler ran
    peak_rss_mib: float | None
    errors: int


def figures(point: R.SweepPoint) -> Figures:
    p50, p90, p95, p99 = V.percentiles(point.latency_ms, (50, 90, 95, 99))
    c = point.counters
    queue = compute = batch = None
    source = "none"
    if c.get(SERVED) and c.get(IN_SERVER):  # REST requests: TorchServe's own split
        queue = c.get(QUEUE, 0.0) / c[SERVED] / 1000.0
        compute = (c[IN_SERVER] - c.get(QUEUE, 0.0)) / c[SERVED] / 1000.0
        source = "TorchServe's counters"
    elif point.server_ms and len(point.server_ms) == len(point.latency_ms):
        compute = statistics.fmean(point.server_ms)
        queue = statistics.fmean(point.latency_ms) - compute
        source = "the replies' stage times"
    if c.get(V.BATCHES):
        batch = c.get(V.REQUESTS, 0.0) / c[V.BATCHES]
    return Figures(
        images_per_s=len(point.latency_ms) / point.seconds,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        queue_ms=queue,
        compute_ms=compute,
        mean_batch=batch,
        timing_source=source,
        peak_rss_mib=max(point.worker_rss_mib, default=None),
        errors=len(point.errors),
    )


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(run: R.EndToEnd, plot_link: str | None = None) -> str:
    """The sweep as a markdown table (and a link to its plot), or "" when the run has none."""
    if not run.sweep:
        return ""
    lines = [
        "Concurrency sweep (closed loop, as perf_analyzer: each caller sends its next request when its last one "
        "is answered). Compute: mean time the server worked on a request; queue: the rest of its latency "
        "(TorchServe's counters split them where they are kept; over gRPC, TorchServe 0.12 keeps none, and "
        "compute is the reply's handler stages, queue everything else: the queue, batching, batch mates' "
        "work, transport). RSS: the worker's peak resident memory sampled during the point.",
        "",
        "| call | callers | requests | img/s | p50 ms | p90 ms | p95 ms | p99 ms | queue ms | compute ms "
        "| split from | requests per batch | worker RSS MiB | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|",
    ]
    for p in run.sweep:
        f = figures(p)
        lines.append(
            f"| {p.op} | {p.concurrency} | {p.requests} | {f.images_per_s:.2f} | {_num(f.p50_ms)} | {_num(f.p90_ms)} "
            f"| {_num(f.p95_ms)} | {_num(f.p99_ms)} | {_num(f.queue_ms)} | {_num(f.compute_ms)} | {f.timing_source} "
            f"| {_num(f.mean_batch, 2)} | {_num(f.peak_rss_mib)} | {f.errors} |"
        )
    if plot_link:
        lines += ["", f"![throughput and p95 latency against concurrency]({plot_link})"]
    return "\n".join(lines)


def plot(run: R.EndToEnd, path: Path) -> Path:
    """Throughput and p95 latency against concurrency, one line per call, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display; the file is the output
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_p95) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for op in OPS:
        points = sorted((p for p in run.sweep if p.op == op), key=lambda p: p.concurrency)
        if not points:
            continue
        x = [p.concurrency for p in points]
        shown = [figures(p) for p in points]
        ax_rate.plot(x, [f.images_per_s for f in shown], marker="o", label=f"served {op}")
        ax_p95.plot(x, [f.p95_ms if f.p95_ms is not None else float("nan") for f in shown], marker="o", label=op)
    for ax, label in ((ax_rate, "images per second"), (ax_p95, "p95 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p.concurrency for p in run.sweep}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    smoke = " (--smoke: not a measurement)" if run.smoke else ""
    fig.suptitle(f"{run.served.model}, {run.served.engine} engine, {run.kind}, {run.date[:10]}{smoke}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def rss_summary(points: Sequence[R.SweepPoint]) -> str:
    """The worker's resident memory over the sweep in one line, for the log."""
    samples = [x for p in points for x in p.worker_rss_mib]
    if not samples:
        return "worker RSS: not measured (no worker process of a server started here)"
    return f"worker RSS over the sweep: median {statistics.median(samples):.0f} MiB, peak {max(samples):.0f} MiB"
