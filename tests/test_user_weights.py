"""U2NET from a user's weight file: the built archive serves that file's outputs, and says where they came from."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from handler import build, weights
from handler.model import VARIANTS, U2NetD0
from handler.model import build as build_model
from handler.pipeline import Segmenter, SegmentRequest, Task
from tools.torchserve import Ports, start
from u2net_client import U2NetClient

# Runs the networks (or builds a package): the "server" lane, not the pure one (tests/conftest.py).
pytestmark = pytest.mark.server


def test_u2net_archive_from_a_users_pth_serves_its_outputs(tmp_path, reference_dir):
    torch.manual_seed(7)
    authors_layout = build_model("u2net").eval()
    weights._randomise_batchnorm(authors_layout, 7)
    pth = tmp_path / "u2net.pth"
    torch.save(authors_layout.state_dict(), pth)

    store = tmp_path / "store"
    build.build_archive("u2net", store, tmp_path / "work", pth, torch.device("cpu"))
    image = (reference_dir / "images" / "im_14.png").read_bytes()

    # What that file's weights give in process, through the same pipeline.
    expected_model = U2NetD0(weights.load("u2net", pth).model).eval()
    local = Segmenter(expected_model, VARIANTS["u2net"], torch.device("cpu"), 25_000_000)
    (outcome,), _ = local.run([SegmentRequest(Task.MASK, image)])
    expected = np.asarray(Image.open(io.BytesIO(outcome.image)))

    srv = start(tmp_path / "ts", store, ["u2net"], Ports.free())
    try:
        srv.wait_ready(timeout=600)
        with U2NetClient(srv.grpc_target, srv.grpc_management_target, key_file=srv.key_file) as client:
            served = client.mask(image, model="u2net")
            info = client.describe("u2net")
    finally:
        srv.stop()
    assert served.weights.startswith("u2net.pth sha256:")
    assert info.weights_random is False
    got = served.array
    assert got.shape == expected.shape
    # onnxruntime serves, the reference ran eager torch: equal up to float rounding.
    assert np.abs(got.astype(int) - expected.astype(int)).mean() / 255 < 0.002
    # ...and not what the seeded stand-in (seed 0) would give.
    stand_in = Segmenter(U2NetD0(weights.random_weights("u2net", 0).model).eval(), VARIANTS["u2net"],
                         torch.device("cpu"), 25_000_000)  # fmt: skip
    (other,), _ = stand_in.run([SegmentRequest(Task.MASK, image)])
    assert np.abs(got.astype(int) - np.asarray(Image.open(io.BytesIO(other.image))).astype(int)).mean() / 255 > 0.01
