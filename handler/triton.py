"""Export a Triton model repository: the traced U²-Net network alone, for the SDK's protocol="triton".

    python -m handler.triton --out triton_repo [--models u2netp u2net] [--from-store model_store]

writes, per model, `<out>/<model>/config.pbtxt` (platform pytorch_libtorch, dynamic batching,
instances on the GPU) and `<out>/<model>/1/model.pt`: the same frozen TorchScript as the TorchServe
archive (copied out of `<store>/<model>.mar` with --from-store, else traced afresh like handler/build.py),
taking the normalised (N, 3, 320, 320) batch and returning d0 (N, 1, 320, 320). Decoding,
pre- and postprocessing run in the client (u2net_client.imaging). Build-time only: never archived.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from handler import weights
from handler.build import DEFAULTS
from handler.engine import trace
from handler.model import VARIANTS
from handler.settings import ARCHIVE_INFO

log = logging.getLogger(__name__)

# libtorch's positional tensor names; the SDK sends and reads these (u2net_client._v2).
INPUT_NAME = "INPUT__0"
OUTPUT_NAME = "OUTPUT__0"
MODEL_VERSION = "1"


@dataclass(frozen=True)
class TritonSettings:
    """Batching and placement of one Triton model; the GPU serving defaults of handler/build.py by default."""

    max_batch_size: int = DEFAULTS["cuda"].batch_size
    max_queue_delay_us: int = DEFAULTS["cuda"].max_batch_delay_ms * 1000
    instances: int = 1
    kind: str = "KIND_GPU"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_delay_us < 0 or self.instances < 1:
            raise ValueError(f"{self}: max_batch_size and instances must be >= 1, the queue delay >= 0")
        if self.kind not in ("KIND_GPU", "KIND_CPU"):
            raise ValueError(f"kind={self.kind!r}; accepted: KIND_GPU, KIND_CPU")


def config_pbtxt(name: str, settings: TritonSettings, weights_origin: str) -> str:
    """The model's config.pbtxt (Triton's ModelConfig in protobuf text format)."""
    size = VARIANTS[name].input_size
    return f"""# Written by handler/triton.py. U²-Net's network only; u2net_client (protocol="triton") decodes,
# preprocesses and postprocesses. Weights: {weights_origin}.
name: "{name}"
platform: "pytorch_libtorch"
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
# The delay TorchServe's GPU archives use (handler/build.py DEFAULTS, README "Batching defaults").
dynamic_batching {{
  max_queue_delay_microseconds: {settings.max_queue_delay_us}
}}
instance_group [
  {{
    count: {settings.instances}
    kind: {settings.kind}
  }}
]
parameters: {{
  key: "INFERENCE_MODE"
  value: {{ string_value: "true" }}
}}
"""


def export(name: str, out: Path, device: torch.device, settings: TritonSettings, weight_file: Path | None) -> Path:
    """Trace `name` afresh and write `<out>/<name>/` (config.pbtxt and 1/model.pt); returns that folder."""
    loaded = weights.load(name, weight_file)
    if loaded.is_random:
        log.warning("%s exported with RANDOM weights (%s)", name, loaded.origin)
    folder = _model_folder(out, name)
    torch.jit.save(trace(loaded.model, device, VARIANTS[name].input_size), str(folder / MODEL_VERSION / "model.pt"))
    (folder / "config.pbtxt").write_text(config_pbtxt(name, settings, loaded.origin))
    log.info("exported %s to %s (weights: %s, traced on %s)", name, folder, loaded.origin, device)
    return folder


def export_from_archive(name: str, out: Path, mar: Path, settings: TritonSettings) -> Path:
    """Write `<out>/<name>/` with the very TorchScript of a TorchServe archive; returns that folder."""
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        info = json.loads(archive.read(ARCHIVE_INFO))
        if info.get("variant") != name:
            raise SystemExit(f"{mar} holds {info.get('variant')!r}, not {name!r}")
        scripted = archive.read(manifest["model"]["serializedFile"])
    folder = _model_folder(out, name)
    (folder / MODEL_VERSION / "model.pt").write_bytes(scripted)
    (folder / "config.pbtxt").write_text(config_pbtxt(name, settings, str(info["weights"])))
    log.info("exported %s to %s from %s (weights: %s)", name, folder, mar, info["weights"])
    return folder


def _model_folder(out: Path, name: str) -> Path:
    folder = out / name
    (folder / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export U²-Net as a Triton model repository.")
    parser.add_argument("--out", type=Path, default=Path("triton_repo"))
    parser.add_argument("--models", nargs="+", choices=sorted(VARIANTS), default=["u2netp", "u2net"])
    parser.add_argument("--from-store", type=Path, help="copy the TorchScript out of <store>/<model>.mar")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="trace on")
    parser.add_argument("--max-batch-size", type=int, default=TritonSettings.max_batch_size)
    parser.add_argument("--queue-delay-us", type=int, default=TritonSettings.max_queue_delay_us)
    parser.add_argument("--instances", type=int, default=1, help="model instances per GPU")
    parser.add_argument("--kind", default="KIND_GPU", choices=["KIND_GPU", "KIND_CPU"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = TritonSettings(args.max_batch_size, args.queue_delay_us, args.instances, args.kind)
    except ValueError as exc:
        parser.error(str(exc))
    for name in args.models:
        if args.from_store:
            export_from_archive(name, args.out, args.from_store / f"{name}.mar", settings)
            continue
        env = os.environ.get(f"U2SERVE_{name.upper()}_WEIGHTS") or None
        export(name, args.out, torch.device(args.device), settings, Path(env) if env else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
