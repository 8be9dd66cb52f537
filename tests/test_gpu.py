"""The CUDA path, which `make gpu-check` runs on a GPU: the served masks on the serving device within the
accuracy gate (handler/precision.py), and the network in fp16 and bf16 on that device against the same gate.

Without CUDA each test runs its CPU path (device cpu, a few images, no fp16; bf16 only where the CPU has it
natively: emulated bf16 convolutions take minutes per image) and warns that it did: nothing here is skipped
in silence, and the CUDA figures come only from a run on a GPU.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import engines
from handler import precision, weights
from handler.model import U2NetD0
from u2net_client import U2NetClient

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.gpu
# On a GPU the gate's own 18 images; the CPU path's dry run takes the 4 smallest.
CPU_IMAGES = 4


@pytest.fixture(scope="module")
def device() -> torch.device:
    if not CUDA:
        warnings.warn(
            "NO CUDA: the gpu tests ran their CPU path only (device cpu, few images); "
            "`make gpu-check` on a CUDA machine runs the CUDA one",
            stacklevel=1,
        )
    return torch.device("cuda" if CUDA else "cpu")


def _references(reference_dir: Path) -> list[Path]:
    images = sorted((reference_dir / "images").iterdir())
    return images if CUDA else sorted(images, key=lambda p: p.stat().st_size)[:CPU_IMAGES]


def _mae(mask: np.ndarray, published: Path) -> float:
    from PIL import Image

    expected = np.asarray(Image.open(published).convert("L"), dtype=np.float64)
    return float(np.abs(mask.astype(np.float64) - expected).mean() / 255.0)


MODELS = ["u2netp", "u2net"]


@pytest.mark.parametrize("model", MODELS)
def test_the_served_masks_pass_the_gate_on_the_serving_device(
    server, reference_dir: Path, device: torch.device, model: str, record_property
) -> None:
    paths = _references(reference_dir)
    with U2NetClient(server.grpc_target, server.grpc_management_target, key_file=server.key_file, timeout=300) as c:
        info = c.describe(model)
        masks = list(c.map(lambda p: c.mask(p.read_bytes(), model).array, paths, concurrency=4))
    assert info.device is not None and info.device.split(":")[0] == device.type, info
    assert not info.weights_random, info.weights
    published = [reference_dir / f"{model}_masks" / f"{p.stem}.png" for p in paths]
    errors = [_mae(mask, expected) for mask, expected in zip(masks, published, strict=True)]
    mean, worst = float(np.mean(errors)), max(errors)
    record_property(
        f"{model} served on {info.device} ({info.engine}): mask MAE mean / max", f"{mean:.5f} / {worst:.5f}"
    )
    assert precision.passes_gate(mean, worst), (info.engine, mean, worst)


@pytest.mark.parametrize("model", MODELS)
def test_half_precisions_of_the_network_against_the_gate(
    reference_dir: Path, device: torch.device, model: str, record_property
) -> None:
    """fp32 on the device passes the gate (what a CUDA archive serves); fp16 and bf16 are measured against it.

    A half precision that passes may become a CUDA engine; one that fails may not. The test fails only if
    fp32 fails or a precision yields no finite mask, and records each precision's figures and verdict.
    """
    refs = engines.reference_inputs(reference_dir, model)
    assert refs is not None
    if not CUDA:
        refs = refs[:CPU_IMAGES]
    head = U2NetD0(weights.published(model).model).eval().to(device)
    if CUDA:
        dtypes = [torch.float32, torch.float16, torch.bfloat16]
    elif precision.native_bf16():
        dtypes = [torch.float32, torch.bfloat16]
    else:
        # Without AVX512_BF16/AMX PyTorch emulates bf16 convolutions: ~2 minutes per image on a Zen 3.
        dtypes = [torch.float32]
        record_property("cpu bf16", "not run: this CPU has no native bf16 (emulated it takes minutes per image)")
    verdicts = {}
    for dtype in dtypes:
        net = copy.deepcopy(head).to(dtype)  # each from the fp32 weights

        def run(x: torch.Tensor, net: torch.nn.Module = net, dtype: torch.dtype = dtype) -> torch.Tensor:
            with torch.inference_mode():
                return net(x.to(device, dtype)).float()

        mean, worst = engines.masks_mae(run, refs)
        assert np.isfinite([mean, worst]).all(), (dtype, mean, worst)
        verdicts[dtype] = precision.passes_gate(mean, worst)
        record_property(
            f"{model} {device.type} {str(dtype).removeprefix('torch.')} everywhere: MAE mean / max, {len(refs)} images",
            f"{mean:.5f} / {worst:.5f} ({'passes' if verdicts[dtype] else 'FAILS'} the gate)",
        )
    assert verdicts[torch.float32], "fp32 on the serving device must pass the accuracy gate"
