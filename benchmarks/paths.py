"""The other ways to the served model, measured in `make bench`'s rounds beside the gRPC SDK path to TorchServe.

- options (issue 11): one photo's cutout with each option set of benchmarks/options.py, sent to the same
  TorchServe one at a time; the server time is what the handler itself timed (SegmentResponse.timings_ms:
  decode, preprocess, inference, postprocess with compose, encode), against today's RGBA PNG cutout of
  the photo in the same round.
- web (issue 12): the web gateway (tools/web.py, `python -m u2serve.web`) in front of the same
  TorchServe, rembg's `POST /api/remove` (cutout, and `om=true` for the mask) from --web-callers HTTP
  callers over one connection pool, against the SDK's gRPC cells with as many callers.
- triton (issue 15): a real tritonserver (tools/triton.py) started here on free ports, serving the
  repository handler/triton.py writes from the same archive (`--serving cpu`: the CPU stand-in for
  libtorch, running the archive's engine as the TorchServe worker does), called through the SDK with
  protocol="v2" at the run's concurrencies; the batches it formed come from Triton's statistics API.

Each group is a step of bench.py's rounds (their order rotates from round to round), so every ratio is
taken within one round. `--no-options`, `--no-web`, `--no-triton` leave a group out; the record says why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import random
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx
from PIL import Image

from benchmarks import options
from benchmarks import results as R
from benchmarks import verdicts as V
from u2net_client import U2NetClient, U2NetError

log = logging.getLogger(__name__)

CALLS = ("cutout", "mask")
GROUPS = ("options", "web", "triton")
# Each option set is sent this many times per round (all of them, then all again): the per-request server time
# of the 6 MP photo varies a lot on a noisy host, which three rounds alone would leave in the ratios. Each pass
# has its own shuffled order (seeded): in a fixed cyclic order today's cutout always came after matting, whose
# large allocations left the worker's heap grown, so its decode found memory already mapped and ran faster than
# the rows after a small request (page faults are costly on a VM).
OPTION_PASSES = 3
OPTION_ORDER = "shuffled per pass (seeded)"
WEB_CALLERS = 4
REMBG_API = "/api/remove"
TRITON_SERVING = "cpu"  # nvidia-pytriton's tritonserver has no libtorch backend: the CPU stand-in


class Counters(Protocol):
    def counters(self) -> dict[str, float] | None: ...


# benchmarks.bench's time_served(client, model, cell, images, counters) and warm_up_server(client, model,
# images, concurrencies): the SDK path is timed by the one function, whichever server answers.
TimeServed = Callable[[U2NetClient, str, Any, Sequence[bytes], Counters], None]
WarmUp = Callable[[U2NetClient, str, Sequence[bytes], Sequence[int]], None]
Step = tuple[str, Callable[[], None]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the other paths (each measured by default)")
    group.add_argument("--no-options", action="store_true", help="skip the cutout options' server time (issue 11)")
    group.add_argument("--no-web", action="store_true", help="skip the web gateway's HTTP path (issue 12)")
    group.add_argument("--no-triton", action="store_true", help="skip the Triton path (issue 15)")
    group.add_argument("--web-callers", type=int, default=WEB_CALLERS, help="HTTP callers (default 4)")
    group.add_argument(
        "--options-image", type=Path,
        help=f"the photo of the option rows; default {options.PHOTO} (6 MP) of the reference set, smoke: the "
        "smallest of --images",
    )  # fmt: skip


def concurrencies(args: argparse.Namespace, served: list[int]) -> list[int]:
    """The served concurrencies, with the web callers' added: the HTTP path is judged against that gRPC cell."""
    return served if args.no_web else sorted(set(served) | {args.web_callers})


# ---- options: server time per option (issue 11) ----


class OptionsPath:
    """Each option set OPTION_PASSES times per round, one request at a time: every set once per pass, each pass in
    its own shuffled order."""

    def __init__(self, client: U2NetClient, model: str, photo: Path) -> None:
        self.client, self.model = client, model
        self.photo, self.image = photo, photo.read_bytes()
        with Image.open(io.BytesIO(self.image)) as im:
            self.size = im.size
        self.cases = options.cases(*options.backgrounds())
        self.samples: dict[str, list[R.OptionSample]] = {name: [] for name in self.cases}
        self._order = random.Random(11)

    def warm_up(self, image: bytes) -> None:
        """Every option once on a small `image`: first calls load what each needs (pymatting's compiled solvers
        for matting, an encoder's plugin), whatever the size."""
        for case in self.cases.values():
            self.client.cutout(image, self.model, **case.kwargs)

    def step(self) -> None:
        names = list(self.cases)
        for _ in range(OPTION_PASSES):
            self._order.shuffle(names)
            for name in names:
                self.samples[name].append(self._one(name))

    def _one(self, name: str) -> R.OptionSample:
        start = time.perf_counter()
        try:
            result = self.client.cutout(self.image, self.model, **self.cases[name].kwargs)
        except U2NetError as exc:
            return R.OptionSample({}, (time.perf_counter() - start) * 1000.0, 0, "", str(exc))
        latency = (time.perf_counter() - start) * 1000.0
        return R.OptionSample(dict(result.timings), latency, len(result.data), result.media_type)

    def record(self) -> R.OptionsStudy:
        width, height = self.size
        rows = [
            R.OptionRow(name, _call(case.kwargs), case.common, case.matting, self.samples[name])
            for name, case in self.cases.items()
        ]
        return R.OptionsStudy(
            image=self.photo.name, width=width, height=height, background=options.describe_backgrounds(),
            baseline=options.BASELINE, jpeg_vs_png=options.JPEG_VS_PNG, rows=rows, passes=OPTION_PASSES,
            order=OPTION_ORDER,
        )  # fmt: skip


def _call(kwargs: dict[str, Any]) -> str:
    shown = {k: "<background JPEG>" if k == "background_image" else repr(v) for k, v in kwargs.items()}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "(none)"


def options_photo(args: argparse.Namespace, images: Path) -> Path:
    if args.options_image:
        return args.options_image
    if args.smoke:  # the smallest file of the bench's images, as the smoke run's SDK cells take
        return min((p for p in images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}), key=_size)
    return options.DEFAULT_REFERENCE / options.PHOTO


def _size(path: Path) -> int:
    return path.stat().st_size


# ---- web: the gateway over HTTP (issue 12) ----


class WebPath:
    """rembg's POST /api/remove on the gateway from `callers` threads sharing one HTTP connection pool."""

    def __init__(self, url: str, token: Callable[[], str], model: str, callers: int, metrics: Counters) -> None:
        self.url, self.token, self.model, self.metrics = url + REMBG_API, token, model, metrics
        self.http = httpx.Client(timeout=600.0, limits=httpx.Limits(max_connections=callers))
        self.cells = [R.Cell("web", op, callers, []) for op in CALLS]

    def close(self) -> None:
        self.http.close()

    def time(self, cell: R.Cell, images: Sequence[bytes]) -> None:
        assert cell.rounds is not None
        headers = {"X-Api-Key": self.token()}  # re-read: the gateway accepts TorchServe's current key
        form = {"model": self.model, **({"om": "true"} if cell.op == "mask" else {})}

        def one(image: bytes) -> tuple[float, int] | str:
            start = time.perf_counter()
            try:
                resp = self.http.post(self.url, files={"file": ("image", image)}, data=form, headers=headers)
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__}: {exc}"
            if resp.status_code != 200:
                return f"HTTP {resp.status_code}: {resp.text[:200]}"
            return (time.perf_counter() - start) * 1000.0, int(resp.headers.get("X-U2Serve-Batch-Size", "0"))

        before = self.metrics.counters()
        start = time.perf_counter()
        with ThreadPoolExecutor(cell.concurrency, thread_name_prefix="http") as pool:
            outcomes = list(pool.map(one, images))
        seconds = time.perf_counter() - start
        after = self.metrics.counters()
        answered = [o for o in outcomes if not isinstance(o, str)]
        deltas = {name: after[name] - before[name] for name in after} if before and after else {}
        cell.rounds.append(
            R.Round(
                seconds, len(images), [ms for ms, _ in answered], [size for _, size in answered],
                [o for o in outcomes if isinstance(o, str)], deltas,
            )
        )  # fmt: skip


@contextlib.contextmanager
def gateway(client: U2NetClient, key_file: Path | None, model: str) -> Iterator[Any]:
    """The web gateway on a free port in front of `client`'s TorchServe, stopped afterwards.

    It accepts TorchServe's inference key from `key_file` (None: $U2SERVE_KEY_FILE, else var/key_file.json).
    """
    from tools.web import Web, start
    from u2serve.web.settings import find_key_file

    found = find_key_file(str(key_file) if key_file else None)
    with tempfile.TemporaryDirectory(prefix="u2serve-bench-web-") as home:
        (Path(home) / "key_file.json").symlink_to(found)  # a link: the gateway re-reads it when TorchServe rotates
        web = Web(Path(home), port=_free_port())
        args = ["--target", client.target, "--management-target", client.management_target,
                "--models", model, "--rembg-default-model", model, "--timeout", "600"]  # fmt: skip
        start(web, args)
        try:
            yield web
        finally:
            web.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- triton: a real tritonserver (issue 15) ----


class TritonStats:
    """The segment model's requests, executions and batch sizes from Triton's statistics API, as counters."""

    def __init__(self, server: Any, model: str, max_batch_size: int) -> None:
        self.server, self.model, self.max_batch_size = server, model, max_batch_size

    def counters(self) -> dict[str, float]:
        (stats,) = self.server.statistics(self.model)["model_stats"]
        sizes = {int(b["batch_size"]): float(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
        found = {V.REQUESTS: float(stats["inference_count"]), V.BATCHES: float(stats["execution_count"])}
        # Every size, seen or not: a round's delta is after minus before, key by key.
        return found | {V.batches_of(size): sizes.get(size, 0.0) for size in range(1, self.max_batch_size + 1)}


@dataclasses.dataclass
class TritonPath:
    client: U2NetClient
    stats: TritonStats
    served: R.TritonServed
    cells: list[R.Cell]


@contextlib.contextmanager
def triton(model: str, store: Path, callers: Sequence[int]) -> Iterator[TritonPath]:
    """tritonserver on free ports serving `model`'s repository written from `store`'s archive; stopped after."""
    from handler.triton import NETWORK_SUFFIX, TritonSettings, export_from_archive, loaded_engine
    from tools.triton import Ports, start

    settings = TritonSettings.for_serving(TRITON_SERVING)
    with tempfile.TemporaryDirectory(prefix="u2serve-bench-triton-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        export_from_archive(model, repo, store / f"{model}.mar", settings)
        log.info("starting tritonserver for %s", model)
        server = start(Path(tmp) / "home", repo, [model], Ports.free())
        try:
            server.wait_ready(timeout=600)
            status, body = server.http("/v2")
            version = json.loads(body).get("version", "unknown") if status == 200 else "unknown"
            with U2NetClient(
                server.grpc_target, server.grpc_target, key_file=server.key_file, timeout=600, protocol="v2"
            ) as client:
                info = client.describe(model)
                # describe() names the engine chosen for this machine when the repository was written; the
                # stand-in's log the one it loaded: they differ only where the two machines differ.
                runs = loaded_engine(server.log_file.read_text(errors="replace"), f"{model}{NETWORK_SUFFIX}")
                engine = info.engine
                if runs is not None and not (engine or "").startswith(f"{runs} ("):
                    engine = f"{runs} (loaded; describe says: {engine})"
                served = R.TritonServed(
                    version=version, model=info.name, device=info.device, engine=engine, weights=info.weights,
                    max_batch_size=settings.max_batch_size, max_queue_delay_us=settings.max_queue_delay_us,
                    repository=f"python -m handler.triton --from-store {store.name} --serving {TRITON_SERVING}",
                )  # fmt: skip
                cells = [R.Cell("triton", op, c, []) for op in CALLS for c in callers]
                yield TritonPath(client, TritonStats(server, model, settings.max_batch_size), served, cells)
        finally:
            server.stop()


# ---- the groups together ----


@dataclasses.dataclass
class Groups:
    """What the paths add to a run: steps for its rounds, then their part of the record."""

    options: OptionsPath | None = None
    web: WebPath | None = None
    web_endpoint: str | None = None
    triton: TritonPath | None = None
    not_measured: dict[str, str] = dataclasses.field(default_factory=dict)
    steps: list[Step] = dataclasses.field(default_factory=list)

    def record(self) -> R.Paths:
        return R.Paths(
            options=self.options.record() if self.options else None,
            web=self.web.cells if self.web else [],
            web_endpoint=self.web_endpoint,
            triton=self.triton.cells if self.triton else [],
            triton_served=self.triton.served if self.triton else None,
            not_measured=self.not_measured,
        )


@contextlib.contextmanager
def started(
    args: argparse.Namespace,
    client: U2NetClient,
    model: str,
    key_file: Path | None,
    metrics: Counters,
    images: Sequence[bytes],
    served_concurrencies: Sequence[int],
    device: str,
    time_served: TimeServed,
    warm_up: WarmUp,
) -> Iterator[Groups]:
    """The gateway and Triton for `model` started, each group warmed up and turned into steps; everything stopped
    after."""
    groups = Groups()
    with contextlib.ExitStack() as stack:
        if args.no_options:
            groups.not_measured["options"] = "left out (--no-options)"
        else:
            groups.options = OptionsPath(client, model, options_photo(args, args.images))
            log.info("warming up the option rows; measuring them on %s", groups.options.photo.name)
            groups.options.warm_up(min(images, key=len))
            groups.steps.append(("cutout options", groups.options.step))
        if args.no_web:
            groups.not_measured["web"] = "left out (--no-web)"
        else:
            web = stack.enter_context(gateway(client, key_file, model))
            groups.web = WebPath(web.url, web.token, model, args.web_callers, metrics)
            stack.callback(groups.web.close)
            groups.web_endpoint = f"POST {REMBG_API} (rembg's API; om=true for the mask) on {web.url}"
            for cell in groups.web.cells:
                probe = R.Cell("web", cell.op, cell.concurrency, [])  # warm-up, not recorded
                groups.web.time(probe, images[: args.web_callers])
                if errors := [e for r in probe.rounds or [] for e in r.errors]:
                    raise SystemExit(f"the web gateway failed its warm-up {cell.op}: {errors[0]}")
                groups.steps.append((f"web {cell.op} x{cell.concurrency}", _web_step(groups.web, cell, images)))
        if args.no_triton:
            groups.not_measured["triton"] = "left out (--no-triton)"
        elif device == "cuda":
            groups.not_measured["triton"] = (
                "not on a GPU machine: nvidia-pytriton's tritonserver has no libtorch backend, and its CPU "
                "stand-in would not be comparable with TorchServe on the GPU (NVIDIA's Triton image serves "
                "`--serving gpu` repositories)"
            )
        else:
            groups.triton = stack.enter_context(triton(model, args.model_store, served_concurrencies))
            warm_up(groups.triton.client, model, images, served_concurrencies)
            for cell in groups.triton.cells:
                groups.steps.append(
                    (f"triton {cell.op} x{cell.concurrency}", _served_step(time_served, groups.triton, cell, images))
                )
        yield groups


def _web_step(web: WebPath, cell: R.Cell, images: Sequence[bytes]) -> Callable[[], None]:
    return lambda: web.time(cell, images)


def _served_step(
    time_served: TimeServed, path: TritonPath, cell: R.Cell, images: Sequence[bytes]
) -> Callable[[], None]:
    return lambda: time_served(path.client, path.served.model, cell, images, path.stats)
