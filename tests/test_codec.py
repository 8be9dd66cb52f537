"""The handler's codecs and error classes without a server: what each protocol makes of a row, and whose fault
an error is (INVALID_ARGUMENT for the caller's, INTERNAL for ours)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from handler import codec
from handler.model import VARIANTS
from handler.pipeline import Outcome, Segmenter, SegmentRequest, Task
from u2serve.core._generated import u2serve_pb2
from u2serve.core.errors import Code, CoreError
from u2serve.core.options import Options

SERVED = codec.Served("u2netp", "1.0", "random (seed 0)")


def _png(width: int = 40, height: int = 30) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_as_a_segment_request_only_raise_invalid_argument(data):
    try:
        request = codec.for_row({"u2serve": data}).parse()
    except CoreError as exc:
        assert exc.code == Code.INVALID_ARGUMENT and exc.message
        return
    assert request.task in (Task.MASK, Task.CUTOUT)


def test_unknown_task_number_is_refused_with_the_accepted_ones():
    data = u2serve_pb2.SegmentRequest(task=7, image=b"x").SerializeToString()
    with pytest.raises(CoreError, match=r"unknown task 7; accepted: 1 \(MASK\) or 2 \(CUTOUT\)"):
        codec.for_row({"u2serve": data}).parse()


def test_option_values_are_checked_where_they_enter_with_the_sdks_messages():
    data = u2serve_pb2.SegmentRequest(image=b"x", options=u2serve_pb2.Options(threshold=1.5)).SerializeToString()
    with pytest.raises(CoreError, match=r"threshold=1.5; accepted: a number from 0.0 to 1.0") as info:
        codec.for_row({"u2serve": data}).parse()
    assert info.value.code == Code.INVALID_ARGUMENT


def test_raw_fields_and_headers_become_the_same_options():
    row = {"data": b"img", "task": b"cutout", "threshold": b"0.25", "crop": b"yes", "margin": b"3"}
    request = codec.for_row(row, {"X-U2Serve-Background": "#ff0000", "X-U2Serve-Compression": "9"}).parse()
    assert (request.task, request.image) == (Task.CUTOUT, b"img")
    assert request.options == Options(
        background=(255, 0, 0), threshold=0.25, crop=True, crop_margin=3, png_compression=9
    )
    with pytest.raises(CoreError, match=r"compression='x' is not an integer"):
        codec.for_row({"body": b"img", "compression": "x"}).parse()


def test_raw_errors_carry_their_http_status():
    failed = Outcome(None, error=CoreError(Code.INVALID_ARGUMENT, "bad image"))
    reply = codec.for_row({"body": b""}).reply(failed, SERVED, 1)
    assert (reply.http_status, reply.content_type) == (400, "application/json")
    assert json.loads(reply.body) == {"code": 400, "type": "INVALID_ARGUMENT", "message": "bad image"}


def _segmenter(model) -> Segmenter:
    return Segmenter(model, VARIANTS["u2netp"], torch.device("cpu"), 1_000_000)


def test_an_engine_answering_the_wrong_shape_is_internal_not_the_callers_fault():
    def wrong_shape(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0] + 1, 1, 8, 8)

    outcomes, _ = _segmenter(wrong_shape).run([SegmentRequest(Task.MASK, _png()), SegmentRequest(Task.MASK, b"bad")])
    assert outcomes[0].error is not None and outcomes[0].error.code == Code.INTERNAL
    assert "d0 must be (N, 1, S, S)" in outcomes[0].error.message
    assert outcomes[1].error is not None and outcomes[1].error.code == Code.INVALID_ARGUMENT  # its own fault
    reply = codec.for_row({"body": _png()}).reply(outcomes[0], SERVED, 2)
    assert reply.http_status == 500 and json.loads(reply.body)["type"] == "INTERNAL"
    proto = u2serve_pb2.SegmentResponse.FromString(codec.for_row({"u2serve": b""}).reply(outcomes[0], SERVED, 2).body)
    assert proto.error.code == Code.INTERNAL


def test_an_engine_that_raises_fails_its_batch_as_internal_and_the_next_batch_is_served():
    calls = []

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return torch.rand(x.shape[0], 1, 320, 320)

    segmenter = _segmenter(flaky)
    (first,), _ = segmenter.run([SegmentRequest(Task.MASK, _png())])
    assert (
        first.error is not None and first.error.code == Code.INTERNAL and "illegal memory access" in first.error.message
    )
    (second,), _ = segmenter.run([SegmentRequest(Task.MASK, _png())])
    assert second.error is None and second.image.startswith(b"\x89PNG")


def test_a_batch_on_several_threads_answers_as_on_one_in_order_with_its_own_errors():
    # Decode, compose and encode run on the worker's threads: same bytes, same order, errors where they were.
    rng = np.random.default_rng(3)

    def model(x: torch.Tensor) -> torch.Tensor:  # a fixed map per image, from its own pixels
        return torch.sigmoid(x.mean(dim=1, keepdim=True) * 4)

    def photo(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    items = [
        SegmentRequest(Task.CUTOUT, photo(64, 48)),
        SegmentRequest(Task.CUTOUT, b"not an image"),
        SegmentRequest(Task.MASK, photo(33, 70)),
        CoreError(Code.INVALID_ARGUMENT, "refused by the codec"),
        SegmentRequest(Task.CUTOUT, photo(50, 50), Options(background_image=photo(20, 10), effect="greyscale")),
        SegmentRequest(Task.CUTOUT, photo(40, 40), Options(background_image=b"broken")),
        SegmentRequest(Task.CUTOUT, photo(90, 30), Options(background=(1, 2, 3), output_format="jpeg")),
    ]
    one, _ = _segmenter(model).run(items)
    threaded = Segmenter(model, VARIANTS["u2netp"], torch.device("cpu"), 1_000_000, threads=3)
    many, stats = threaded.run(items)
    assert stats.requests == 7 and stats.images == 4
    assert [o.error.code if o.error else None for o in many] == [
        None, Code.INVALID_ARGUMENT, None, Code.INVALID_ARGUMENT, None, Code.INVALID_ARGUMENT, None
    ]  # fmt: skip
    assert "background_image" in many[5].error.message
    for a, b in zip(one, many, strict=True):
        assert (a.image, a.media_type, a.output_size, a.box) == (b.image, b.media_type, b.output_size, b.box)
        assert (a.error and a.error.message) == (b.error and b.error.message)
    assert [o.output_size for o in many if o.error is None] == [(64, 48), (33, 70), (50, 50), (90, 30)]
