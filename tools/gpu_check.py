"""`make gpu-check`: every GPU check in one run of at most 8 minutes, its figures recorded.

On a CUDA machine: (1) builds CUDA archives of both models (traced on the GPU, the GPU batching defaults);
(2) runs the tests marked `gpu` (tests/test_gpu.py: the handler's CUDA path end to end through TorchServe,
fp32/fp16/bf16 of the network against the accuracy gate) against a TorchServe serving them; (3) runs the
bench's GPU section (benchmarks/bench.py on CUDA: served concurrency and model-only batches up to 64,
served against model-only) and records it in benchmarks/results/ (kind "cuda"), rendering BENCHMARKS.md.

Without CUDA it is a dry run of the same steps' CPU parts, on the archives already built, with tiny sizes,
and it says loudly what it could not do. tests/test_gpu_check.py runs that dry run in `make test`.

    python tools/gpu_check.py --out DIR        # CUDA: all of it; copies the record, log and plot to DIR
    python tools/gpu_check.py                  # no CUDA: the dry run, against a TorchServe it starts

On the device machine there is no venv: the packages its image lacks travel as wheels (`make gpu-wheels`, two
folders each under what one call may carry), and the generated stubs beside them; the reference images are in the
repository (data/u2net-reference/), which travels as it is. The device reaches no registry, so the authors' weights
travel too, and U2SERVE_CACHE=$PWD/.gpu-carry/cache points the build at them (handler/sources.py checks their md5):
`weights/u2netp.onnx` fits in a call; `u2net.onnx` is larger than what one call may carry, so it travels as `split
-b 60M` parts, one per call while the machine stays warm, joined there with `cat`. A first call carries .whl/java
and installs it; the last carries .whl/py, client/u2serve/core/_generated and .gpu-carry and runs the check:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/java/*.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/py/*.whl \\
        && export PYTHONPATH=/tmp/site:$PWD:$PWD/client PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 \\
        && python3 tools/gpu_check.py --out $OUT
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository's packages (benchmarks, handler, tools)
    sys.path.insert(0, str(ROOT))

from benchmarks import bench  # noqa: E402
from tools import reference_dir  # noqa: E402

log = logging.getLogger("gpu-check")
BUDGET_S = 8 * 60
MODELS = ["u2netp", "u2net"]
# The bench's GPU section within the budget: 2 rounds of everything bench.py measures on CUDA by default, for
# U2NETP (the budget was sized before the bench measured U2NET beside it by default).
GPU_BENCH_ARGS = ["--rounds", "2", "--models", "u2netp"]
# The dry run's bench: the same code, one round, two images, served concurrency 1 and 2, rembg one caller, U2NETP;
# its GPU model-only code runs on its own (dry_model_only), not the CPU engines the bench would time here;
# it leaves out the other paths (options, web gateway, Triton), which have tests of their own in make test.
DRY_BENCH_ARGS = [
    "--smoke", "--models", "u2netp", "--no-model-only", "--rembg-concurrency", "1", "--no-options", "--no-web",
    "--no-triton",
]  # fmt: skip


def loud(message: str) -> None:
    """A line nobody reads past: what this run did not check."""
    bar = "!" * 100
    log.warning("\n%s\n!! %s\n%s", bar, message, bar)


def build_archives(store: Path, cuda: bool) -> None:
    """CUDA archives of both models into `store`; a dry run serves the archives `store` already has."""
    if not cuda:
        missing = [m for m in MODELS if not (store / f"{m}.mar").is_file()]
        if missing:
            raise SystemExit(f"dry run: no {missing} archives in {store}; run `make archives` first")
        loud(f"DRY RUN, NO CUDA: CUDA archives NOT built; the CPU archives in {store} serve instead")
        return
    cmd = [sys.executable, "-m", "handler.build", *MODELS, "--out", str(store), "--device", "cuda"]
    log.info("building CUDA archives: %s", " ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True)


def run_gpu_tests(store: Path, out: Path, cuda: bool, timeout_s: float) -> int:
    """pytest -m gpu with its own TorchServe on `store`; its log lands in `out`. Returns pytest's exit code."""
    if not cuda:
        loud("DRY RUN, NO CUDA: the gpu tests run their CPU path (device cpu, few images, no fp16)")
    log_file = out / "gpu-tests.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-rA", "-p", "no:cacheprovider"]
    log.info("running %s", " ".join(cmd))
    env = {**os.environ, "U2SERVE_MODEL_STORE": str(store), "U2SERVE_REFERENCE_DIR": str(reference_dir())}
    with log_file.open("w") as sink:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
        )
    print(log_file.read_text()[-4000:])
    return proc.returncode


def run_bench(store: Path, out: Path, cuda: bool, server_args: Sequence[str]) -> Path:
    """The bench's GPU section (its dry run: --smoke on the CPU); returns the folder its record went to."""
    results = (ROOT / "benchmarks/results") if cuda else out / "benchmarks/results"
    write = (ROOT / "BENCHMARKS.md") if cuda else out / "BENCHMARKS.md"
    if not cuda:
        loud("DRY RUN, NO CUDA: the bench ran on the CPU with --smoke sizes; NO GPU FIGURES were measured")
    argv = [*(GPU_BENCH_ARGS if cuda else DRY_BENCH_ARGS), "--model-store", str(store), "--results", str(results)]
    argv += ["--images", str(reference_dir() / "images")]
    bench.main([*argv, "--write", str(write), *server_args])
    return results


def dry_model_only() -> None:
    """The bench's GPU model-only code (eager and TorchScript PyTorch) on the CPU, batch 1: it runs, and says so."""
    times = bench.torch_model_only("u2netp", bench.CUDA_ENGINES, [1], torch.device("cpu"))
    shown = ", ".join(f"{engine} {ms:.0f} ms" for (engine, _), ms in times.items())
    loud(f"DRY RUN, NO CUDA: the GPU model-only engines ran on the CPU at batch 1 only ({shown}); not recorded")


def collect(out: Path, results: Path, since: float) -> list[Path]:
    """The records, markdown and plots this run wrote, copied flat into `out` (the device tool's $OUT)."""
    copied = []
    fresh = [p for p in results.glob("*.json") if p.stat().st_mtime >= since]
    plots = [p for p in (results.parents[1] / "docs").glob("bench-sweep-*.png") if p.stat().st_mtime >= since]
    for path in [*fresh, *plots, results.parents[1] / "BENCHMARKS.md"]:
        if path.is_file() and path.parent != out:
            copied.append(Path(shutil.copy2(path, out / path.name)))
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="copy the records, plots and test log here; default a temp folder")
    parser.add_argument("--model-store", type=Path, help="archives; default model_store/ (CUDA: rebuilt there)")
    parser.add_argument("--dry-run", action="store_true", help="the CPU parts only, even where CUDA is")
    parser.add_argument(
        "--skip-tests", action="store_true", help="dry run inside `make test`: the gpu tests run in that session"
    )
    parser.add_argument("--bench-server", nargs=argparse.REMAINDER, default=[], help="bench.py's --target ... args")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started, deadline = time.time(), time.monotonic() + BUDGET_S
    cuda = torch.cuda.is_available() and not args.dry_run
    out = args.out or Path(tempfile.mkdtemp(prefix="u2serve-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    store = args.model_store or ROOT / "model_store"
    log.info("gpu-check: %s", f"CUDA on {torch.cuda.get_device_name(0)}" if cuda else "dry run, NO CUDA used")
    build_archives(store, cuda)
    failed = []
    if args.skip_tests:
        loud("gpu tests NOT run by this call (--skip-tests): the pytest session that called it runs tests/test_gpu.py")
    elif run_gpu_tests(store, out, cuda, max(60.0, deadline - time.monotonic() - 240)) != 0:
        failed.append("the gpu tests")
    results = run_bench(store, out, cuda, args.bench_server)
    if not cuda:
        dry_model_only()
    copied = collect(out, results, started)
    log.info("gpu-check wrote %s", ", ".join(str(p) for p in copied) or "nothing")
    minutes = (time.monotonic() - (deadline - BUDGET_S)) / 60
    if time.monotonic() > deadline:
        loud(f"gpu-check took {minutes:.1f} min, over its {BUDGET_S // 60}-minute budget: trim GPU_BENCH_ARGS")
    if not cuda:
        loud("DRY RUN COMPLETE: CPU parts only. Nothing here measured a GPU; run `make gpu-check` on a CUDA machine")
    if failed:
        log.error("gpu-check FAILED: %s (log in %s)", ", ".join(failed), out)
        return 1
    log.info("gpu-check passed in %.1f min; output in %s", minutes, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
