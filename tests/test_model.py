"""The architecture: sizes, the authors' parameter names, BatchNorm fusion, per variant."""

from __future__ import annotations

import pytest
import torch

from handler.model import VARIANTS, U2NetD0, build, conv_execution_order, fuse_batchnorm
from handler.weights import random_weights

# Runs the networks (or builds a package): the "server" lane, not the pure one (tests/conftest.py).
pytestmark = pytest.mark.server

# Parameter counts of the authors' models (u2net.pth is 176.3 MB of float32, u2netp.pth 4.7 MB).
PARAMS = {"u2net": 44_009_869, "u2netp": 1_131_181}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parameter_count_matches_the_authors(name):
    assert sum(p.numel() for p in build(name).parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_state_dict_uses_the_authors_names(name):
    keys = set(build(name).state_dict())
    for key in (
        "stage1.rebnconvin.conv_s1.weight",
        "stage1.rebnconv7.bn_s1.running_var",
        "stage4.rebnconv4.conv_s1.bias",
        "stage5.rebnconv4.conv_s1.weight",  # RSU-4F's dilated bottom conv
        "stage5d.rebnconv3d.bn_s1.weight",
        "stage1d.rebnconv1d.conv_s1.weight",
        "side6.weight",
        "outconv.bias",
    ):
        assert key in keys
    assert not any(k.startswith(("encoder.", "decoder.")) for k in keys)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_seven_sigmoid_maps_at_input_size(name):
    model = build(name).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
    assert len(outs) == 7
    for out in outs:
        assert out.shape == (2, 1, 64, 96)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_fused_batchnorm_gives_the_same_maps(name):
    torch.manual_seed(1)
    model = build(name).eval()
    for m in model.modules():  # non-trivial statistics, or fusion is an identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        after = fuse_batchnorm(model)(x)[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(before, after, atol=1e-5)


def test_convolutions_run_in_the_onnx_export_order():
    order = conv_execution_order(build("u2netp"))
    assert len(order) == 119
    assert order[:2] == ["stage1.rebnconvin.conv_s1", "stage1.rebnconv1.conv_s1"]
    assert order[-7:] == ["side1", "side2", "side3", "side4", "side5", "side6", "outconv"]


def test_d0_head_returns_the_fused_map_only():
    loaded = random_weights("u2netp", 3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(U2NetD0(loaded.model)(x), loaded.model(x)[0])


def test_unknown_variant_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="known: u2net, u2netp"):
        build("u2netx")
