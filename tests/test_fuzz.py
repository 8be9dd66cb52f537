"""Fuzzing the decoding path in-process: random bytes and mutated real images through decode_image and
the full Segmenter never raise anything but an INVALID_ARGUMENT CoreError, and never end INTERNAL.

CI runs a few hundred examples; `@pytest.mark.long` (--run-long, `make soak`) runs thousands.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from handler.model import VARIANTS, U2NetD0
from handler.pipeline import Segmenter, SegmentRequest, Task
from handler.weights import random_weights
from tests import servekit as sk
from u2serve.core.errors import Code, CoreError
from u2serve.core.imaging import decode_image
from u2serve.core.options import Options

# Runs the networks (or builds a package): the "server" lane, not the pure one (tests/conftest.py).
pytestmark = pytest.mark.server

# 1 MP keeps every example fast; the limit's logic is the same at the server's 25 MP.
MAX_PIXELS = 1_000_000
# The model's input side matters nothing to the decoding path; 64 instead of 320 makes a pass ~20x cheaper.
FUZZ_INPUT_SIZE = 64

SEEDS = sk.seed_images()
# Magic numbers of the formats we accept and of some we refuse: random tails start from these.
ACCEPTED_MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*"]
MAGICS = [*ACCEPTED_MAGICS, b"RIFF\x00\x00\x00\x00WEBP", b"\x00\x00\x00\x0cjP  ", b"%PDF-1.4", b"8BPS", b"P6\n"]


def _ci(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _long(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


edits = st.lists(
    st.tuples(st.sampled_from(sk.EDITS), st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)),
    min_size=1,
    max_size=8,
)
mutated = st.builds(
    lambda seed, ops: _apply(SEEDS[seed], ops),
    st.sampled_from(sorted(SEEDS)),
    edits,
)
magic_then_noise = st.builds(lambda magic, tail: magic + tail, st.sampled_from(MAGICS), st.binary(max_size=512))
hostile_bytes = st.one_of(st.binary(max_size=2048), magic_then_noise, mutated)


def _apply(data: bytes, ops: list[tuple[str, float, int]]) -> bytes:
    for kind, where, value in ops:
        data = sk.edit(data, kind, where, value)
    return data


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    """U2NETP with seeded random weights at a 64x64 input, on the CPU."""
    variant = dataclasses.replace(VARIANTS["u2netp"], input_size=FUZZ_INPUT_SIZE)
    model = U2NetD0(random_weights("u2netp").model).eval()
    return Segmenter(model, variant, torch.device("cpu"), MAX_PIXELS)


def check_decode(data: bytes) -> None:
    """decode_image gives a well-formed image or an INVALID_ARGUMENT CoreError; nothing else escapes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about the corrupt files we feed it on purpose
        try:
            image = decode_image(data, MAX_PIXELS)
        except CoreError as exc:
            assert exc.code == Code.INVALID_ARGUMENT, exc
            assert exc.message
            return
    height, width = image.rgb.shape[:2]
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == (height, width, 3)
    assert 0 < width * height <= MAX_PIXELS
    assert image.alpha is None or (image.alpha.dtype == np.uint8 and image.alpha.shape == (height, width))


def check_pipeline(segmenter: Segmenter, data: bytes, task: Task) -> None:
    """The whole pipeline answers the request: a PNG of the input's size, or an INVALID_ARGUMENT error."""
    good = SegmentRequest(Task.MASK, SEEDS["png"])
    request = SegmentRequest(task, data, Options(crop=True, crop_margin=2, background=(0, 255, 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes, stats = segmenter.run([good, request])
    assert outcomes[0].error is None, "a hostile request broke its well-formed batch-mate"
    out = outcomes[1]
    if out.error is not None:
        assert out.error.code == Code.INVALID_ARGUMENT, out.error
        assert not out.image
        return
    with Image.open(io.BytesIO(out.image)) as im:
        assert im.format == "PNG" and im.size == out.output_size
    assert 0 < out.output_size[0] <= out.width and 0 < out.output_size[1] <= out.height
    assert stats.images == 2


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_images_decode(name):
    image = decode_image(SEEDS[name], MAX_PIXELS)
    assert image.size in {(24, 16), (64, 48), (60, 40)}


@pytest.mark.parametrize("name", sorted(sk.hostile_tiffs()))
def test_hostile_tiffs_decode_or_fail_cleanly(name):
    check_decode(sk.hostile_tiffs()[name])


@_ci(300)
@given(hostile_bytes)
def test_decode_random_and_mutated_bytes(data):
    check_decode(data)


@_ci(40)
@given(mutated, st.sampled_from([Task.MASK, Task.CUTOUT]))
def test_pipeline_on_mutated_images(segmenter, data, task):
    check_pipeline(segmenter, data, task)


@pytest.mark.long
@_long(10_000)
@given(hostile_bytes)
def test_decode_random_and_mutated_bytes_long(data):
    check_decode(data)


@pytest.mark.long
@_long(2_000)
@given(hostile_bytes, st.sampled_from([Task.MASK, Task.CUTOUT]))
def test_pipeline_on_mutated_images_long(segmenter, data, task):
    check_pipeline(segmenter, data, task)
