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
  same model.pt. The SDK's protocol="triton" sends its tensors here and does the rest itself
  (u2net_client.imaging).

The backends go into Triton's backend directory (tools/triton.py). Build-time only: never archived.
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
from handler.settings import ARCHIVE_INFO, DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION

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


@dataclass(frozen=True)
class TritonSettings:
    """Batching and placement of one model's pair; the GPU serving defaults of handler/build.py by default."""

    max_batch_size: int = DEFAULTS["cuda"].batch_size
    max_queue_delay_us: int = DEFAULTS["cuda"].max_batch_delay_ms * 1000
    instances: int = 1
    kind: str = "KIND_GPU"
    threads: int = 1  # intra-op threads of the CPU stand-in network
    max_pixels: int = DEFAULT_MAX_PIXELS
    png_compression: int = DEFAULT_PNG_COMPRESSION

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_delay_us < 0 or self.instances < 1 or self.threads < 1:
            raise ValueError(f"{self}: max_batch_size, instances and threads must be >= 1, the queue delay >= 0")
        if self.kind not in ("KIND_GPU", "KIND_CPU"):
            raise ValueError(f"kind={self.kind!r}; accepted: KIND_GPU, KIND_CPU")

    @classmethod
    def for_serving(cls, serving: str) -> TritonSettings:
        """ "gpu": libtorch on the GPU; "cpu": the stand-in on every core, TorchServe's CPU batching defaults."""
        if serving == "gpu":
            return cls()
        if serving != "cpu":
            raise ValueError(f"serving={serving!r}; accepted: gpu, cpu")
        d = DEFAULTS["cpu"]
        return cls(d.batch_size, d.max_batch_delay_ms * 1000, 1, "KIND_CPU", threads=max(1, os.cpu_count() or 1))


def config_pbtxt(name: str, settings: TritonSettings, weights_origin: str) -> str:
    """The network model's config.pbtxt (Triton's ModelConfig in protobuf text format).

    KIND_GPU: Triton's libtorch backend; KIND_CPU: the u2serve_torchscript stand-in, with the same tensors.
    """
    size = VARIANTS[name].input_size
    gpu = settings.kind == "KIND_GPU"
    runtime = 'platform: "pytorch_libtorch"' if gpu else f'backend: "{CPU_NETWORK_BACKEND}"'
    where = "GPU: Triton's libtorch backend" if gpu else f"CPU: {CPU_NETWORK_BACKEND}, a Python stand-in for libtorch"
    parameter = ("INFERENCE_MODE", "true") if gpu else ("threads", str(settings.threads))
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
# The delay TorchServe's archives use for this device (handler/build.py DEFAULTS, README "Batching defaults");
# a call from the segment model is a whole batch already.
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
  key: "{parameter[0]}"
  value: {{ string_value: "{parameter[1]}" }}
}}
"""


def segment_config_pbtxt(name: str, settings: TritonSettings, weights_origin: str) -> str:
    """The segment model's config.pbtxt: bytes in, a SegmentResponse out, batched by Triton."""
    gpu = settings.kind == "KIND_GPU"
    params = {
        "variant": name,
        "network": f"{name}{NETWORK_SUFFIX}",
        "weights": weights_origin,
        "device": "cuda" if gpu else "cpu",
        "engine": "libtorch" if gpu else f"{CPU_NETWORK_BACKEND} (CPU stand-in for libtorch)",
        "max_pixels": str(settings.max_pixels),
        "png_compression": str(settings.png_compression),
    }
    parameters = "".join(
        f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: {json.dumps(v)} }}\n}}\n' for k, v in params.items()
    )
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


def export(name: str, out: Path, device: torch.device, settings: TritonSettings, weight_file: Path | None) -> Path:
    """Trace `name` afresh and write its segment model and `<out>/<name>_network/`; returns the network's folder."""
    loaded = weights.load(name, weight_file)
    if loaded.is_random:
        log.warning("%s exported with RANDOM weights (%s)", name, loaded.origin)
    folder = _write_pair(out, name, settings, loaded.origin)
    torch.jit.save(trace(loaded.model, device, VARIANTS[name].input_size), str(folder / MODEL_VERSION / "model.pt"))
    log.info("exported %s to %s (weights: %s, traced on %s)", name, out, loaded.origin, device)
    return folder


def export_from_archive(name: str, out: Path, mar: Path, settings: TritonSettings) -> Path:
    """Write `name`'s pair with the very TorchScript of a TorchServe archive; returns the network's folder."""
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        info = json.loads(archive.read(ARCHIVE_INFO))
        if info.get("variant") != name:
            raise SystemExit(f"{mar} holds {info.get('variant')!r}, not {name!r}")
        scripted = archive.read(manifest["model"]["serializedFile"])
    folder = _write_pair(out, name, settings, str(info["weights"]))
    (folder / MODEL_VERSION / "model.pt").write_bytes(scripted)
    log.info("exported %s to %s from %s (weights: %s)", name, out, mar, info["weights"])
    return folder


def _write_pair(out: Path, name: str, settings: TritonSettings, weights_origin: str) -> Path:
    segment, network = out / name, out / f"{name}{NETWORK_SUFFIX}"
    for folder in (segment, network):
        (folder / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
    (segment / "config.pbtxt").write_text(segment_config_pbtxt(name, settings, weights_origin))
    (network / "config.pbtxt").write_text(config_pbtxt(name, settings, weights_origin))
    return network


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
        settings = TritonSettings(
            args.max_batch_size or base.max_batch_size,
            base.max_queue_delay_us if args.queue_delay_us is None else args.queue_delay_us,
            args.instances,
            base.kind,
            base.threads,
        )
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
