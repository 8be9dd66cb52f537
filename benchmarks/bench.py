"""End-to-end benchmark: rembg's remove() in process against u2serve's cutout and mask, plus model-only engines.

    python -m benchmarks.bench                            # U2NETP and U2NET, its own TorchServe on free ports
    python -m benchmarks.bench --write BENCHMARKS.md      # records benchmarks/results/*.json, renders the file
    python -m benchmarks.bench --smoke                    # 2 images, 1 round, concurrency 1 and 2
    python -m benchmarks.bench --models u2netp            # one model only
    python -m benchmarks.bench --target 127.0.0.1:7070 --key-file var/key_file.json \\
        --metrics-url http://127.0.0.1:8082/metrics       # against a running server (`make serve`)

Every round runs each measurement once, in an order rotated from round to round, so that a noisy
neighbour slows all of them alike. For each model of --models (default U2NETP and U2NET, served by the
same TorchServe): (a) rembg remove() with rembg's own session of that model (benchmarks/peer.py: the same
weight files) on each image, one at a time as in a script, and from several threads sharing one session
as in a web app (default 1 and 4 callers); (b) the served cutout and mask through the SDK at each
concurrency; (c) each engine's d0 head alone at each batch size (benchmarks/engines.py on the CPU; eager
and TorchScript on CUDA). For the first model: (d) the other paths to it (benchmarks/paths.py): the cutout
options' server time, the web gateway over HTTP, and a real Triton through the SDK (--no-options,
--no-web, --no-triton leave them out). The tables show per-round ratios (each measurement against rembg's
with the same model in the same round) and their median, and the load average at the start of each round.
After the rounds, the concurrency sweep (benchmarks/sweep.py) runs for each model in turn.

The run is recorded as JSON (benchmarks/results.py: commit, machine, every sample), one record per model,
before anything is rendered; `--write` then renders the markdown from the records in benchmarks/results/
beside it (benchmarks/report.py). A --smoke run never lands in the committed results or BENCHMARKS.md: it
goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
import os
import re
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

import tools
from benchmarks import paths, peer, report, sweep
from benchmarks import results as R
from benchmarks import verdicts as V
from handler.model import VARIANTS

if TYPE_CHECKING:
    from tools.torchserve import Server

try:
    from u2net_client import U2NetClient, U2NetError
except ImportError:  # the SDK of this checkout when it is not installed (`make` installs it editable)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))
    from u2net_client import U2NetClient, U2NetError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = tools.REFERENCE_DIR / "images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
CPU_ENGINES = ["torchscript-bf16", "mnn", "openvino", "onnxruntime", "onnxruntime-rembg"]
CUDA_ENGINES = ["eager", "torchscript"]
MODELS = ["u2netp", "u2net"]  # measured in this order; the other paths (d) go to the first
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)$")


@dataclass
class Cell:
    """One end-to-end measurement: who answers, which call, how many callers; a Round appended per round."""

    path: str  # "rembg" or "served"
    op: str  # "cutout" or "mask"
    concurrency: int
    rounds: list[R.Round] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.path} {self.op} x{self.concurrency}"

    def record(self) -> R.Cell:
        return R.Cell(self.path, self.op, self.concurrency, list(self.rounds))


@dataclass
class Measured:
    """One model's part of the rounds: its rembg and served cells, and its engines' model-only times."""

    model: str
    cells: list[Cell]
    model_times: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    def model_only(self, engines: Sequence[str]) -> list[R.ModelOnly]:
        rows = [R.ModelOnly(engine, batch, ms) for (engine, batch), ms in self.model_times.items()]
        return sorted(rows, key=lambda row: (row.batch, engines.index(row.engine)))


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    models: list[str]
    images: list[bytes]
    rounds: int
    concurrencies: list[int]
    engines: list[str]
    batch_sizes: list[int]
    threads: int
    device: str
    rembg_concurrencies: list[int] = field(default_factory=lambda: [1])


# ---- (a) the peer: rembg in process ----


class Rembg:
    """rembg's remove() with its own session of `model`, on the weight files the archive was built from."""

    def __init__(self, model: str) -> None:
        self.session = peer.session(model)  # SystemExit with how to install rembg where it is missing
        from rembg import remove

        self._remove = remove

    def call(self, op: str) -> Callable[[bytes], bytes]:
        only_mask = op == "mask"
        return lambda image: self._remove(image, session=self.session, only_mask=only_mask)


def time_rembg(rembg: Rembg, cell: Cell, images: Sequence[bytes]) -> None:
    """rembg's remove() over `images` from cell.concurrency threads sharing one session, as a threaded web app
    calls it (onnxruntime's run and most of Pillow's work release the GIL)."""
    fn = rembg.call(cell.op)

    def one(image: bytes) -> float:
        t = time.perf_counter()
        fn(image)
        return (time.perf_counter() - t) * 1000.0

    start = time.perf_counter()
    if cell.concurrency == 1:
        latencies = [one(image) for image in images]
    else:
        with ThreadPoolExecutor(cell.concurrency, thread_name_prefix="rembg") as pool:
            latencies = list(pool.map(one, images))
    cell.rounds.append(R.Round(time.perf_counter() - start, len(images), latencies))


# ---- (b) the served model through the SDK ----


class Metrics:
    """Counters from TorchServe's Prometheus text (the handler's U2ServeRequests and U2ServeBatches by default),
    and the model's worker's resident memory where the worker process is known (a server started here)."""

    def __init__(self, url: str | None, model: str, worker_pid: Callable[[], int | None] | None = None) -> None:
        self.url = url
        self.model = model
        self.worker_pid = worker_pid

    def counters(self, names: Sequence[str] = (V.REQUESTS, V.BATCHES)) -> dict[str, float] | None:
        if self.url is None:
            return None
        with urllib.request.urlopen(self.url, timeout=30) as resp:
            text = resp.read().decode()
        return {name: counter(text, name, self.model) for name in names}

    def worker_rss_mib(self) -> float | None:
        import psutil

        pid = self.worker_pid() if self.worker_pid else None
        try:
            return psutil.Process(pid).memory_info().rss / 2**20 if pid else None
        except psutil.Error:  # the worker restarted between the two calls
            return None


def counter(prometheus_text: str, name: str, model: str) -> float:
    """The sum of a metric's samples for one model in Prometheus text (the handler's metrics label it
    ModelName, TorchServe's own ts_* metrics model_name)."""
    total = 0.0
    for line in prometheus_text.splitlines():
        m = _SAMPLE.match(line)
        labels = m.group(2) if m else ""
        if m and m.group(1) == name and (f'ModelName="{model}"' in labels or f'model_name="{model}"' in labels):
            total += float(m.group(3))
    return total


def time_served(client: U2NetClient, model: str, cell: Cell, images: Sequence[bytes], metrics: Metrics) -> None:
    method = client.cutout if cell.op == "cutout" else client.mask

    def one(image: bytes) -> tuple[float, int]:
        t = time.perf_counter()
        result = method(image, model)
        return (time.perf_counter() - t) * 1000.0, result.batch_size

    before = metrics.counters()
    start = time.perf_counter()
    outcomes = list(client.map(one, images, concurrency=cell.concurrency))
    seconds = time.perf_counter() - start
    after = metrics.counters()
    answered = [o for o in outcomes if not isinstance(o, U2NetError)]
    errors = [str(o) for o in outcomes if isinstance(o, U2NetError)]
    deltas = {name: after[name] - before[name] for name in after} if before and after else {}
    cell.rounds.append(
        R.Round(seconds, len(images), [ms for ms, _ in answered], [size for _, size in answered], errors, deltas)
    )


def warm_up_server(client: U2NetClient, model: str, images: Sequence[bytes], concurrencies: Sequence[int]) -> None:
    """Every batch size the timed calls may form, once: TorchScript optimises on its first calls per shape."""
    smallest = min(images, key=len)
    for c in sorted(set(concurrencies)):
        for op in (client.cutout, client.mask):
            list(client.map(lambda image, op=op: op(image, model), [smallest] * c, concurrency=c))


# ---- (c) model only ----


def model_only_round(settings: Settings, model: str, round_index: int = 0) -> dict[tuple[str, int], float]:
    """Milliseconds per batch of each engine at each batch size for `model`, one timed call each."""
    if settings.device == "cuda":
        return torch_model_only(model, settings.engines, settings.batch_sizes, torch.device("cuda"))
    from benchmarks import engines

    rows = engines.measure(
        model, settings.engines, settings.batch_sizes, rounds=1, threads=settings.threads,
        reference_dir=None, model=_cpu_model(model), first_round=round_index,
    )  # fmt: skip
    return {(r.engine, r.batch): r.ms for r in rows}


_MODELS: dict[str, torch.nn.Module] = {}


def _cpu_model(name: str) -> torch.nn.Module:
    # Loading a model from rembg's ONNX takes seconds: once per run, not once per round.
    from benchmarks import engines

    if name not in _MODELS:
        _MODELS[name] = engines.load_model(name)
    return _MODELS[name]


def torch_model_only(
    name: str, engine_names: Sequence[str], batch_sizes: Sequence[int], device: torch.device
) -> dict[tuple[str, int], float]:
    """Milliseconds per batch of eager and TorchScript PyTorch on `device`: the GPU's model-only engines
    (tools/gpu_check.py's dry run runs them on the CPU)."""
    from handler.engine import trace
    from handler.model import U2NetD0

    model = copy.deepcopy(_cpu_model(name)).to(device)
    size = VARIANTS[name].input_size
    builders: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
        "eager": lambda: U2NetD0(model).eval(),
        "torchscript": lambda: trace(model, device, size),  # what a CUDA archive serves
    }
    unknown = set(engine_names) - set(builders)
    if unknown:
        raise SystemExit(f"--engines {sorted(unknown)}: on CUDA only {', '.join(builders)}")
    runs = {n: builders[n]() for n in engine_names}
    times: dict[tuple[str, int], float] = {}
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.rand(b, 3, size, size, device=device)
            for n, run in runs.items():
                for _ in range(2):  # warm-up: cuDNN picks its algorithms, TorchScript profiles
                    run(x)
                _synchronize(device)
                start = time.perf_counter()
                run(x)
                _synchronize(device)
                times[n, b] = (time.perf_counter() - start) * 1000.0
    return times


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the run ----


def run_rounds(
    settings: Settings, client: U2NetClient, metrics: dict[str, Metrics], other_paths: Sequence[paths.Step] = ()
) -> tuple[dict[str, Measured], list[float]]:
    """Every measurement of every model once per round (`other_paths`' steps too); also the 1-minute load average at
    the start of each round."""
    measured: dict[str, Measured] = {}
    steps: list[tuple[str, Callable[[], None]]] = []
    for model in settings.models:
        rembg = Rembg(model)
        cells = [Cell("rembg", op, c) for op in ("cutout", "mask") for c in settings.rembg_concurrencies]
        cells += [Cell("served", op, c) for op in ("cutout", "mask") for c in settings.concurrencies]
        log.info("warming up rembg and the server with %s", model)
        rembg.call("cutout")(min(settings.images, key=len))
        warm_up_server(client, model, settings.images, settings.concurrencies)
        part = measured[model] = Measured(model, cells)
        steps += [
            (f"{model} {cell.label}", _step(cell, rembg, client, model, settings, metrics[model])) for cell in cells
        ]
        if settings.engines:
            steps.append((f"{model} model only", _model_only_step(settings, part)))
    steps += other_paths
    loads = []
    for r in range(settings.rounds):
        loads.append(os.getloadavg()[0])
        shift = r % len(steps)
        for label, step in steps[shift:] + steps[:shift]:
            log.info("round %d/%d: %s", r + 1, settings.rounds, label)
            step()
    return measured, loads


def _step(
    cell: Cell, rembg: Rembg, client: U2NetClient, model: str, settings: Settings, metrics: Metrics
) -> Callable[[], None]:
    if cell.path == "rembg":
        return lambda: time_rembg(rembg, cell, settings.images)
    return lambda: time_served(client, model, cell, settings.images, metrics)


def _model_only_step(settings: Settings, part: Measured) -> Callable[[], None]:
    engine_rounds = itertools.count()  # each call is one round: the engines' order rotates across them
    return lambda: _collect(part.model_times, model_only_round(settings, part.model, next(engine_rounds)))


def _collect(into: dict[tuple[str, int], list[float]], times: dict[tuple[str, int], float]) -> None:
    for key, ms in times.items():
        into.setdefault(key, []).append(ms)


@contextlib.contextmanager
def served(args: argparse.Namespace) -> Iterator[tuple[U2NetClient, dict[str, Metrics], Path | None]]:
    """A client for --target, or for a TorchServe started here on free ports serving every model of --models and
    stopped afterwards; each model's metrics; and the server's key file (--key-file with --target: None leaves it
    to the SDK's and the gateway's defaults)."""
    if args.target:
        with U2NetClient(args.target, args.management_target, key_file=args.key_file, timeout=600) as client:
            yield client, {m: Metrics(args.metrics_url, m) for m in args.models}, args.key_file
        return
    from tools.torchserve import Ports, start

    with tempfile.TemporaryDirectory(prefix="u2serve-bench-") as home:
        log.info("starting TorchServe for %s from %s", " and ".join(args.models), args.model_store)
        server = start(Path(home), args.model_store, list(args.models), Ports.free())
        try:
            server.wait_ready(timeout=600)
            url = f"http://127.0.0.1:{server.ports.metrics}/metrics"
            metrics = {m: Metrics(url, m, functools.partial(_worker_pid, server, m)) for m in args.models}
            with U2NetClient(
                server.grpc_target, server.grpc_management_target, key_file=server.key_file, timeout=600
            ) as client:
                yield client, metrics, server.key_file
        finally:
            server.stop()


def _worker_pid(server: Server, model: str) -> int | None:
    """The pid of the model's first READY worker, from TorchServe's management API."""
    try:
        workers = server.management(f"/models/{model}")[0]["workers"]  # type: ignore[index]
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return next((int(w["pid"]) for w in workers if w.get("status") == "READY"), None)


def load_images(folder: Path, limit: int | None) -> list[bytes]:
    """The encoded images in `folder`; with a limit, the smallest files (a smoke run stays quick)."""
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise SystemExit(f"--images {folder}: no {', '.join(sorted(IMAGE_SUFFIXES))} files there")
    if limit is not None:
        paths = sorted(paths, key=lambda p: p.stat().st_size)[:limit]
    return [p.read_bytes() for p in paths]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=MODELS,
        help=f"models measured in the same rounds, each against rembg's own session of it; default {' '.join(MODELS)}",
    )  # fmt: skip
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", help="served callers; default 1 4 8 (CUDA: to 64)")
    parser.add_argument("--rembg-concurrency", type=int, nargs="+", help="rembg threads; default 1 4 (smoke: 1 2)")
    parser.add_argument("--engines", nargs="+", help=f"model-only engines; default {' '.join(CPU_ENGINES)}")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="model-only batches; default 1 2 4 8 (CUDA: to 64)")
    parser.add_argument("--threads", type=int, default=None, help="model-only intra-op threads; default all cores")
    parser.add_argument("--no-model-only", action="store_true", help="skip (c), the model-only engines")
    parser.add_argument("--smoke", action="store_true", help="2 images, 1 round, concurrency 1 2, torchscript at 1")
    parser.add_argument("--no-sweep", action="store_true", help="skip the concurrency sweep (benchmarks/sweep.py)")
    parser.add_argument(
        "--sweep-concurrency", type=int, nargs="+", help=f"sweep callers; default {sweep.CONCURRENCIES} (smoke: 1 2)"
    )
    parser.add_argument("--write", type=Path, help="render this markdown file (BENCHMARKS.md) from the records")
    parser.add_argument(
        "--results",
        type=Path,
        help="folder for the JSON record; default benchmarks/results/ beside --write, else a temp one",
    )
    server = parser.add_argument_group("a running server instead of one started here")
    server.add_argument("--target", help="gRPC inference host:port")
    server.add_argument("--management-target", default="127.0.0.1:7071", help="gRPC management host:port")
    server.add_argument("--key-file", type=Path, help="its key_file.json; default $U2SERVE_KEY_FILE, var/...")
    server.add_argument("--metrics-url", help="its Prometheus endpoint, for the batches it formed")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store", help="archives to serve")
    paths.add_arguments(parser)
    args = parser.parse_args(argv)
    counts = [args.rounds, args.web_callers, *(args.concurrency or []), *(args.rembg_concurrency or []),
              *(args.batch_sizes or []), *(args.sweep_concurrency or [])]  # fmt: skip
    if min(counts) < 1:
        parser.error(
            "--rounds, --web-callers, --concurrency, --rembg-concurrency, --batch-sizes and --sweep-concurrency "
            "must be at least 1"
        )
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    cuda = torch.cuda.is_available()
    concurrencies = [1, 4, 8, 16, 32, 64] if cuda else [1, 4, 8]
    batch_sizes = [1, 2, 4, 8, 16, 32, 64] if cuda else [1, 2, 4, 8]
    engine_names = CUDA_ENGINES if cuda else CPU_ENGINES
    rounds, limit, rembg_concurrencies = args.rounds, None, [1, 4]
    if args.smoke:
        rounds, limit, concurrencies, batch_sizes, engine_names = 1, 2, [1, 2], [1], ["torchscript"]
        rembg_concurrencies = [1, 2]
    return Settings(
        models=list(dict.fromkeys(args.models)),  # in the order given, each once
        images=load_images(args.images, limit),
        rounds=rounds,
        concurrencies=paths.concurrencies(args, args.concurrency or concurrencies),
        engines=[] if args.no_model_only else args.engines or engine_names,
        batch_sizes=args.batch_sizes or batch_sizes,
        threads=args.threads or torch.get_num_threads(),
        device="cuda" if cuda else "cpu",
        rembg_concurrencies=sorted(set(args.rembg_concurrency or rembg_concurrencies) | {1}),
    )


def _roofline(settings: Settings, model: str, matmul_gflops: float | None) -> R.Roofline | None:
    """On the CPU: the model's convolution work per image and this machine's fp32 matmul rate."""
    if matmul_gflops is None:
        return None
    from benchmarks import engines

    macs = engines.conv_macs(_cpu_model(model), VARIANTS[model].input_size)
    return R.Roofline(macs, matmul_gflops, settings.threads)


def _matmul_gflops(settings: Settings) -> float | None:
    """This CPU's fp32 matmul rate, measured once per run where there are CPU model-only rows to read against it."""
    if settings.device != "cpu" or not settings.engines:
        return None
    from benchmarks import engines

    return engines.matmul_gflops(settings.threads)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per HTTP request of the web path
    args = parse_args(argv)
    settings = settings_from(args)
    folder, write = R.destinations(args.results, args.write, args.smoke)
    machine = R.Machine.here(torch.cuda.get_device_name(0) if settings.device == "cuda" else None)
    matmul = _matmul_gflops(settings)
    rooflines = {model: _roofline(settings, model, matmul) for model in settings.models}
    date, (commit, dirty) = R.now(), R.commit()  # what runs, as it starts
    first = settings.models[0]  # the model the other paths (d) go to
    with served(args) as (client, metrics, key_file):
        infos = {model: describe(client, model) for model in settings.models}
        started = time.monotonic()
        with paths.started(
            args, client, first, key_file, metrics[first], settings.images, settings.concurrencies, settings.device,
            time_served, warm_up_server,
        ) as other:  # fmt: skip
            measured, loads = run_rounds(settings, client, metrics, other.steps)
        points = {model: run_sweep(args, settings, client, model, metrics[model]) for model in settings.models}
    minutes = (time.monotonic() - started) / 60.0
    machine = dataclasses.replace(machine, load_after=R.load())
    run_settings = R.EndToEndSettings(
        images=len(settings.images),
        rounds=settings.rounds,
        threads=settings.threads,
        concurrencies=settings.concurrencies,
        rembg_concurrencies=settings.rembg_concurrencies,
        engines=settings.engines,
        batch_sizes=settings.batch_sizes,
        minutes=minutes,
        models=settings.models,
    )

    def record(model: str) -> R.EndToEnd:
        """The model's record: the run's machine, settings and round loads, the model's measurements."""
        archive = report_archive(args.model_store / f"{model}.mar") if not args.target else None
        return R.EndToEnd(
            kind=R.device_kind(machine),
            date=date,
            commit=commit,
            dirty=dirty,
            smoke=args.smoke,
            provenance={"measured": True},
            machine=machine,
            served=dataclasses.replace(
                infos[model], archive_engine=archive[0] if archive else None, archive=archive[1] if archive else None
            ),
            settings=dataclasses.replace(run_settings, peer_session=model),
            round_loads=loads,
            cells=[c.record() for c in measured[model].cells],
            model_only=measured[model].model_only(settings.engines),
            roofline=rooflines[model],
            paths=other.record() if model == first else elsewhere(other.record(), first),
            sweep=points[model],
        )

    for model in settings.models:
        run = record(model)
        path = R.save(run, folder)
        print(report.render_end_to_end(run))
        print(f"recorded {path}")
    if write:
        report.write(write, R.read_all([folder]))
        print(f"rendered {write} from {folder}")
    return 0


def describe(client: U2NetClient, model: str) -> R.Served:
    """What the server says of `model` (the archive's part is added from the .mar where it is here)."""
    try:
        info = client.describe(model)
    except U2NetError as exc:
        raise SystemExit(f"the server does not answer for {model} ({exc}); --models names the ones it serves") from exc
    return R.Served(
        model=info.name,
        device=info.device,
        engine=info.engine,
        weights=info.weights,
        batch_size=info.batch_size,
        max_batch_delay_ms=info.max_batch_delay_ms,
    )


def elsewhere(measured: R.Paths, model: str) -> R.Paths:
    """The other paths' part of the record of a model they were not measured with: why, group by group (a group
    left out of the run says why it was)."""
    why = f"the bench measures this path with {model} only (its section, the same rounds)"
    return R.Paths(not_measured={group: measured.not_measured.get(group, why) for group in paths.GROUPS})


def run_sweep(
    args: argparse.Namespace, settings: Settings, client: U2NetClient, model: str, metrics: Metrics
) -> list[R.SweepPoint]:
    """The concurrency sweep of `model` after the rounds, unless --no-sweep."""
    if args.no_sweep:
        log.info("concurrency sweep skipped (--no-sweep)")
        return []
    concurrencies = args.sweep_concurrency or ([1, 2] if args.smoke else sweep.CONCURRENCIES)
    log.info("concurrency sweep of %s at %s callers", model, " ".join(map(str, concurrencies)))
    probes = sweep.Probes(lambda: metrics.counters(sweep.COUNTERS), metrics.worker_rss_mib)
    points = sweep.run(client, model, settings.images, concurrencies, probes)
    log.info("%s %s", model, sweep.rss_summary(points))
    return points


def report_archive(mar: Path) -> tuple[str, str] | None:
    """The engine an archive serves with, and its files and model-config.yaml in words; None when unreadable."""
    try:
        with zipfile.ZipFile(mar) as z:
            names = z.namelist()
            config = yaml.safe_load(z.read("model-config.yaml")) or {}
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError):
        return None
    files = sorted(n for n in names if n.startswith(f"{mar.stem}.") and not n.endswith(".mar"))
    handler = config.get("handler") or {}
    engine = str(handler.get("engine", "torchscript"))
    settings = ", ".join(f"{k}={v}" for k, v in handler.items())
    text = (
        f"`{mar.name}`: engine {engine} (files {', '.join(files)}), batchSize {config.get('batchSize')}, "
        f"maxBatchDelay {config.get('maxBatchDelay')} ms, handler {settings or '-'}"
    )
    return engine, text


if __name__ == "__main__":
    sys.exit(main())
