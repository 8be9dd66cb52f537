"""Export a Triton model repository for u2serve: per model, the segment model and its network.

    python -m handler.triton --out triton_repo [--serving gpu|cpu] [--models u2netp u2net] [--from-store model_store]

writes, per model,
- `<out>/<model>/`: the segment model, the same product as the TorchServe archive (the encoded image and
  a SegmentRequest in, a SegmentResponse out), run by the Python-based backend `u2serve_segment`
  (handler/triton_backends/: the TorchServe handler's pipeline) with Triton's dynamic batcher; it calls
- `<out>/<model>_network/` by BLS: the network alone. `1/model.pt` is the same frozen TorchScript as
  the TorchServe archive (copied out of `<store>/<model>.mar` with --from-store, else traced afresh like
  handler/build.py): the normalised (N, 3, 320, 320) batch in, d0 (N, 1, 320, 320) out.
  `--serving gpu`: `platform: "pytorch_libtorch"` on the GPU. `--serving cpu`: the Python-based backend
  `u2serve_torchscript`, a stand-in for libtorch (which nvidia-pytriton's tritonserver lacks) running the
  engine the TorchServe handler runs: `1/` also holds the archive's other engine files (`model.bf16.pt`,
  `model.onnx`), the config names the archive's `engine` and `threads` settings, and the stand-in loads
  them with handler.engine's fallback chain (`load_network`), as the handler does. The SDK's
  protocol="triton" sends its tensors here and does the rest itself (u2serve.core.imaging).

The backends go into Triton's backend directory (tools/triton.py). Never archived; the CPU stand-in
imports `load_network`, both backends `instance_threads` from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from handler import engine, weights
from handler.build import DEFAULTS, choose_engine
from handler.engine import TORCHSCRIPT, Engine, trace
from handler.model import VARIANTS
from handler.settings import (
    ARCHIVE_INFO,
    DEFAULT_MAX_PIXELS,
    DEFAULT_PNG_COMPRESSION,
    HandlerSettings,
    SettingsError,
    limit_malloc_arenas,
    worker_threads,
)

log = logging.getLogger(__name__)

# libtorch's positional tensor names; the SDK sends and reads these (u2net_client._v2).
INPUT_NAME = "INPUT__0"
OUTPUT_NAME = "OUTPUT__0"
MODEL_VERSION = "1"
NETWORK_SUFFIX = "_network"  # u2net_client._v2.NETWORK_SUFFIX: where protocol="triton" sends tensors
SEGMENT_BACKEND = "u2serve_segment"
CPU_NETWORK_BACKEND = "u2serve_torchscript"
# The segment model's tensors: handler/oip.py's names, as on TorchServe's Open Inference Protocol.
IMAGE_INPUT, REQUEST_INPUT, RESPONSE_OUTPUT = "image", "u2serve", "u2serve"
# Engine files in a network's version folder are named `model<suffix>` (handler.engine.file_name):
# model.pt, libtorch's own file name, is the TorchScript; the CPU stand-in also finds model.bf16.pt, model.mnn,
# model.onnx.
ENGINE_STEM = "model"


@dataclass(frozen=True)
class TritonSettings:
    """Batching and placement of one model's pair; the GPU serving defaults of handler/build.py by default."""

    max_batch_size: int = DEFAULTS["cuda"].batch_size
    max_queue_delay_us: int = DEFAULTS["cuda"].max_batch_delay_ms * 1000
    instances: int = 1
    kind: str = "KIND_GPU"
    # The CPU stand-in's engine and intra-op threads, as the handler's settings (handler/settings.py):
    # a handler.engine.ENGINES key, and 0 for each instance's share of the cores (worker_threads).
    threads: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    png_compression: int = DEFAULT_PNG_COMPRESSION
    engine: str = TORCHSCRIPT
    # The network's own batcher delay; None: max_queue_delay_us. 0 by default on every device: the segment model's
    # batcher has waited already, and TorchServe waits once per batch too.
    network_queue_delay_us: int | None = 0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or min(self.max_queue_delay_us, self.network_delay_us) < 0 or self.instances < 1:
            raise ValueError(f"{self}: max_batch_size and instances must be >= 1, the queue delays >= 0")
        if self.threads < 0:
            raise ValueError(f"threads={self.threads}; must be >= 0 (0: each instance's share of the cores)")
        if self.kind not in ("KIND_GPU", "KIND_CPU"):
            raise ValueError(f"kind={self.kind!r}; accepted: KIND_GPU, KIND_CPU")
        engine.kind(self.engine)

    @classmethod
    def for_serving(cls, serving: str) -> TritonSettings:
        """ "gpu": libtorch on the GPU; "cpu": the stand-in with the CPU archives' batching, engine and threads."""
        if serving == "gpu":
            return cls()
        if serving != "cpu":
            raise ValueError(f"serving={serving!r}; accepted: gpu, cpu")
        d = DEFAULTS["cpu"]
        # The network waits no more (the default): TorchServe waits once per batch, here the segment model's
        # batcher does (a second wait, as long as the first, showed on every v2 batch); requests queued while
        # it runs still form a batch.
        return cls(d.batch_size, d.max_batch_delay_ms * 1000, 1, "KIND_CPU", d.threads, engine=d.engine)

    @property
    def network_delay_us(self) -> int:
        """The network model's dynamic-batcher delay."""
        return self.max_queue_delay_us if self.network_queue_delay_us is None else self.network_queue_delay_us


def _parameters(params: Mapping[str, str]) -> str:
    """A ModelConfig's `parameters` entries, string values, in protobuf text format."""
    return "".join(
        f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: {json.dumps(v)} }}\n}}\n' for k, v in params.items()
    )


def network_log_line(model: str, loaded: str, configured: str, threads: int) -> str:
    """What the CPU stand-in logs once it runs: Triton's log says which engine serves `model` (see loaded_engine)."""
    return f"{model}: {loaded} engine (configured: {configured}), {threads} threads"


def loaded_engine(log_text: str, model: str) -> str | None:
    """The engine the CPU stand-in of network model `model` last logged it runs (network_log_line), or None."""
    found = re.findall(rf"{re.escape(model)}: (\S+) engine \(configured: ", log_text)
    return found[-1] if found else None


def instance_threads(config: Mapping[str, Any]) -> int:
    """Threads for one instance of a u2serve Python-based backend, from its model config (Triton's JSON).

    The `threads` parameter is the archive's handler setting, read as the handler reads it (worker_threads;
    0: the instance's share of the cores), the instances of the config's instance groups standing for
    TorchServe's workers. 1 when the config names no threads (a GPU repository's segment model).
    """
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    if "threads" not in params:
        return 1
    try:
        configured = HandlerSettings.from_yaml({"threads": params["threads"]}).threads
    except SettingsError as exc:
        raise ValueError(f"{config.get('name')}: {exc}") from exc
    instances = sum(max(int(group.get("count", 1)), 1) for group in config.get("instance_group", [])) or 1
    return worker_threads(configured, instances)


def load_network(config: Mapping[str, Any], folder: Path) -> tuple[Engine, int]:
    """The CPU stand-in's engine and its threads, chosen as the TorchServe handler chooses them.

    `config` is the network's model config (Triton's JSON): its `engine` and `threads` parameters are the
    archive's handler settings; `folder` its version folder with the engine files. Sets torch's intra-op
    threads (instance_threads), then handler.engine.load: the named engine or the first of its fallbacks that
    can run here (bf16 needs a CPU with native bf16, onnxruntime its wheel, each its file).
    """
    name = config.get("parameters", {}).get("engine", {}).get("string_value", TORCHSCRIPT)
    try:
        chosen = HandlerSettings.from_yaml({"engine": name}).engine
    except SettingsError as exc:
        raise engine.EngineError(f"{folder}: {exc}") from exc
    threads = instance_threads(config)
    limit_malloc_arenas()  # as the TorchServe worker does, before the engine's threads allocate
    torch.set_num_threads(threads)
    return engine.load(chosen, folder, ENGINE_STEM, torch.device("cpu"), threads), threads


def config_pbtxt(name: str, settings: TritonSettings, weights_origin: str) -> str:
    """The network model's config.pbtxt (Triton's ModelConfig in protobuf text format).

    KIND_GPU: Triton's libtorch backend; KIND_CPU: the u2serve_torchscript stand-in, with the same tensors,
    running the engine its `engine` parameter names (or a fallback) with `threads` (0: its share of the cores).
    """
    size = VARIANTS[name].input_size
    gpu = settings.kind == "KIND_GPU"
    runtime = 'platform: "pytorch_libtorch"' if gpu else f'backend: "{CPU_NETWORK_BACKEND}"'
    where = "GPU: Triton's libtorch backend" if gpu else f"CPU: {CPU_NETWORK_BACKEND}, a Python stand-in for libtorch"
    params = {"INFERENCE_MODE": "true"} if gpu else {"engine": settings.engine, "threads": str(settings.threads)}
    delay_note = (
        "# The delay TorchServe's archives use for this device (handler/build.py DEFAULTS, "
        "docs/configuration.md#batching-defaults);\n"
        "# a call from the segment model is a whole batch already."
        if settings.network_queue_delay_us is None
        else "# The segment model's batcher waited already (TorchServe waits once per batch); a call from it is a\n"
        "# whole batch, and requests queued while the network runs still form one."
    )
    return f"""# Written by handler/triton.py. U²-Net's network only ({where}); the segment model
# {name!r} or u2net_client (protocol="triton") decode, preprocess and postprocess. Weights: {weights_origin}.
name: "{name}{NETWORK_SUFFIX}"
{runtime}
max_batch_size: {settings.max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 3, {size}, {size} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ 1, {size}, {size} ]
  }}
]
{delay_note}
dynamic_batching {{
  max_queue_delay_microseconds: {settings.network_delay_us}
}}
instance_group [
  {{
    count: {settings.instances}
    kind: {settings.kind}
  }}
]
{_parameters(params)}"""


def segment_config_pbtxt(name: str, settings: TritonSettings, weights_origin: str, runs: str | None = None) -> str:
    """The segment model's config.pbtxt: bytes in, a SegmentResponse out, batched by Triton.

    `runs`: on the CPU, the engine the stand-in will load on this machine (stand_in_engine); None: the
    configured one. The configured one is named beside it when they differ.
    """
    gpu = settings.kind == "KIND_GPU"
    runs = runs or settings.engine
    configured = "" if runs == settings.engine else f"; configured: {settings.engine}"
    params = {
        "variant": name,
        "network": f"{name}{NETWORK_SUFFIX}",
        "weights": weights_origin,
        "device": "cuda" if gpu else "cpu",
        # On the CPU: the engine the stand-in loads on this machine (it logs the one it loaded: loaded_engine).
        "engine": "libtorch" if gpu else f"{runs} ({CPU_NETWORK_BACKEND}, CPU stand-in for libtorch{configured})",
        "max_pixels": str(settings.max_pixels),
        "png_compression": str(settings.png_compression),
    }
    if not gpu:  # the pixel work around the network on as many threads as the handler's (instance_threads)
        params["threads"] = str(settings.threads)
    parameters = _parameters(params)
    return f"""# Written by handler/triton.py. u2serve's segment model: the encoded image and optionally a serialised
# u2serve.v1.SegmentRequest in, a serialised SegmentResponse out (as TorchServe's v2 endpoint). The TorchServe
# handler's pipeline (handler/triton_backends/{SEGMENT_BACKEND}); the network runs in {name}{NETWORK_SUFFIX} (BLS).
name: "{name}"
backend: "{SEGMENT_BACKEND}"
max_batch_size: {settings.max_batch_size}
input [
  {{
    name: "{IMAGE_INPUT}"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }},
  {{
    name: "{REQUEST_INPUT}"
    data_type: TYPE_STRING
    dims: [ 1 ]
    optional: true
  }}
]
output [
  {{
    name: "{RESPONSE_OUTPUT}"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {settings.max_queue_delay_us}
}}
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
{parameters}"""


def export(
    name: str, out: Path, device: torch.device, settings: TritonSettings, weight_file: Path | str | None
) -> Path:
    """Trace `name` afresh and write its segment model and `<out>/<name>_network/`; returns the network's folder."""
    loaded = weights.load(name, weight_file)
    if loaded.is_random:
        log.warning("%s exported with RANDOM weights (%s)", name, loaded.origin)
    size = VARIANTS[name].input_size
    cpu = settings.kind == "KIND_CPU"
    if cpu:  # the archive's choice for these weights (handler/build.py)
        settings = dataclasses.replace(settings, engine=choose_engine(settings.engine, loaded))
    folder = _write_network(out, name, settings, loaded.origin)
    torch.jit.save(trace(loaded.model, device, size), str(folder / MODEL_VERSION / "model.pt"))
    for each in engine.chain(settings.engine)[:-1] if cpu else []:  # the TorchScript is model.pt
        engine.export(each, loaded.model.cpu(), folder / MODEL_VERSION, ENGINE_STEM, size)
    _write_segment(out, name, settings, loaded.origin, folder)
    log.info("exported %s to %s (weights: %s, traced on %s)", name, out, loaded.origin, device)
    return folder


def export_from_archive(name: str, out: Path, mar: Path, settings: TritonSettings) -> Path:
    """Write `name`'s pair with the very TorchScript of a TorchServe archive; returns the network's folder.

    On the CPU the pair also takes the archive's `engine` and `threads` settings and its engine files,
    so the stand-in runs what the archive's worker runs.
    """
    cpu = settings.kind == "KIND_CPU"
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
        info = json.loads(archive.read(ARCHIVE_INFO))
        if info.get("variant") != name:
            raise SystemExit(f"{mar} holds {info.get('variant')!r}, not {name!r}")
        files = {"model.pt": archive.read(manifest["serializedFile"])}
        if cpu:
            handler = HandlerSettings.from_yaml(yaml.safe_load(archive.read(manifest["configFile"])).get("handler"))
            settings = dataclasses.replace(settings, engine=handler.engine, threads=handler.threads)
            stem, present = Path(manifest["serializedFile"]).stem, set(archive.namelist())
            for each in engine.chain(handler.engine)[:-1]:  # a file the archive lacks: the stand-in falls back
                if (source := engine.file_name(each, stem)) in present:
                    files[engine.file_name(each, ENGINE_STEM)] = archive.read(source)
    folder = _write_network(out, name, settings, str(info["weights"]))
    for file, data in files.items():
        (folder / MODEL_VERSION / file).write_bytes(data)
    _write_segment(out, name, settings, str(info["weights"]), folder)
    log.info("exported %s to %s from %s (weights: %s, engine: %s)", name, out, mar, info["weights"], settings.engine)
    return folder


def _write_network(out: Path, name: str, settings: TritonSettings, weights_origin: str) -> Path:
    """The network model's folders and config; its engine files are the caller's to write."""
    network = out / f"{name}{NETWORK_SUFFIX}"
    (network / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
    (network / "config.pbtxt").write_text(config_pbtxt(name, settings, weights_origin))
    return network


def _write_segment(out: Path, name: str, settings: TritonSettings, weights_origin: str, network: Path) -> None:
    """The segment model's folders and config, once the network's engine files are in place."""
    segment = out / name
    (segment / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
    runs = stand_in_engine(settings, network / MODEL_VERSION) if settings.kind == "KIND_CPU" else None
    (segment / "config.pbtxt").write_text(segment_config_pbtxt(name, settings, weights_origin, runs))


def stand_in_engine(settings: TritonSettings, folder: Path) -> str:
    """The engine the CPU stand-in will load from version folder `folder` on this machine: the configured
    one or a fallback, chosen by handler.engine.select as load_network's handler.engine.load chooses."""
    return engine.select(settings.engine, folder, ENGINE_STEM, torch.device("cpu"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export U²-Net as a Triton model repository.")
    parser.add_argument("--out", type=Path, default=Path("triton_repo"))
    parser.add_argument("--models", nargs="+", choices=sorted(VARIANTS), default=["u2netp", "u2net"])
    parser.add_argument("--from-store", type=Path, help="copy the TorchScript out of <store>/<model>.mar")
    parser.add_argument(
        "--serving", choices=["gpu", "cpu"], default="gpu", help="network in libtorch on the GPU, or the CPU stand-in"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="trace on")
    parser.add_argument("--max-batch-size", type=int, help="default: TorchServe's for the serving device")
    parser.add_argument("--queue-delay-us", type=int, help="default: TorchServe's for the serving device")
    parser.add_argument("--instances", type=int, default=1, help="network instances (per GPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    base = TritonSettings.for_serving(args.serving)
    try:
        settings = dataclasses.replace(
            base,
            max_batch_size=args.max_batch_size or base.max_batch_size,
            max_queue_delay_us=base.max_queue_delay_us if args.queue_delay_us is None else args.queue_delay_us,
            instances=args.instances,
        )
    except ValueError as exc:
        parser.error(str(exc))
    for name in args.models:
        if args.from_store:
            export_from_archive(name, args.out, args.from_store / f"{name}.mar", settings)
            continue
        export(name, args.out, torch.device(args.device), settings, os.environ.get(f"U2SERVE_{name.upper()}_WEIGHTS"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
