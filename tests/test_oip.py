"""The Open Inference Protocol (KServe v2 gRPC): the handler's v2 rows, and the SDK's protocol="v2" against a
real TorchServe started with ts_open_inference_protocol=true."""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import numpy as np
import pytest

from handler import codec
from handler.pipeline import Outcome, Task
from u2net_client import AsyncU2NetClient, U2NetClient, U2NetError
from u2serve.core._generated import u2serve_pb2
from u2serve.core.errors import Code, CoreError

# ---- what the handler receives: TorchServe's ModelInfer as parsed JSON under "body" ---------------


def v2_row(**tensors: bytes) -> dict[str, object]:
    inputs = [
        {"name": name, "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(value).decode()]}
        for name, value in tensors.items()
    ]
    return {"body": {"id": "req-1", "model_name": "u2netp", "inputs": inputs}}


def test_v2_row_with_image_and_options():
    segment = u2serve_pb2.SegmentRequest(task=u2serve_pb2.MASK, options=u2serve_pb2.Options(crop=True, crop_margin=3))
    row = v2_row(image=b"\x89PNG...", u2serve=segment.SerializeToString())
    row_codec = codec.for_row(row)
    request = row_codec.parse()
    assert isinstance(row_codec, codec.V2Codec) and row_codec.request_id == "req-1"
    assert (request.task, request.image) == (Task.MASK, b"\x89PNG...")
    assert request.options.crop and request.options.crop_margin == 3


def test_v2_row_with_the_image_alone_is_a_cutout():
    request = codec.for_row(v2_row(image=b"jpeg bytes")).parse()
    assert (request.task, request.image) == (Task.CUTOUT, b"jpeg bytes")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": []}, "accepted: 'image'"),
        ({"inputs": [{"name": "pixels", "datatype": "BYTES", "data": ["AA=="]}]}, r"v2 inputs \['pixels'\]"),
        ({"inputs": [{"name": "image", "datatype": "FP32", "data": [0.5]}]}, "must be one BYTES element"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "data": ["a", "b"]}]}, "with 2 elements"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "data": ["!!"]}]}, "not base64"),
    ],
)
def test_bad_v2_rows_say_what_is_accepted(body, message):
    with pytest.raises(CoreError, match=message):
        codec.for_row({"body": body}).parse()


def test_other_json_bodies_keep_their_error():
    with pytest.raises(CoreError, match="the request body is JSON"):
        codec.for_row({"body": {"image": "x"}}).parse()
    assert isinstance(codec.for_row({"body": {"image": "x"}}), codec.RawCodec)


def test_v2_reply_envelope_carries_the_segment_response():
    row_codec = codec.for_row(v2_row(image=b"x"))
    failed = Outcome(None, error=CoreError(Code.INVALID_ARGUMENT, "bad"))
    reply = json.loads(row_codec.reply(failed, codec.Served("u2netp", "1.0", "w"), 1).body)
    assert (reply["id"], reply["model_name"], reply["model_version"]) == ("req-1", "u2netp", "1.0")
    (output,) = reply["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("u2serve", "BYTES", [1])
    assert u2serve_pb2.SegmentResponse.FromString(base64.b64decode(output["data"][0])).error.message == "bad"


# ---- the SDK against TorchServe with the Open Inference Protocol on ------------------------------


@pytest.fixture(scope="module")
def oip_server(tmp_path_factory, model_store):
    from tools.torchserve import Ports, start

    srv = start(
        tmp_path_factory.mktemp("torchserve_oip"),
        model_store,
        ["u2netp"],
        Ports.free(),
        extra_config={"ts_open_inference_protocol": "true"},
    )
    try:
        srv.wait_ready(timeout=600)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def clients(oip_server):
    kw = {"key_file": oip_server.key_file, "timeout": 120}
    with (
        U2NetClient(oip_server.grpc_target, oip_server.grpc_management_target, **kw) as torchserve,
        U2NetClient(oip_server.grpc_target, oip_server.grpc_management_target, protocol="v2", **kw) as v2,
    ):
        yield torchserve, v2


def test_server_live_ready_and_model_metadata(clients):
    _, v2 = clients
    assert v2.server_live() and v2.server_ready()
    assert v2.model_ready("u2netp")
    meta = v2.model_metadata("u2netp")
    assert meta.name == "u2netp" and meta.versions == ("1.0",)
    with pytest.raises(U2NetError, match="nope") as err:
        v2.model_metadata("nope")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("name", "call", "options"),
    [
        ("im_01.png", "mask", {}),
        ("im_01.png", "mask", {"threshold": 0.5, "crop": True, "crop_margin": 5}),
        ("im_01.png", "cutout", {}),
        ("girl.png", "cutout", {"background": "#00ff00", "crop": True}),
        ("bike.jpg", "cutout", {"crop": True}),
    ],
)
def test_v2_masks_and_cutouts_equal_the_torchserve_protocols(clients, reference_dir, name, call, options):
    torchserve, v2 = clients
    image = reference_dir / "images" / name
    want = getattr(torchserve, call)(image, **options)
    got = getattr(v2, call)(image, **options)
    assert got.png == want.png
    assert (got.box, got.input_size, got.model, got.model_version, got.weights) == (
        want.box, want.input_size, want.model, want.model_version, want.weights,
    )  # fmt: skip
    assert np.array_equal(got.array, want.array)


@pytest.mark.parametrize(
    ("call", "options"),
    [
        ("cutout", {"background_image": "boat.jpg", "background_fit": "contain", "output_format": "webp"}),
        ("cutout", {"background_image": "boat.jpg", "effect": "blur", "output_format": "jpeg", "quality": 80}),
        ("cutout", {"effect": "greyscale", "refine": "postprocess", "crop": True}),
        ("mask", {"refine": "matting", "matting_erode_size": 5}),
    ],
)
def test_v2_backgrounds_effects_refine_and_formats_equal_the_torchserve_protocols(
    clients, reference_dir, call, options
):
    torchserve, v2 = clients
    image = reference_dir / "images" / "im_27.png"
    if "background_image" in options:
        options = {**options, "background_image": reference_dir / "images" / options["background_image"]}
    want = getattr(torchserve, call)(image, **options)
    got = getattr(v2, call)(image, **options)
    assert got.png == want.png and got.media_type == want.media_type
    assert got.media_type == {"webp": "image/webp", "jpeg": "image/jpeg"}.get(options.get("output_format"), "image/png")
    with pytest.raises(U2NetError, match=r"INVALID_ARGUMENT: background_image: not a recognised image") as err:
        v2.cutout(image, background_image=b"junk")  # the server's check: the SDK sends any bytes
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_v2_errors_keep_their_status(clients):
    _, v2 = clients
    with pytest.raises(U2NetError, match="not a recognised image") as err:
        v2.mask(b"not an image")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(U2NetError) as err:
        v2.mask(b"\x89PNG", model="u2nope")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_v2_without_a_token_is_refused(oip_server):
    with (
        U2NetClient(oip_server.grpc_target, token="wrong", protocol="v2", timeout=30) as client,
        pytest.raises(U2NetError) as err,
    ):
        client.server_live()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_async_v2_batches_in_order(oip_server, reference_dir):
    images = [reference_dir / "images" / n for n in ("im_14.png", "im_21.png", "im_27.png")]

    async def go():
        async with AsyncU2NetClient(
            oip_server.grpc_target, key_file=oip_server.key_file, protocol="v2", timeout=120
        ) as client:
            return await client.mask_many(images, concurrency=3), await client.server_ready()

    results, ready = asyncio.run(go())
    assert ready
    assert [r.input_size for r in results] == [(400, 300), (400, 373), (400, 300)]
