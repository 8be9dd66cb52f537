"""Which CPU engine runs U²-Net's d0 head fastest at the authors' accuracy: model-only timings, interleaved.

    python -m benchmarks.engines --model u2netp --batch-sizes 1 2 4 --rounds 7 --threads 2
    python -m benchmarks.engines --rounds 1 --batch-sizes 1 --engines torchscript onnxruntime  # smoke
    python -m benchmarks.engines --write BENCHMARKS.md     # records benchmarks/results/*.json, renders the file

Every engine is timed once per batch size per round, engines interleaved within a round, so a noisy
neighbour slows all of them alike; the table shows medians, the JSON record every timed call. Each
engine's d0 is checked against eager PyTorch (max abs diff), and for U2NETP the full pipeline's masks
against the authors' published ones, judged by the serving accuracy gate (handler/precision.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tools
from benchmarks import report
from benchmarks import results as R
from handler import engine as E
from handler import precision, sources, weights
from handler.model import VARIANTS, U2Net, U2NetD0
from handler.pipeline import masks_from_d0, model_input
from u2serve.core import imaging

log = logging.getLogger(__name__)

Run = Callable[[torch.Tensor], torch.Tensor]
PEER = "onnxruntime-rembg"
REFERENCE_DIR = tools.REFERENCE_DIR


@dataclass(frozen=True)
class Setup:
    """What every engine builder gets: the fused eval model, its input side, a scratch folder, threads."""

    model: U2Net
    name: str
    size: int
    work: Path
    threads: int


# ---- engine builders: each returns a callable (N, 3, S, S) -> (N, 1, S, S) ----


def _eager(s: Setup) -> Run:
    head = U2NetD0(s.model).eval()
    return _no_grad(head)


def _served(kind: str, one_per_thread: bool = False) -> Callable[[Setup], Run]:
    # A served engine on its exported file, as a worker runs it: one stream, or one per thread
    # (handler.streams). Its own class, never handler.engine.load, whose fallback would time another engine.
    def build(s: Setup) -> Run:
        path = E.export(kind, s.model, s.work, s.name, s.size)
        return E.ENGINES[kind].load(path, torch.device("cpu"), s.threads, s.threads if one_per_thread else 1)

    return build


def _torchscript_ofi(s: Setup) -> Run:
    # optimize_for_inference swaps convs for oneDNN (MKLDNN) ones with prepacked weights.
    frozen = torch.jit.load(str(E.export(E.TORCHSCRIPT, s.model, s.work, s.name, s.size)))
    return _no_grad(torch.jit.optimize_for_inference(frozen))


def _torchscript_onednn(s: Setup) -> Run:
    # oneDNN Graph (LLGA) fusion is a process-wide JIT flag; it is on only while this engine runs.
    with _onednn_fusion():
        frozen = torch.jit.load(str(E.export(E.TORCHSCRIPT, s.model, s.work, s.name, s.size)))

    def run(x: torch.Tensor) -> torch.Tensor:
        with _onednn_fusion(), torch.no_grad():
            return frozen(x)

    return run


def _channels_last(s: Setup) -> Run:
    head = U2NetD0(s.model).eval().to(memory_format=torch.channels_last)
    return lambda x: _no_grad(head)(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _torchscript_channels_last(s: Setup) -> Run:
    head = U2NetD0(s.model).eval().to(memory_format=torch.channels_last)
    example = torch.rand(2, 3, s.size, s.size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(head, example).eval())
    return lambda x: _no_grad(frozen)(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _inductor(s: Setup) -> Run:
    import torch._inductor.config as inductor_config

    # Freezing folds the weights into the graph as constants, which lets inductor prepack convs.
    inductor_config.freezing = True
    compiled = torch.compile(U2NetD0(s.model).eval())

    def run(x: torch.Tensor) -> torch.Tensor:
        # A dynamic batch axis: one compile for every batch above 1 (batch 1 is specialised anyway).
        torch._dynamo.maybe_mark_dynamic(x, 0)
        with torch.no_grad():
            return compiled(x)

    return run


def _eager_bf16(s: Setup) -> Run:
    head = U2NetD0(s.model).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return head(x).float()

    return run


def _require_native_bf16() -> None:
    # Emulated bf16 is not a candidate. Native bf16 without AMX is: the study's timings there are why the
    # chain skips the bf16 engine on such a CPU (handler/engine.py), so it times what a worker would not pick.
    if not precision.native_bf16():
        raise E.EngineError("this CPU has no native bf16 (AVX512_BF16 or AMX)")


def _bf16(fp32_blocks: Sequence[str]) -> Callable[[Setup], Run]:
    # Eager, channels-last: bf16 everywhere but the fusing conv, or with a plan's fp32 islands
    # (handler/precision.py says why those).
    def build(s: Setup) -> Run:
        _require_native_bf16()
        head = precision.with_fp32_islands(s.model, tuple(fp32_blocks))

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return head(x)

        return run

    return build


def _torchscript_bf16(s: Setup) -> Run:
    # What a CPU archive serves on a CPU with AMX: the frozen trace, image by image (engine.Streams).
    _require_native_bf16()
    path = E.export(E.TORCHSCRIPT_BF16, s.model, s.work, s.name, s.size)
    return E.TorchScriptBF16Engine(path, torch.device("cpu"), s.threads)


def _openvino(precision: str) -> Callable[[Setup], Run]:
    # One stream on all the threads. Its CPU plugin picks bf16 by itself on a CPU with AVX512_BF16, hence
    # the explicit hint both ways.
    def build(s: Setup) -> Run:
        import openvino as ov

        path = E.export("onnxruntime", s.model, s.work, s.name, s.size)
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": s.threads, "NUM_STREAMS": 1}
        request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
        return lambda x: torch.from_numpy(request.infer({0: x.contiguous().numpy()})[0].copy())

    return build


def _mnn_batch(s: Setup) -> Run:
    # MNN's module on a whole batch in one call; the served engine runs image by image (MnnEngine says why).
    served = E.MnnEngine(E.export(E.MNN, s.model, s.work, s.name, s.size), torch.device("cpu"), s.threads)
    return lambda x: torch.from_numpy(E.mnn_forward(served.module, x.contiguous().numpy()))


def _xnnpack(s: Setup) -> Run:
    # optimize_for_mobile rewrites the frozen graph's convs into XNNPACK's prepacked ops (x86 included).
    from torch.utils.mobile_optimizer import optimize_for_mobile

    frozen = torch.jit.load(str(E.export(E.TORCHSCRIPT, s.model, s.work, s.name, s.size)))
    return _no_grad(optimize_for_mobile(frozen))


def _onnxruntime_rembg(s: Setup) -> Run:
    # rembg's file has batch 1 fixed, and rembg runs one image at a time: a batch is N runs.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = s.threads
    rembgs_file = sources.fetch(sources.PUBLISHED[s.name])
    session = ort.InferenceSession(str(rembgs_file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        outs = [session.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(outs))

    return run


BUILDERS: dict[str, Callable[[Setup], Run]] = {
    "eager": _eager,
    "torchscript": _served(E.TORCHSCRIPT),
    "torchscript-ofi": _torchscript_ofi,
    "torchscript-onednn": _torchscript_onednn,
    "channels-last": _channels_last,
    "torchscript-cl": _torchscript_channels_last,
    "inductor": _inductor,
    "eager-bf16": _eager_bf16,
    "bf16-cl": _bf16(()),
    "bf16-islands": _bf16(precision.PLANS["u2netp"].fp32_blocks),
    E.TORCHSCRIPT_BF16: _torchscript_bf16,
    E.OPENVINO: _served(E.OPENVINO),
    "openvino-streams": _served(E.OPENVINO, one_per_thread=True),
    "openvino-bf16": _openvino("bf16"),
    E.MNN: _served(E.MNN),
    "mnn-batch": _mnn_batch,
    "xnnpack": _xnnpack,
    "onnxruntime": _served(E.ONNXRUNTIME),
    "onnxruntime-streams": _served(E.ONNXRUNTIME, one_per_thread=True),
    PEER: _onnxruntime_rembg,
}


def _no_grad(fn: Callable[[torch.Tensor], torch.Tensor]) -> Run:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fn(x)

    return run


@contextlib.contextmanager
def _onednn_fusion() -> Iterator[None]:
    before = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(before)


# ---- measurement ----


@dataclass(frozen=True)
class Row:
    """One engine at one batch size."""

    model: str
    engine: str
    batch: int
    samples_ms: list[float]  # wall time of each timed batch
    max_abs_diff: float  # of d0 against eager PyTorch, at this batch
    build_s: float  # export/compile plus warm-up at every batch size
    mae_mean: float | None  # full-pipeline masks vs the published ones (U2NETP only)
    mae_max: float | None

    @property
    def ms(self) -> float:
        """The median wall time of one batch."""
        return statistics.median(self.samples_ms)

    def record(self) -> R.StudyRow:
        return R.StudyRow(
            self.model, self.engine, self.batch, self.max_abs_diff, self.build_s, self.mae_mean, self.mae_max,
            list(self.samples_ms),
        )  # fmt: skip


def conv_macs(model: U2Net, size: int) -> int:
    """Multiply-accumulates of every convolution in one size×size image's forward pass."""
    total = 0

    def count(module: torch.nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output[0].numel() * module.in_channels // module.groups * kh * kw

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 7) -> float:
    """This CPU's fp32 matrix-multiply throughput with `threads` threads, GFLOP/s (the best of `repeats`:
    a peak, which a busy neighbour can only lower).

    A convolution engine runs at most at about this rate: it is the roofline the model-only rows are
    read against.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.rand(n, n, generator=gen), torch.rand(n, n, generator=gen)
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2.0 * n**3 / min(times) / 1e9


def load_model(name: str) -> U2Net:
    """The authors' weights of `name`, as rembg publishes them (handler.sources)."""
    return weights.published(name).model


def measure(
    model_name: str,
    engines: Sequence[str],
    batch_sizes: Sequence[int],
    rounds: int,
    threads: int,
    reference_dir: Path | None = REFERENCE_DIR,
    model: U2Net | None = None,
    first_round: int = 0,
    left_out: dict[str, str] | None = None,
) -> list[Row]:
    """Builds each engine, checks it, then times all of them interleaved.

    Args:
        model_name: "u2netp" or "u2net".
        engines: Keys of BUILDERS; one that fails to build is reported on stderr and left out.
        batch_sizes: Batch sizes to time.
        rounds: Timed calls per engine and batch size.
        threads: Torch intra-op threads, and onnxruntime's.
        reference_dir: The authors' images and masks; None (or a folder without them) skips the accuracy gate.
        model: The fused eval model; loaded with load_model when None.
        first_round: Where the engines' rotating order starts (a caller timing one round at a time
            passes its round number, so the order still rotates).
        left_out: Filled with each engine that could not be built or run here and why (the study records
            them: a candidate that cannot run on this CPU is a result too).

    Returns:
        One Row per built engine and batch size, in the order asked.
    """
    unknown = set(engines) - set(BUILDERS)
    if unknown:
        raise ValueError(f"unknown engines {sorted(unknown)}; known: {', '.join(BUILDERS)}")
    torch.set_num_threads(threads)
    model = model if model is not None else load_model(model_name)
    size = VARIANTS[model_name].input_size
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.rand(b, 3, size, size, generator=gen) for b in batch_sizes}
    with torch.no_grad():
        eager = U2NetD0(model).eval()
        expected = {b: eager(x) for b, x in inputs.items()}
    accuracy_inputs = reference_inputs(reference_dir, model_name) if reference_dir else None
    with tempfile.TemporaryDirectory(prefix="u2serve-engines-") as tmp:
        setup = Setup(model, model_name, size, Path(tmp), threads)
        built: dict[str, tuple[Run, float, dict[int, float], tuple[float, float] | None]] = {}
        for name in engines:
            try:
                start = time.perf_counter()
                run = BUILDERS[name](setup)
                diffs = {b: _warm_up(run, x, expected[b]) for b, x in inputs.items()}
                build_s = time.perf_counter() - start
            except Exception as exc:  # a candidate that cannot build here is a result, not a crash
                log.warning("%s: cannot build (%s: %s); left out", name, type(exc).__name__, exc)
                if left_out is not None:
                    left_out[name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                continue
            log.info("%s: built and warmed up in %.1f s", name, build_s)
            mae = masks_mae(run, accuracy_inputs) if accuracy_inputs else None
            built[name] = (run, build_s, diffs, mae)
        times = _time_interleaved({n: b[0] for n, b in built.items()}, inputs, rounds, first_round)
    return [
        Row(model_name, name, b, times[name, b], diffs[b], build_s, *(mae or (None, None)))
        for name, (_, build_s, diffs, mae) in built.items()
        for b in batch_sizes
    ]


def _warm_up(run: Run, x: torch.Tensor, expected: torch.Tensor) -> float:
    # TorchScript profiles and optimises on its first calls, inductor compiles once per shape:
    # the second call's output is the one the timed calls will give.
    run(x)
    return float((run(x) - expected).abs().max())


def _time_interleaved(
    runs: dict[str, Run], inputs: dict[int, torch.Tensor], rounds: int, first_round: int = 0
) -> dict[tuple[str, int], list[float]]:
    samples: dict[tuple[str, int], list[float]] = {(n, b): [] for n in runs for b in inputs}
    order = list(runs)
    for r in range(first_round, first_round + rounds):
        # Rotated each round: an engine's threads may still be spinning when the next one starts, so no
        # engine should always follow the same neighbour.
        shift = r % len(order) if order else 0
        for b, x in inputs.items():
            for name in order[shift:] + order[:shift]:
                run = runs[name]
                start = time.perf_counter()
                run(x)
                samples[name, b].append((time.perf_counter() - start) * 1000.0)
    return samples


@dataclass(frozen=True)
class _Reference:
    batch: torch.Tensor  # (1, 3, S, S)
    size: tuple[int, int]  # (width, height)
    published: np.ndarray  # HxW uint8


def reference_inputs(reference_dir: Path, model_name: str) -> list[_Reference] | None:
    """The authors' images as model inputs with their published masks; None where there are none."""
    masks = reference_dir / f"{model_name}_masks"
    if not (reference_dir / "images").is_dir() or not masks.is_dir():
        return None
    variant = VARIANTS[model_name]
    refs = []
    for path in sorted((reference_dir / "images").iterdir()):
        decoded = imaging.decode_image(path.read_bytes(), max_pixels=100_000_000)
        batch = model_input([decoded.rgb], variant)
        height, width = decoded.rgb.shape[:2]
        published = np.asarray(Image.open(masks / f"{path.stem}.png").convert("L"))
        refs.append(_Reference(batch, (width, height), published))
    return refs


def masks_mae(run: Run, refs: list[_Reference]) -> tuple[float, float]:
    """Mean and max over the images of the full pipeline's mask MAE against the published masks."""
    errors = []
    for ref in refs:
        (mask,) = masks_from_d0(run(ref.batch), [ref.size])
        errors.append(float(np.abs(mask.astype(np.float64) - ref.published).mean() / 255.0))
    return statistics.fmean(errors), max(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(VARIANTS), default="u2netp")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--reference-dir", type=Path, default=REFERENCE_DIR)
    parser.add_argument("--no-accuracy", action="store_true", help="skip the published-mask check")
    parser.add_argument("--write", type=Path, help="render this markdown file (BENCHMARKS.md) from the records")
    parser.add_argument(
        "--results",
        type=Path,
        help="folder for the JSON record; default benchmarks/results/ beside --write, else a temp one",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.rounds < 1 or min(args.batch_sizes) < 1 or args.threads < 1:
        parser.error("--rounds, --batch-sizes and --threads must be at least 1")
    reference = None if args.no_accuracy else args.reference_dir
    folder, _ = R.destinations(args.results, args.write, smoke=False)
    machine = R.Machine.here()
    date, (commit, dirty) = R.now(), R.commit()  # what runs, as it starts
    left_out: dict[str, str] = {}
    rows = measure(args.model, args.engines, args.batch_sizes, args.rounds, args.threads, reference, left_out=left_out)
    study = R.EngineStudy(
        kind=R.device_kind(machine),
        date=date,
        commit=commit,
        dirty=dirty,
        smoke=False,
        provenance={"measured": True},
        machine=dataclasses.replace(machine, load_after=R.load()),
        settings=R.StudySettings(
            args.model, args.threads, args.rounds, PEER, precision.GATE_MEAN_MAE, precision.GATE_MAX_MAE
        ),
        matmul_gflops=matmul_gflops(args.threads),
        macs_per_image=conv_macs(load_model(args.model), VARIANTS[args.model].input_size),
        rows=[r.record() for r in rows],
        left_out=left_out,
    )
    path = R.save(study, folder)
    print(report.render_study(study))
    print(f"recorded {path}")
    if args.write:
        report.write(args.write, R.read_all([folder]))
        print(f"rendered {args.write} from {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
