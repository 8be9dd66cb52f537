"""Backgrounds, effects, refine and output formats (issue 11) against a real TorchServe: pixel-level checks on
the authors' images through the SDK (sync and asyncio), the command line, REST and bad requests in a batch.
The v2 path is in test_oip.py (its own server)."""

from __future__ import annotations

import asyncio
import io
import re
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests import servekit as sk
from tests.test_client_integration import aclient, cli_run
from tests.test_compose import colour_bleed, edge_band, rembg_post_process
from u2net_client import U2NetClient, U2NetError
from u2serve.core import compose, imaging, refine

INVALID_ARGUMENT = 3
# The bound of refine="matting" on a 6 MP photo, server time, on the loaded 2-core development machine; the
# solve is capped at refine.MATTING_MAX_PIXELS (make bench records what it costs: BENCHMARKS.md).
MATTING_6MP_BOUND_S = 60.0
PHOTOS = ("im_14.png", "girl.png", "0003.jpg")


@pytest.fixture(scope="module")
def client(server):
    with U2NetClient(server.grpc_target, server.grpc_management_target, key_file=server.key_file, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def beach() -> bytes:
    """A background photo: smooth colours and noise, 500x300 (wider than every test photo)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:300, 0:500]
    base = np.dstack((x * 255 // 500, y * 255 // 300, np.full_like(x, 90)))
    pixels = np.clip(base + rng.integers(-25, 25, base.shape), 0, 255).astype(np.uint8)
    return sk.encode(Image.fromarray(pixels), "PNG")


def rgb_of(path: Path) -> np.ndarray:
    return imaging.decode_image(path.read_bytes(), imaging.DEFAULT_MAX_PIXELS).rgb


def assert_blend(out: np.ndarray, front: np.ndarray, mask: np.ndarray, behind: np.ndarray) -> None:
    """Where the mask is 0 the layer behind, where it is 255 the input, in between the alpha blend (rounding)."""
    assert out.shape == behind.shape
    assert np.array_equal(out[mask == 0], behind[mask == 0])
    assert np.array_equal(out[mask == 255], front[mask == 255])
    a = mask.astype(np.float64)[..., None] / 255.0
    assert np.abs(out - (front * a + behind * (1.0 - a))).max() <= 0.5 + 1e-9


def fitted(background: bytes, size: tuple[int, int]) -> np.ndarray:
    """The background as compose fits it to cover `size` (tests/test_compose.py holds that to Pillow's fit)."""
    return compose.fit_background(imaging.decode_image(background, imaging.DEFAULT_MAX_PIXELS), size, "cover").rgb


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("scale", [1.0, 0.3], ids=["shrunk", "enlarged"])
def test_background_image_cover_pixels(client, reference_dir, beach, name, scale):
    path = reference_dir / "images" / name
    mask = client.mask(path).array
    if scale != 1.0:  # smaller than every test photo: scaled up to cover it
        with Image.open(io.BytesIO(beach)) as im:
            beach = sk.encode(im.resize((int(im.width * scale), int(im.height * scale))), "PNG")
    out = client.cutout(path, background_image=beach)
    rgb = rgb_of(path)
    assert out.image.mode == "RGB" and out.media_type == "image/png"
    assert_blend(out.array, rgb, mask, fitted(beach, out.input_size))


def test_contain_bars_are_the_colour_or_clear(client, reference_dir, beach):
    path = reference_dir / "images" / "im_14.png"  # 400x300; the 500x300 beach fits as 400x240: 30-row bars
    mask = client.mask(path).array
    rgb = rgb_of(path)
    coloured = client.cutout(path, background_image=beach, background_fit="contain", background="#102030").array
    bars = np.zeros(mask.shape, bool)
    bars[:30] = bars[270:] = True
    assert coloured.shape == (300, 400, 3)
    assert_blend(coloured[bars], rgb[bars], mask[bars], np.broadcast_to(np.uint8([16, 32, 48]), coloured[bars].shape))
    clear = client.cutout(path, background_image=beach, background_fit="contain").array
    assert clear.shape == (300, 400, 4)
    assert (clear[bars & (mask == 0)] == 0).all()  # alpha 0 (and no colour) where nothing covers the bars
    assert np.array_equal(clear[bars][..., 3], mask[bars])
    assert (clear[~bars][..., 3] == 255).all()
    stretched = client.cutout(path, background_image=beach, background_fit="stretch").array
    squeezed = np.asarray(Image.open(io.BytesIO(beach)).resize((400, 300), Image.Resampling.BILINEAR))
    assert_blend(stretched, rgb, mask, squeezed)


@pytest.mark.parametrize("name", PHOTOS[:2])
def test_blur_and_greyscale_pixels(client, reference_dir, name):
    path = reference_dir / "images" / name
    mask = client.mask(path).array
    rgb = rgb_of(path)
    blurred = client.cutout(path, effect="blur")
    radius = compose.default_blur_radius(*blurred.input_size)
    want = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))
    assert blurred.image.mode == "RGB"
    assert_blend(blurred.array, rgb, mask, want)
    grey = client.cutout(path, effect="greyscale", threshold=0.5).array  # effect with a hard mask
    hard = np.where(mask >= 127.5, 255, 0).astype(np.uint8)
    assert_blend(grey, rgb, hard, np.asarray(Image.fromarray(rgb).convert("L").convert("RGB")))


def test_postprocess_is_rembgs_on_the_served_mask(client, reference_dir):
    theirs = rembg_post_process() or refine.postprocess  # test_compose proves the latter equals OpenCV's steps
    for name in PHOTOS:
        path = reference_dir / "images" / name
        plain = client.mask(path).array
        assert np.array_equal(client.mask(path, refine="postprocess").array, theirs(plain)), name


@pytest.mark.parametrize("name", PHOTOS[:2])
def test_matting_on_served_masks(client, reference_dir, name):
    path = reference_dir / "images" / name
    mask = client.mask(path).array
    matted = client.cutout(path, refine="matting").array
    alpha, fg = matted[..., 3], matted[..., :3]
    assert np.array_equal(client.mask(path, refine="matting").array, alpha)
    changed = np.abs(alpha.astype(int) - mask.astype(int)) > 16
    assert changed.any() and not (changed & ~edge_band(mask, 40)).any()
    rgb = rgb_of(path)
    assert colour_bleed(fg, rgb, mask, alpha) < colour_bleed(rgb, rgb, mask, alpha)


def test_matting_six_megapixels_within_the_bound(client, reference_dir, record_property):
    path = reference_dir / "images" / "bike.jpg"  # 3000x2000
    start = time.perf_counter()
    out = client.cutout(path, refine="matting", output_format="webp", quality=90)
    wall = time.perf_counter() - start
    assert out.image.size == (3000, 2000) and out.image.mode == "RGBA"
    server_s = out.timings["postprocess"] / 1000.0
    record_property("matting_6mp_server_s", round(server_s, 2))
    record_property("matting_6mp_wall_s", round(wall, 2))
    assert server_s < MATTING_6MP_BOUND_S


def test_webp_and_jpeg_decode_to_the_expected_size_and_mode(client, reference_dir, server):
    path = reference_dir / "images" / "girl.png"
    lossless = client.cutout(path, output_format="webp")
    plain = client.cutout(path)
    assert lossless.media_type == "image/webp" and lossless.image.format == "WEBP"
    assert lossless.image.mode == "RGBA" and np.array_equal(lossless.array, plain.array)
    lossy = client.cutout(path, output_format="webp", quality=60)
    assert lossy.image.mode == "RGBA" and lossy.image.size == plain.image.size and len(lossy.png) < len(lossless.png)
    jpeg = client.cutout(path, background=(255, 255, 255), output_format="jpeg")
    assert (jpeg.media_type, jpeg.image.format, jpeg.image.mode) == ("image/jpeg", "JPEG", "RGB")
    assert jpeg.image.size == plain.image.size
    mask = client.mask(path, output_format="webp")
    assert mask.image.mode == "L" and np.array_equal(mask.array, client.mask(path).array)
    # JPEG with alpha: the SDK refuses before sending, the server when a raw client sends it anyway.
    with pytest.raises(U2NetError, match=r"cannot hold alpha.*give a background") as info:
        client.cutout(path, output_format="jpeg")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    raw = sk.Raw(server.grpc_target, server.keys()["inference"])
    try:
        reply = raw.segment(path.read_bytes(), task=sk.CUTOUT, output_format="jpeg")
    finally:
        raw.close()
    assert reply.error.code == INVALID_ARGUMENT and "give a background" in reply.error.message


def test_async_client_with_every_kind_of_option(server, reference_dir, beach):
    path = reference_dir / "images" / "im_21.png"

    async def go():
        async with aclient(server) as c:
            return await asyncio.gather(
                c.cutout(path, background_image=Image.open(io.BytesIO(beach)), effect="greyscale"),
                c.cutout(path, refine="postprocess", output_format="webp", quality=80),
                c.cutout_many([path, b"junk"], background_image=beach, output_format="jpeg", quality=70),
                c.mask(path),
            )

    grey, webp, many, mask = asyncio.run(go())
    behind = Image.fromarray(fitted(beach, grey.input_size)).convert("L").convert("RGB")
    assert_blend(grey.array, rgb_of(path), mask.array, np.asarray(behind))
    assert webp.media_type == "image/webp" and webp.image.mode == "RGBA"
    assert many[0].media_type == "image/jpeg" and many[0].image.mode == "RGB"
    assert isinstance(many[1], U2NetError) and many[1].code == grpc.StatusCode.INVALID_ARGUMENT


def test_command_line_background_image_effect_matting_webp(server, reference_dir, beach, tmp_path):
    (tmp_path / "beach.png").write_bytes(beach)
    src = reference_dir / "images" / "im_14.png"
    run = cli_run(
        server, "cutout", str(src), "-o", str(tmp_path), "--background-image", str(tmp_path / "beach.png"),
        "--effect", "blur", "--refine", "matting", "--format", "webp",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with Image.open(tmp_path / "im_14.cutout.webp") as im:
        assert (im.format, im.mode, im.size) == ("WEBP", "RGB", (400, 300))
    run = cli_run(server, "cutout", str(src), "-o", str(tmp_path), "--format", "jpeg")
    assert run.returncode == 2 and "give a background" in run.stderr
    run = cli_run(server, "cutout", str(src), "-o", str(tmp_path), "--effect", "sepia")
    assert run.returncode == 2 and "effect='sepia'; accepted" in run.stderr


def multipart(fields: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'.encode()
        body += b"Content-Type: application/octet-stream\r\n\r\n" + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rest_post(server, fields: dict[str, bytes]) -> tuple[int, str, bytes]:
    body, ctype = multipart(fields)
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.ports.inference}/predictions/u2netp",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {server.keys()['inference']}", "Content-Type": ctype},
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def test_rest_form_fields_and_headers(server, client, reference_dir, beach):
    path = reference_dir / "images" / "im_27.png"
    status, ctype, body = rest_post(
        server, {"data": path.read_bytes(), "background_image": beach, "format": b"jpeg", "quality": b"95"}
    )
    assert (status, ctype) == (200, "image/jpeg"), body[:300]
    with Image.open(io.BytesIO(body)) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (400, 300))
    sdk = client.cutout(path, background_image=beach, output_format="jpeg", quality=95)
    assert body == sdk.png
    status, ctype, body = sk.rest(
        server.ports.inference, "u2netp", path.read_bytes(), server.keys()["inference"],
        {"X-U2Serve-Effect": "blur", "X-U2Serve-Blur-Radius": "4", "X-U2Serve-Format": "webp"},
    )  # fmt: skip
    assert (status, ctype) == (200, "image/webp")
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(body))), client.cutout(path, effect="blur", blur_radius=4).array
    )
    status, _, body = rest_post(server, {"data": path.read_bytes(), "background_image": b"not an image"})
    assert status == 400 and "background_image: not a recognised image" in sk.rest_json(body)["message"]


# (options of u2serve.v1.Options, the message expected) for bad requests through the raw gRPC path.
BAD_OPTIONS = [
    ({"background_image": b"not an image"}, r"^background_image: not a recognised image"),
    ({"background_image": sk.png_declaring(6000, 5000)}, r"^background_image: image is 6000x5000 .* over the limit"),
    ({"effect": "sepia"}, r"effect='sepia'; accepted: 'blur', 'greyscale'"),
    ({"refine": "magic"}, r"refine='magic'; accepted"),
    ({"output_format": "gif"}, r"output_format='gif'; accepted"),
    ({"effect": "blur", "blur_radius": 1e6}, r"blur_radius=1000000.0; accepted"),
    ({"output_format": "jpeg", "quality": 101, "background": sk.u2serve_pb2.Color(r=1)}, r"quality=101"),
    ({"refine": "matting", "matting_erode_size": 1000}, r"matting_erode_size=1000"),
    ({"background_fit": "contain"}, r"needs a background_image"),
]


def test_bad_options_fail_alone_in_a_batch_and_the_worker_stays_up(server, reference_dir, beach):
    raw = sk.Raw(server.grpc_target, server.keys()["inference"])
    good = sk.photo(reference_dir, "im_21.png")
    try:
        jobs = []
        for options, _ in BAD_OPTIONS:
            jobs += [({"background_image": beach}, good), (options, good)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = [pool.submit(raw.segment, image, "u2netp", sk.CUTOUT, **opts) for opts, image in jobs]
            replies = [f.result() for f in futures]
        assert max(r.batch_size for r in replies if not r.HasField("error")) > 1
        for i, reply in enumerate(replies):
            if i % 2 == 0:
                assert not reply.HasField("error"), reply.error.message
                assert Image.open(io.BytesIO(reply.image)).mode == "RGB"
            else:
                pattern = BAD_OPTIONS[i // 2][1]
                assert reply.error.code == INVALID_ARGUMENT, reply
                assert re.search(pattern, reply.error.message), reply.error.message
        assert not raw.segment(good).HasField("error")
    finally:
        raw.close()
    workers = server.management("/models/u2netp")[0]["workers"]
    assert all(w["status"] == "READY" for w in workers)
