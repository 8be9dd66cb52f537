"""Inference engines for U²-Net's d0 head: one call, (N, 3, S, S) float32 -> (N, 1, S, S), over several runtimes.

The build step exports each engine's file into the archive (`export`); the worker loads the one its
settings name (`load`), or the first engine of its fallback chain that can run in this worker. Every
archive carries the TorchScript file, the chain's last resort.
Why onnxruntime: on an AVX-512 CPU it runs U2NETP faster than frozen TorchScript at the same accuracy.
Why torchscript-bf16: on a CPU with native bf16 it runs U2NETP faster than onnxruntime, within the serving
accuracy gate (handler/precision.py). Why openvino: on a CPU without native bf16 (AVX2 only) its fp32 runs
U2NETP faster than our onnxruntime session at the same accuracy (OpenVinoEngine). Why mnn: its Winograd fp32
gets past OpenVINO's direct convolutions on an AVX2-only CPU, at the same accuracy (MnnEngine); its wheel has
no AVX-512 kernels, and a CPU with AVX-512 runs OpenVINO instead. Each engine names the one to fall back to
when it cannot run, or runs slower than that one on this CPU: torchscript-bf16 -> mnn -> openvino ->
onnxruntime -> torchscript. benchmarks/engines.py's study measures each of these comparisons; its records
render in BENCHMARKS.md and docs/engines.md.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from handler import cpu, precision
from handler.model import U2Net, U2NetD0

log = logging.getLogger(__name__)

# The ONNX graph's tensor names; the batch axis of both is dynamic.
ONNX_INPUT = "input"
ONNX_OUTPUT = "d0"
# 17 has every op U²-Net needs (Resize, MaxPool with ceil_mode) and loads in any onnxruntime >= 1.13.
ONNX_OPSET = 17


class EngineError(ValueError):
    """An engine that cannot be built or loaded: unknown name, missing file."""


class Engine(ABC):
    """A loaded d0 head: `engine(x)` maps an (N, 3, S, S) float32 batch on `device` to (N, 1, S, S) on `device`."""

    name: str
    device: torch.device
    stream_count: int = 1  # images of a CPU batch that run side by side

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


ImageRun = Callable[[torch.Tensor], torch.Tensor]


class Streams:
    """A CPU batch run image by image: a lone image on all of the runtime's threads; with `count` streams,
    a batch's images `count` at a time side by side, the threads shared among them (handler.streams).

    U2NETP's convolutions at 320x320 keep two threads only partly busy: on a 2-core CPU (Intel Xeon, AMX)
    two single-threaded bf16 runs side by side served more images per second than one two-threaded run
    after the other, and so did the served cutout with 4 callers. The price is memory: each image side by
    side holds its activations at once (bf16 U2NETP's fp32 islands run at full resolution), which took the
    worker past its 800 MiB bound once it had also loaded pymatting's numba, though not on a fresh worker
    (tests/test_memory.py holds the default's worker to that bound). So one stream is the default and the
    choice is the operator's. A batch that does not divide into the streams runs its last images on all threads.

    Args:
        threads: The runtime's threads (0: torch's count); 1 runs every image on the caller's thread.
        narrow: Called once in each stream's thread with the stream's share of the threads, to set the
            runtime's count there.
        count: Images side by side (at most `threads`); 1 runs them one after the other.
    """

    def __init__(self, threads: int, narrow: Callable[[int], None] | None = None, count: int = 1) -> None:
        self.width, self.count = side_by_side(threads, count)
        self.share = self.width // self.count
        self._pool: ThreadPoolExecutor | None = None
        if self.count > 1:
            self._pool = ThreadPoolExecutor(
                self.count, thread_name_prefix="engine-stream", initializer=narrow, initargs=(self.share,)
            )

    def run(self, x: torch.Tensor, wide: ImageRun, narrow: ImageRun) -> torch.Tensor:
        """`wide(image)` or `narrow(image)` on each (1, 3, S, S) image of `x`, the outputs concatenated."""
        images = [x[i : i + 1] for i in range(x.shape[0])]
        side_by_side = 0 if self._pool is None else len(images) - len(images) % self.count
        outputs = list(self._pool.map(narrow, images[:side_by_side])) if side_by_side else []
        outputs += [wide(image) for image in images[side_by_side:]]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def side_by_side(threads: int, streams: int) -> tuple[int, int]:
    """(threads, streams) as they run: 0 threads is torch's count, and at least 1, at most one stream per thread."""
    width = threads if threads > 0 else torch.get_num_threads()
    return width, max(1, min(streams, width))


def _torch_threads(threads: int) -> None:
    # Torch's intra-op thread count is per thread (OpenMP's nthreads-var): a stream's thread runs on its
    # share, the handler's own thread keeps the count it set.
    torch.set_num_threads(threads)


class TorchScriptEngine(Engine):
    """Frozen TorchScript: a batch at once on a GPU, image by image on the CPU (see Streams).

    On the CPU a batch of 8 U2NETP images run at once holds all their activations together, far past the
    worker's 800 MiB bound; image by image the worker stays under it (tests/test_memory.py holds it there),
    and TorchServe's batching still shares the per-request overhead. On a GPU the batch is what fills the
    device.
    """

    name = "torchscript"

    def __init__(self, path: Path, device: torch.device, threads: int = 0, streams: int = 1) -> None:
        self.device = device
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self.streams = Streams(threads, _torch_threads, streams if device.type == "cpu" else 1)
        self.stream_count = self.streams.count

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cpu":
            with torch.inference_mode():
                return self.module(x)
        return self.streams.run(x, self._wide, self._one)

    def _wide(self, image: torch.Tensor) -> torch.Tensor:
        # A thread torch met after a stream started takes the streams' count of 1: give it back its width.
        if torch.get_num_threads() != self.streams.width:
            torch.set_num_threads(self.streams.width)
        return self._one(image)

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # thread-local: set in whichever thread runs the image
            return self.module(image)


class TorchScriptBF16Engine(TorchScriptEngine):
    """The mixed-precision TorchScript (handler/precision.py), one image at a time (a CPU engine).

    In bf16, U2NETP ran slower per image at batch 4 than at batch 1 on a 2-core CPU (eager, in
    benchmarks/engines.py's study), so a batch is run image by image (Streams); TorchServe's batching
    still shares the per-request overhead.
    """

    name = "torchscript-bf16"


class OnnxRuntimeEngine(Engine):
    """onnxruntime's CPU session, one image at a time, without its memory arena.

    With its defaults (a growing arena, a memory pattern per input shape) a U2NETP worker fed batches of
    1 to 8 grew past its memory bound within a few dozen requests and kept growing; a batch of 8 alone
    holds all eight images' activations at once. One image at a time with the arena off, the session's own
    memory peaked at a fraction of that in the same run, at the same speed on a 2-core CPU
    (benchmarks/engines.py's study measures the speed, tests/test_memory.py the worker's peak). The memory
    pattern stays on: every call has the one shape (1, 3, S, S). With streams (see Streams) a second
    session on the streams' share of the threads runs images side by side (session.run is thread-safe):
    on the 2-core Xeon more images per second than one session, for a higher peak on a batch of the 8
    largest reference images.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, device: torch.device, threads: int = 0, streams: int = 1) -> None:
        self.device = device
        self.streams = Streams(threads, count=streams)
        self.stream_count = self.streams.count
        # 0 is onnxruntime's own default (one thread per physical core).
        self.session = _ort_session(path, threads)
        self.narrow = _ort_session(path, self.streams.share) if self.streams.count > 1 else self.session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.streams.run(x, partial(_ort_run, self.session), partial(_ort_run, self.narrow))


class OpenVinoEngine(Engine):
    """OpenVINO's CPU plugin in fp32 on the ONNX file, image by image (or over its streams).

    Why: on a CPU without native bf16 (a 2-core AMD EPYC Zen 3, AVX2 and FMA only) it runs U2NETP at the
    same accuracy as onnxruntime, faster: on one stream of 2 threads (the model reshaped to a static batch
    of 1) it outran both our onnxruntime session without its arena and rembg's session
    (benchmarks/engines.py's study and `make bench` measure it). Its streams are OpenVINO's own
    (NUM_STREAMS, one infer request each, memory planned once per request), the threads shared among
    them as with Streams; one is the default (handler.streams). Two gave no more throughput on that CPU
    (on batches of 4), ran a lone image on one thread only, slower, and held more memory: once it had
    served matting (numba's compiled solvers stay resident) the served worker peaked over the 800 MiB
    bound (tests/test_memory.py). The precision is pinned to f32: on a CPU with AVX512_BF16 the plugin
    would pick bf16 by itself, which fails the accuracy gate for U2NETP (handler/precision.py).
    """

    name = "openvino"

    def __init__(self, path: Path, device: torch.device, threads: int = 0, streams: int = 1) -> None:
        import openvino as ov

        self.device = device
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": side_by_side(threads, streams)[1]}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        network = core.read_model(str(path))
        # One image per request, so a static batch of 1: the plugin then plans each request's activations
        # once, less memory than with the file's dynamic batch axis, and one stream runs as fast as two did
        # with the dynamic shape.
        network.reshape([1, *network.input(0).get_partial_shape()[1:].to_shape()])
        self.compiled = core.compile_model(network, "CPU", config)
        self.stream_count = int(self.compiled.get_property("NUM_STREAMS"))
        self.requests = ov.AsyncInferQueue(self.compiled, self.stream_count)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = x.detach().contiguous().numpy()
        if len(images) == 1 or self.stream_count == 1:
            ran = [self.requests[0].infer({0: images[i : i + 1]})[0].copy() for i in range(len(images))]
            return torch.from_numpy(ran[0] if len(ran) == 1 else np.concatenate(ran))
        outputs: list[np.ndarray | None] = [None] * len(images)

        def done(request: Any, i: int) -> None:
            outputs[i] = request.get_output_tensor(0).data.copy()

        self.requests.set_callback(done)
        for i in range(len(images)):
            self.requests.start_async({0: images[i : i + 1]}, i)
        self.requests.wait_all()
        return torch.from_numpy(np.concatenate(outputs))  # type: ignore[arg-type]


class MnnEngine(Engine):
    """MNN's CPU runtime in fp32 (precision "high") on the `.mnn` file converted from the ONNX file, image by image.

    Why: MNN runs U²-Net's 3×3 stride-1 convolutions as Winograd convolutions, fewer multiplications for the
    same fp32 result, so on an AVX2-only CPU it gets past the direct-convolution rate OpenVINO's fp32 runs
    at, with the same masks: on a 2-core AMD EPYC Zen 3 it outran OpenVINO on U2NETP and U2NET alike. Its
    wheel has AVX2 kernels and no AVX-512 ones: on the 2-core Xeon (AVX-512, AMX) it ran below OpenVINO on
    both models (benchmarks/engines.py's study measures both), so such a CPU skips it (the kind's hardware
    check). A batch is run image by image: one call on a batch of 8 held several times the memory of 8
    calls (U2NET's past its worker's bound) for little speed (none on U2NETP, a little on U2NET at batch 4),
    and the one shape (1, 3, S, S) is planned once. The Python binding holds the GIL through a forward, so
    streams could not run side by side: this engine runs one stream on all of its threads whatever
    `streams` asks. MNN/__init__ imports no MNN.tools, whose converter wrapper pulls in a logging SDK that
    reports usage; nothing here imports it (tests/test_engine.py checks).
    """

    name = "mnn"

    def __init__(self, path: Path, device: torch.device, threads: int = 0, streams: int = 1) -> None:
        import MNN.nn

        self.device = device
        width = side_by_side(threads, 1)[0]
        if streams > 1:
            log.info("engine mnn runs one image after the other on %d threads (%d streams asked)", width, streams)
        runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "precision": "high", "numThread": width},))
        self.module = MNN.nn.load_module_from_file(
            str(path), [ONNX_INPUT], [ONNX_OUTPUT], runtime_manager=runtime, shape_mutable=True
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = x.detach().contiguous().numpy()
        ran = [mnn_forward(self.module, images[i : i + 1]) for i in range(len(images))]
        return torch.from_numpy(ran[0] if len(ran) == 1 else np.concatenate(ran))


def mnn_forward(module: Any, batch: np.ndarray) -> np.ndarray:
    """An MNN module's d0 of an (N, 3, S, S) float32 batch, as an (N, 1, S, S) array of its own."""
    import MNN.expr as F

    out = F.convert(module.forward(F.const(batch, list(batch.shape), F.NCHW)), F.NCHW)
    # read() is a view of the module's output buffer, which its next forward overwrites.
    return np.array(out.read(), copy=True)


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_run(session: Any, image: torch.Tensor) -> torch.Tensor:
    # numpy views of a contiguous CPU tensor and of onnxruntime's output: no copies either way.
    return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: image.detach().contiguous().numpy()})[0])


def trace(model: nn.Module, device: torch.device, size: int) -> torch.jit.ScriptModule:
    """Frozen TorchScript of `model`'s d0 head, traced on `device`; any batch size runs."""
    head = U2NetD0(model).eval().to(device)
    example = torch.rand(2, 3, size, size, device=device)
    with torch.no_grad():
        traced = torch.jit.trace(head, example)
    return torch.jit.freeze(traced.eval())


def export_torchscript(model: nn.Module, path: Path, size: int) -> None:
    """Frozen TorchScript of `model`'s d0 head, traced on the model's device; any batch size runs."""
    torch.jit.save(trace(model, next(model.parameters()).device, size), str(path))


def export_onnx(model: nn.Module, path: Path, size: int) -> None:
    """ONNX of `model`'s d0 head with a dynamic batch axis, exported on the CPU."""
    head = U2NetD0(model).eval().cpu()
    example = torch.rand(2, 3, size, size)
    with torch.no_grad():
        # dynamo=False: the TorchScript-based exporter gives a plain graph onnxruntime fuses well,
        # and needs no onnxscript.
        torch.onnx.export(
            head,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
        )


# The converter is MNN's own C++ (the wheel's `_tools`), called as its console script would be but without
# MNN.tools, whose Python wrapper imports a logging SDK that sends usage data. A child process: a converter
# that aborts on a bad graph fails the export, not the build's process; it also keeps its chatter apart.
_MNN_CONVERT = "import sys, _tools; sys.exit(0 if _tools.mnnconvert(sys.argv) else 1)"


def export_mnn(model: nn.Module, path: Path, size: int) -> None:
    """MNN's file of `model`'s d0 head: the ONNX export (export_onnx), converted by MNN's converter in fp32."""
    path.unlink(missing_ok=True)  # the converter reports success even when it wrote nothing
    with tempfile.TemporaryDirectory(prefix="u2serve-mnn-") as tmp:
        onnx = Path(tmp) / "d0.onnx"
        export_onnx(model, onnx, size)
        cmd = [sys.executable, "-c", _MNN_CONVERT, "-f", "ONNX", "--modelFile", str(onnx), "--MNNModel", str(path)]
        done = subprocess.run([*cmd, "--bizCode", "u2serve"], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not path.is_file() or path.stat().st_size == 0:
        raise EngineError(f"MNN's converter wrote no {path.name} (exit {done.returncode}): {done.stdout[-2000:]}")


def export_torchscript_bf16(model: nn.Module, path: Path, size: int) -> None:
    """Frozen mixed-precision TorchScript (bf16 with the variant's fp32 islands) of `model`'s d0 head."""
    if not isinstance(model, U2Net):
        raise EngineError(f"torchscript-bf16 needs a U2Net, not {type(model).__name__}")
    try:
        plan = precision.plan_for(model.variant.name)
    except precision.PrecisionError as exc:
        raise EngineError(str(exc)) from exc
    torch.jit.save(precision.trace(model, plan.fp32_blocks, size), str(path))


def _load_torchscript(path: Path, device: torch.device, threads: int, streams: int) -> Engine:
    # The handler sets torch's intra-op threads for its own thread (settings.threads); the streams match it.
    return TorchScriptEngine(path, device, threads, streams)


def _load_torchscript_bf16(path: Path, device: torch.device, threads: int, streams: int) -> Engine:
    return TorchScriptBF16Engine(path, device, threads, streams)


def _amx() -> str | None:
    # bf16 convolutions led every fp32 engine only where AMX runs them; with AVX512_BF16 alone (AMD's Zen 4)
    # MNN's fp32 Winograd outran them, and emulated bf16 is slower still (benchmarks/results engines-*).
    if not precision.native_bf16():
        return "this CPU has no native bf16 (AVX512_BF16 or AMX)"
    return None if cpu.amx() else "this CPU has no AMX, without which bf16 convolutions trail MNN's fp32 Winograd"


def _no_intel_avx512() -> str | None:
    # MNN's wheel has AVX2 kernels only. On an Intel CPU with AVX-512 OpenVINO's fp32 outran MNN's Winograd; on
    # AVX2-only CPUs and on AMD's AVX-512 (Zen 4, half-width units) MNN led (benchmarks/results engines-*).
    if cpu.intel_avx512():
        return "this Intel CPU has AVX-512, where OpenVINO's fp32 outruns MNN's AVX2 kernels"
    return None


@dataclass(frozen=True)
class EngineKind:
    """One engine: its file in the archive, how the build writes it, where and with what it runs."""

    name: str
    suffix: str  # the file is <model name><suffix>
    export: Callable[[nn.Module, Path, int], None]
    load: Callable[[Path, torch.device, int, int], Engine]  # (file, device, threads, streams)
    devices: frozenset[str]  # torch device types it serves
    runtime: str | None = None  # a module the worker must be able to import, beyond torch
    fallback: str | None = None  # the engine to load instead when this one cannot run; None for the last resort
    hardware: Callable[[], str | None] | None = None  # why this machine cannot run it fast, or None

    def unavailable(self, device: torch.device) -> str | None:
        """Why this engine cannot run in this worker on `device`, or None when it can."""
        if device.type not in self.devices:
            return f"it runs on {', '.join(sorted(self.devices))} only, not {device}"
        if self.hardware and (why := self.hardware()):
            return why
        if self.runtime:
            try:
                importlib.import_module(self.runtime)
            except ImportError as exc:  # absent, or present but broken (a missing shared library)
                return f"{self.runtime} cannot be imported in this Python ({exc})"
        return None


TORCHSCRIPT = "torchscript"
ONNXRUNTIME = "onnxruntime"
TORCHSCRIPT_BF16 = "torchscript-bf16"
OPENVINO = "openvino"
MNN = "mnn"

ENGINES: dict[str, EngineKind] = {
    TORCHSCRIPT: EngineKind(TORCHSCRIPT, ".pt", export_torchscript, _load_torchscript, frozenset({"cpu", "cuda"})),
    # The server installs onnxruntime's CPU wheel; a GPU worker keeps TorchScript.
    ONNXRUNTIME: EngineKind(
        ONNXRUNTIME, ".onnx", export_onnx, OnnxRuntimeEngine, frozenset({"cpu"}), runtime="onnxruntime",
        fallback=TORCHSCRIPT,
    ),
    # OpenVINO reads the ONNX file onnxruntime runs: the archive carries it once for both.
    OPENVINO: EngineKind(
        OPENVINO, ".onnx", export_onnx, OpenVinoEngine, frozenset({"cpu"}), runtime="openvino",
        fallback=ONNXRUNTIME,
    ),
    # Converted from the ONNX file at build time; the fastest fp32 engine on AVX2-only and AMD AVX-512 CPUs.
    MNN: EngineKind(
        MNN, ".mnn", export_mnn, MnnEngine, frozenset({"cpu"}), runtime="MNN", fallback=OPENVINO,
        hardware=_no_intel_avx512,
    ),
    # bf16 leads where AMX runs it; elsewhere (AVX512_BF16 alone, or emulated) a worker falls back to fp32.
    TORCHSCRIPT_BF16: EngineKind(
        TORCHSCRIPT_BF16, ".bf16.pt", export_torchscript_bf16, _load_torchscript_bf16, frozenset({"cpu"}),
        fallback=MNN, hardware=_amx,
    ),
}  # fmt: skip


def kind(name: str) -> EngineKind:
    """The named engine kind; EngineError for an unknown name."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[name]


def file_name(name: str, model_name: str) -> str:
    """The engine's file name inside an archive, e.g. "u2netp.onnx"."""
    return f"{model_name}{kind(name).suffix}"


def chain(name: str) -> list[str]:
    """The named engine and the ones it falls back to, in order; TorchScript comes last."""
    names = [kind(name).name]
    while (after := ENGINES[names[-1]].fallback) is not None:
        names.append(after)
    return names


def export(name: str, model: nn.Module, directory: Path, model_name: str, size: int) -> Path:
    """Writes the named engine's file for `model` into `directory`; returns its path."""
    path = directory / file_name(name, model_name)
    kind(name).export(model, path, size)
    return path


def select(name: str, model_dir: Path, model_name: str, device: torch.device) -> str:
    """The engine `load` runs: the named one, or the first of its fallbacks that can run here and whose
    file `model_dir` holds; the last of the chain (TorchScript) otherwise. Logs why each one before it
    cannot run. Loads nothing (it imports each candidate's runtime to see that it can)."""
    names = chain(name)
    for candidate, after in itertools.pairwise(names):
        why = ENGINES[candidate].unavailable(device)
        if why is None and not (model_dir / file_name(candidate, model_name)).is_file():
            why = f"the archive has no {file_name(candidate, model_name)}"
        if why is None:
            return candidate
        log.warning("engine %s cannot run (%s); trying %s", candidate, why, after)
    return names[-1]


def runnable(name: str, device: torch.device) -> str:
    """The engine `load` runs from an archive that carries every file of `name`'s chain, on this machine."""
    names = chain(name)
    return next((each for each in names[:-1] if ENGINES[each].unavailable(device) is None), names[-1])


def load(
    name: str, model_dir: Path, model_name: str, device: torch.device, threads: int = 0, streams: int = 1
) -> Engine:
    """Loads the named engine from an unpacked archive, or the first of its fallbacks that can run here.

    Args:
        name: A key of ENGINES.
        model_dir: The unpacked archive.
        model_name: The archive's model name; engine files are named after it.
        device: Where inputs and outputs live.
        threads: Intra-op threads for runtimes with their own pool; 0 keeps the runtime's default.
        streams: Images of a CPU batch run side by side (Streams), at most one per thread; 1: one after
            the other.

    Raises:
        EngineError: unknown engine, or none of its chain runs here and the archive has no TorchScript.
    """
    chosen = ENGINES[select(name, model_dir, model_name, device)]
    path = model_dir / file_name(chosen.name, model_name)
    if not path.is_file():
        raise EngineError(f"{path} not found; rebuild the archive with handler/build.py")
    return chosen.load(path, device, threads, streams)
