"""Unit tests for u2net_client.imaging, the one image pipeline: decoding, U²-Net pre/postprocessing, boxes,
cutouts, PNG."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from u2serve.core import imaging as T
from u2serve.core.errors import Code, CoreError

MAX_PIXELS = 40_000_000
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _pattern(width: int = 48, height: int = 32) -> np.ndarray:
    """Flat colour blocks, so lossy formats stay close to the source."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[: height // 2, : width // 2] = (255, 0, 0)
    rgb[: height // 2, width // 2 :] = (0, 255, 0)
    rgb[height // 2 :, : width // 2] = (0, 0, 255)
    rgb[height // 2 :, width // 2 :] = (250, 250, 250)
    return rgb


INVALID = Code.INVALID_ARGUMENT
INTERNAL = Code.INTERNAL


def _invalid(match: str):
    return pytest.raises(CoreError, match=match)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height; its pixel data would not even fill one row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# --- decode_image: formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("GIF", {}, 0),
        ("JPEG", {"quality": 95}, 8),
    ],
)
def test_each_accepted_format_round_trips(fmt: str, params: dict, tolerance: int) -> None:
    rgb = _pattern()
    decoded = T.decode_image(_save(Image.fromarray(rgb), fmt, **params), MAX_PIXELS)
    assert decoded.format == fmt
    assert decoded.size == (48, 32)
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.flags.c_contiguous
    assert decoded.alpha is None
    assert np.abs(decoded.rgb.astype(int) - rgb).mean() <= tolerance


def test_accepted_formats_are_the_documented_ones() -> None:
    assert T.ACCEPTED_FORMATS == ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")


def test_reference_images_decode(reference_dir: Path) -> None:
    paths = sorted((reference_dir / "images").iterdir())
    assert paths
    for path in paths:
        with Image.open(path) as im:
            expected_size = im.size
        decoded = T.decode_image(path.read_bytes(), MAX_PIXELS)
        assert decoded.size == expected_size, path.name
        assert decoded.rgb.shape == (expected_size[1], expected_size[0], 3)


def test_one_pixel_image_is_valid() -> None:
    decoded = T.decode_image(_save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), MAX_PIXELS)
    assert decoded.size == (1, 1)
    assert decoded.rgb.tolist() == [[[10, 20, 30]]]


# --- decode_image: refusals ---------------------------------------------------------------------


def test_empty_body_is_refused() -> None:
    with _invalid(r"empty image body; send the image file's bytes \(JPEG, PNG, WebP, BMP, TIFF or GIF\)") as err:
        T.decode_image(b"", MAX_PIXELS)
    assert err.value.code == INVALID


def test_text_is_refused_naming_the_formats() -> None:
    with _invalid("not a recognised image.*accepted formats: JPEG, PNG, WebP, BMP, TIFF or GIF") as err:
        T.decode_image(b"hello, this is not an image", MAX_PIXELS)
    assert err.value.code == INVALID


@pytest.mark.parametrize(("fmt", "mode"), [("ICO", "RGBA"), ("PPM", "RGB"), ("PCX", "RGB")])
def test_formats_outside_the_list_are_refused(fmt: str, mode: str) -> None:
    data = _save(Image.new(mode, (16, 16)), fmt)
    with _invalid("accepted formats: JPEG, PNG, WebP, BMP, TIFF or GIF"):
        T.decode_image(data, MAX_PIXELS)


def test_truncated_jpeg_is_an_error_not_grey_pixels() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    data = _save(Image.fromarray(noise), "JPEG")
    with _invalid("could not decode the JPEG image: truncated or corrupt") as err:
        T.decode_image(data[: len(data) // 2], MAX_PIXELS)
    assert err.value.code == INVALID


def test_png_header_only_is_an_error() -> None:
    data = _save(Image.fromarray(_pattern()), "PNG")
    with _invalid("could not decode the PNG image: truncated or corrupt"):
        T.decode_image(data[:33], MAX_PIXELS)


def test_over_the_limit_is_refused_from_the_header() -> None:
    data = _save(Image.new("L", (100, 100)), "PNG")
    with _invalid(r"image is 100x100 = 10000 pixels, over the limit of 5000 pixels") as err:
        T.decode_image(data, 5000)
    assert err.value.code == INVALID


@pytest.mark.parametrize("side", [50_000, 10_000])
def test_declared_giant_png_is_refused_without_decoding(side: int) -> None:
    # The pixel data would not fill one row: any decoding attempt would end in "truncated or
    # corrupt", so the size message proves the refusal came from the header. 10000² only trips
    # PIL's DecompressionBombWarning, 50000² its DecompressionBombError; both must become ours.
    data = _png_declaring(side, side)
    assert len(data) < 200
    with _invalid(f"image is .*{side * side} pixels, over the limit of {MAX_PIXELS} pixels") as err:
        T.decode_image(data, MAX_PIXELS)
    assert err.value.code == INVALID


@pytest.mark.parametrize("side", [100, 10_000, 50_000])
def test_over_the_limit_is_its_own_type_from_header_probe_and_pil_guard(side: int) -> None:
    # A gateway answers TooManyPixels with 413 by its type; every other bad image stays a plain CoreError.
    data = _png_declaring(side, side)
    for check in (T.decode_image, T.probe_image):
        with pytest.raises(T.TooManyPixels, match="over the limit") as err:
            check(data, 5000)
        assert err.value.code == INVALID and isinstance(err.value, CoreError)
    with pytest.raises(CoreError) as broken:
        T.probe_image(data[:20], 5000)
    assert not isinstance(broken.value, T.TooManyPixels)


def test_zero_sized_image_is_refused() -> None:
    # PIL itself refuses a zero-sized PNG header today; our own check stands behind it.
    with _invalid("image declares no pixels|PNG image: truncated or corrupt") as err:
        T.decode_image(_png_declaring(0, 10), MAX_PIXELS)
    assert err.value.code == INVALID


# --- decode_image: pixel modes ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_is_scaled_not_clipped(mode: str, fmt: str) -> None:
    levels = np.linspace(0, 65535, 256).round().astype(np.uint16)
    gray16 = np.tile(levels, (4, 1))
    # Built from bytes: PIL's convert("I;16B") would clip at 255 too.
    dtype = ">u2" if mode == "I;16B" else "<u2"
    im = Image.frombytes(mode, (256, 4), gray16.astype(dtype).tobytes())
    decoded = T.decode_image(_save(im, fmt), MAX_PIXELS)
    expected = np.rint(levels / 257).astype(np.uint8)
    assert decoded.rgb.shape == (4, 256, 3)
    np.testing.assert_array_equal(decoded.rgb[0, :, 0], expected)
    np.testing.assert_array_equal(decoded.rgb[..., 0], decoded.rgb[..., 2])
    assert (decoded.rgb == 255).mean() < 0.01


def test_mode_i_is_read_as_sixteen_bit() -> None:
    values = np.array([[0, 257, 32896, 65535, 70000, -5]], dtype=np.int32)
    decoded = T.decode_image(_save(Image.fromarray(values, "I"), "TIFF"), MAX_PIXELS)
    assert decoded.rgb[0, :, 0].tolist() == [0, 1, 128, 255, 255, 0]


def test_float_image_in_unit_range_is_scaled() -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    decoded = T.decode_image(_save(Image.fromarray(values, "F"), "TIFF"), MAX_PIXELS)
    assert decoded.rgb[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    ("mode", "has_alpha"),
    [
        ("1", False),
        ("L", False),
        ("P", False),
        ("RGB", False),
        ("CMYK", False),
        ("YCbCr", False),
        ("LAB", False),
        ("RGBA", True),
        ("LA", True),
        ("PA", True),
    ],
)
def test_modes_convert_to_rgb(mode: str, has_alpha: bool) -> None:
    im = Image.fromarray(_pattern()).convert(mode)
    decoded = T.decode_image(_save(im, "TIFF"), MAX_PIXELS)
    assert decoded.rgb.shape == (32, 48, 3) and decoded.rgb.dtype == np.uint8
    assert (decoded.alpha is not None) == has_alpha
    if has_alpha:
        assert decoded.alpha.shape == (32, 48) and decoded.alpha.dtype == np.uint8


def test_cmyk_jpeg() -> None:
    data = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
    decoded = T.decode_image(data, MAX_PIXELS)
    assert np.abs(decoded.rgb.astype(int) - (255, 0, 0)).max() <= 3


def test_animated_gif_gives_frame_zero() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 3
    decoded = T.decode_image(data, MAX_PIXELS)
    assert (decoded.rgb == (255, 0, 0)).all()


def test_animated_png_gives_frame_zero() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((0, 0, 255), (0, 255, 0))]
    data = _save(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert (T.decode_image(data, MAX_PIXELS).rgb == (0, 0, 255)).all()


def test_palette_png_with_transparency_gives_alpha() -> None:
    im = Image.new("P", (4, 2))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    decoded = T.decode_image(_save(im, "PNG", transparency=0), MAX_PIXELS)
    assert decoded.alpha is not None
    assert decoded.alpha.tolist() == [[0, 255, 0, 255], [255, 255, 0, 0]]
    assert decoded.rgb[0, 1].tolist() == [0, 255, 0]


def test_la_png_gives_alpha() -> None:
    la = np.stack([np.full((3, 5), 90, np.uint8), np.arange(15, dtype=np.uint8).reshape(3, 5) * 17], axis=2)
    decoded = T.decode_image(_save(Image.fromarray(la, "LA"), "PNG"), MAX_PIXELS)
    np.testing.assert_array_equal(decoded.alpha, la[..., 1])
    assert (decoded.rgb == 90).all()


def test_rgb_png_with_trns_gives_alpha() -> None:
    rgb = _pattern()
    decoded = T.decode_image(_save(Image.fromarray(rgb), "PNG", transparency=(255, 0, 0)), MAX_PIXELS)
    assert decoded.alpha is not None
    np.testing.assert_array_equal(decoded.alpha == 0, (rgb == (255, 0, 0)).all(axis=2))


def test_rgba_png_keeps_colour_and_alpha() -> None:
    rgba = np.dstack([_pattern(), np.linspace(0, 255, 48 * 32).reshape(32, 48).astype(np.uint8)])
    decoded = T.decode_image(_save(Image.fromarray(rgba), "PNG"), MAX_PIXELS)
    np.testing.assert_array_equal(decoded.rgb, rgba[..., :3])
    np.testing.assert_array_equal(decoded.alpha, rgba[..., 3])


def test_exif_orientation_is_applied() -> None:
    rgb = _pattern(48, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90° clockwise.
    data = _save(Image.fromarray(rgb), "JPEG", quality=95, exif=exif)
    decoded = T.decode_image(data, MAX_PIXELS)
    assert decoded.size == (32, 48)
    expected = np.rot90(rgb, k=-1)
    assert np.abs(decoded.rgb.astype(int) - expected).mean() < 8


# --- decode_image: hostile input ----------------------------------------------------------------

_MAGICS = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
)


def _seed_sample(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
    # Half the samples start with a real signature, so the format plugins' parsers get exercised.
    return _MAGICS[seed % len(_MAGICS)] + noise if seed % 2 else noise


@pytest.fixture(scope="module")
def real_files() -> list[bytes]:
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 8
    return [
        _save(picture, "JPEG", exif=exif),
        _save(picture, "PNG"),
        _save(picture.convert("P"), "GIF"),
        _save(picture, "WEBP"),
        _save(picture, "TIFF"),
        _save(picture, "BMP"),
    ]


def _mutate(data: bytes, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    mutated = bytearray(data)
    for _ in range(int(rng.integers(1, 12))):
        mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
    if seed % 3 == 0:
        mutated = mutated[: int(rng.integers(1, len(mutated)))]
    return bytes(mutated)


def _decode_or_refuse(data: bytes) -> None:
    try:
        decoded = T.decode_image(data, 4_000_000)
    except CoreError as exc:
        assert exc.code == INVALID
    else:
        assert decoded.rgb.ndim == 3 and decoded.rgb.shape[2] == 3


# PIL warns about the corrupt EXIF and TIFF tags that random bytes make; expected here.
_PIL_WARNINGS = pytest.mark.filterwarnings("ignore::UserWarning")


@_PIL_WARNINGS
@pytest.mark.parametrize("seed", range(200))
def test_garbage_only_raises_our_error(seed: int) -> None:
    _decode_or_refuse(_seed_sample(seed))


@_PIL_WARNINGS
@pytest.mark.parametrize("seed", range(200))
def test_mutated_files_only_raise_our_error(seed: int, real_files: list[bytes]) -> None:
    _decode_or_refuse(_mutate(real_files[seed % len(real_files)], seed))


@_PIL_WARNINGS
def test_mutated_reference_jpeg_only_raises_our_error(reference_dir: Path) -> None:
    data = (reference_dir / "images" / "boat.jpg").read_bytes()
    for seed in range(10):
        _decode_or_refuse(_mutate(data, seed))


# --- preprocess ---------------------------------------------------------------------------------


def test_preprocess_divides_by_max_then_normalises() -> None:
    image = np.array([[[0, 50, 100], [200, 150, 20]], [[10, 20, 30], [40, 60, 80]]], dtype=np.uint8)
    batch = T.preprocess([image], size=2, mean=MEAN, std=STD)
    assert batch.shape == (1, 3, 2, 2) and batch.dtype == np.float32
    scaled = image.astype(np.float32) / np.float32(200)
    expected = (scaled - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(batch[0].transpose(1, 2, 0), expected, rtol=0, atol=1e-6)


def test_preprocess_resizes_bilinear_without_antialias() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(1, 256, size=(37, 53, 3), dtype=np.uint8)
    batch = T.preprocess([image], size=16, mean=(0, 0, 0), std=(1, 1, 1))
    chw = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(chw, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch.from_numpy(batch), resized / resized.max(), rtol=0, atol=1e-6)


def test_preprocess_batches_mixed_sizes_and_guards_black() -> None:
    white = np.full((10, 30, 3), 255, np.uint8)
    black = np.zeros((40, 20, 3), np.uint8)
    batch = T.preprocess([white, black], size=8, mean=MEAN, std=STD)
    assert batch.shape == (2, 3, 8, 8)
    for c in range(3):
        np.testing.assert_allclose(batch[0, c], np.full((8, 8), (1 - MEAN[c]) / STD[c]), rtol=1.3e-6, atol=1e-5)
        np.testing.assert_allclose(batch[1, c], np.full((8, 8), -MEAN[c] / STD[c]), rtol=1.3e-6, atol=1e-5)
    assert np.isfinite(batch).all()


def test_preprocess_refuses_non_rgb() -> None:
    with _invalid("HxWx3 uint8") as err:
        T.preprocess([np.zeros((4, 4), np.uint8)], size=8, mean=MEAN, std=STD)
    assert err.value.code == INTERNAL


# --- masks_from_output --------------------------------------------------------------------------


def _authors_mask(d: np.ndarray, width: int, height: int) -> np.ndarray:
    """U-2-Net's u2net_test.py: normPRED, then Image.fromarray(pred * 255).convert('RGB').resize."""
    pred = torch.from_numpy(d)
    pred = ((pred - pred.min()) / (pred.max() - pred.min())).numpy()
    image = Image.fromarray(pred * 255).convert("RGB")
    return np.asarray(image.resize((width, height), resample=Image.Resampling.BILINEAR))[..., 0]


def test_masks_match_the_authors_pipeline() -> None:
    rng = np.random.default_rng(3)
    d0 = rng.random((3, 1, 32, 32), dtype=np.float32) * 0.8 + 0.1
    sizes = [(32, 32), (50, 40), (17, 90)]
    masks = T.masks_from_output(d0, sizes)
    for mask, d, (width, height) in zip(masks, d0, sizes, strict=True):
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, _authors_mask(d[0], width, height))


def test_masks_min_max_normalise_and_truncate() -> None:
    ramp = np.tile(np.array([0.2, 0.3, 0.5, 0.8], np.float32), (4, 1))
    masks = T.masks_from_output(ramp[None, None], [(4, 4)])
    # (v - 0.2) / 0.6 * 255 = 0, 42.5, 127.5, 255: truncated, never rounded up.
    assert masks[0][0].tolist() == [0, 42, 127, 255]


def test_pil_float_conversion_truncates() -> None:
    values = np.array([[0.0, 0.999, 1.5, 127.99, 254.6, 255.0, -3.0, 300.0]], dtype=np.float32)
    assert np.asarray(Image.fromarray(values).convert("RGB"))[0, :, 0].tolist() == [
        0,
        0,
        1,
        127,
        254,
        255,
        0,
        255,
    ]


def test_constant_map_gives_zeros() -> None:
    masks = T.masks_from_output(np.full((1, 1, 8, 8), 0.7, np.float32), [(5, 3)])
    assert masks[0].shape == (3, 5) and not masks[0].any()


def test_masks_refuse_mismatched_sizes() -> None:
    with _invalid(r"d0 must be \(N, 1, S, S\)") as err:
        T.masks_from_output(np.zeros((2, 1, 8, 8), np.float32), [(8, 8)])
    assert err.value.code == INTERNAL  # the network answered the wrong shape: our fault, not the caller's


# --- boxes, thresholds, crops -------------------------------------------------------------------


def _blob_mask() -> np.ndarray:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:8] = 200
    mask[6, 10] = 100
    return mask


def test_bounding_box() -> None:
    assert T.bounding_box(_blob_mask()) == T.Box(x=3, y=2, width=5, height=3)
    assert T.bounding_box(_blob_mask(), threshold=0.3) == T.Box(x=3, y=2, width=8, height=5)
    assert T.bounding_box(_blob_mask(), threshold=0.9) is None


def test_bounding_box_threshold_is_inclusive() -> None:
    mask = np.array([[127, 128]], np.uint8)
    assert T.bounding_box(mask, 0.5) == T.Box(x=1, y=0, width=1, height=1)


def test_bounding_box_on_six_megapixels() -> None:
    mask = np.zeros((2000, 3000), np.uint8)
    mask[1234, 2345] = 255
    mask[1500, 17] = 255
    assert T.bounding_box(mask) == T.Box(x=17, y=1234, width=2345 - 17 + 1, height=1500 - 1234 + 1)


def test_bounding_box_refuses_bad_threshold() -> None:
    with _invalid("threshold must be between 0 and 1") as err:
        T.bounding_box(_blob_mask(), 1.5)
    assert err.value.code == INTERNAL


def test_expand_box_clamps_to_image() -> None:
    box = T.Box(x=3, y=2, width=5, height=3)
    assert T.expand_box(box, 0, 12, 10) == box
    assert T.expand_box(box, 2, 12, 10) == T.Box(x=1, y=0, width=9, height=7)
    assert T.expand_box(box, 100, 12, 10) == T.Box(x=0, y=0, width=12, height=10)
    with _invalid("margin must be >= 0"):
        T.expand_box(box, -1, 12, 10)


def test_crop_two_and_three_dimensions() -> None:
    box = T.Box(x=3, y=2, width=5, height=3)
    assert (T.crop(_blob_mask(), box) == 200).all()
    rgb = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    np.testing.assert_array_equal(T.crop(rgb, box), rgb[2:5, 3:8])
    with _invalid("outside the 12x10 image"):
        T.crop(rgb, T.Box(x=10, y=0, width=5, height=1))


def test_apply_threshold() -> None:
    mask = np.array([[0, 127, 128, 255]], np.uint8)
    assert T.apply_threshold(mask, 0.5).tolist() == [[0, 0, 255, 255]]
    assert T.apply_threshold(mask, 0.0).tolist() == [[255, 255, 255, 255]]
    assert T.apply_threshold(mask, 1.0).tolist() == [[0, 0, 0, 255]]
    with _invalid("threshold must be between 0 and 1") as err:
        T.apply_threshold(mask, -0.1)
    assert err.value.code == INTERNAL


# --- cutout -------------------------------------------------------------------------------------


def test_cutout_without_background_is_rgba() -> None:
    rgb = _pattern(4, 2)
    mask = np.array([[0, 64, 128, 255], [255, 0, 1, 2]], np.uint8)
    out = T.cutout(rgb, mask)
    assert out.shape == (2, 4, 4) and out.dtype == np.uint8
    visible = mask > 0
    np.testing.assert_array_equal(out[..., :3][visible], rgb[visible])
    np.testing.assert_array_equal(out[..., 3], mask)
    # Fully transparent pixels are (0, 0, 0, 0), as rembg makes them.
    assert (out[~visible] == 0).all()


def test_cutout_multiplies_input_alpha_rounded() -> None:
    rgb = _pattern(3, 1)
    mask = np.array([[255, 128, 100]], np.uint8)
    alpha = np.array([[128, 128, 0]], np.uint8)
    out = T.cutout(rgb, mask, alpha=alpha)
    # 255*128/255 = 128, 128*128/255 = 64.25, 0.
    assert out[0, :, 3].tolist() == [128, 64, 0]


def test_cutout_over_background() -> None:
    rgb = np.array([[[200, 0, 0], [200, 0, 0], [10, 20, 30]]], np.uint8)
    mask = np.array([[128, 255, 0]], np.uint8)
    out = T.cutout(rgb, mask, background=(0, 0, 255))
    assert out.shape == (1, 3, 3)
    # 200 * 128/255 = 100.39 -> 100; 255 * 127/255 = 127.
    assert out.tolist() == [[[100, 0, 127], [200, 0, 0], [0, 0, 255]]]


def test_cutout_over_background_matches_float_formula() -> None:
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    bg = (12, 200, 77)
    out = T.cutout(rgb, mask, alpha=alpha, background=bg)
    a = np.rint(mask.astype(np.float64) * alpha / 255)[..., None] / 255
    expected = np.rint(rgb * a + np.array(bg) * (1 - a))
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_cutout_and_blend_same_bytes_with_and_without_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenCV's fast paths (the server's extra) and numpy's (a client-only install) make the same bytes.
    assert T._cv2 is not None, "the test venv has the server extra, hence OpenCV"
    rng = np.random.default_rng(8)
    rgb = rng.integers(0, 256, size=(33, 47, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, size=(33, 47), dtype=np.uint8)
    mask[:5] = 0
    alpha = rng.integers(0, 256, size=(33, 47), dtype=np.uint8)
    view = T.crop(rgb, T.Box(x=3, y=2, width=20, height=10))  # strided rows, as a crop hands them over
    cases = [(rgb, mask, None), (rgb, mask, alpha), (view, mask[2:12, 3:23], None)]
    fast = [T.cutout(*case) for case in cases] + [T.cutout(rgb, mask, background=(9, 99, 199))]
    monkeypatch.setattr(T, "_cv2", None)
    plain = [T.cutout(*case) for case in cases] + [T.cutout(rgb, mask, background=(9, 99, 199))]
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_array_equal(a, b)


def test_blend_is_exact_for_every_input(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every (front, alpha, behind) of 256^3, through OpenCV and through numpy: round(f*a/255 + b*(1-a/255)).
    values = np.arange(256, dtype=np.uint8)
    front = np.repeat(values, 65536).reshape(4096, 4096, 1).repeat(3, axis=2)
    alpha = np.tile(np.repeat(values, 256), 256).reshape(4096, 4096)
    behind = np.tile(values, 65536).reshape(4096, 4096, 1).repeat(3, axis=2)
    exact = (front[..., 0].astype(np.uint32) * alpha + behind[..., 0].astype(np.uint32) * (255 - alpha)) / 255
    want = np.rint(exact).astype(np.uint8)
    np.testing.assert_array_equal(T.blend(front, alpha, behind)[..., 1], want)
    monkeypatch.setattr(T, "_cv2", None)
    np.testing.assert_array_equal(T.blend(front[:64], alpha[:64], behind[:64])[..., 2], want[:64])


@pytest.mark.parametrize("background", [(0, 0, 256), (-1, 0, 0), (1, 2), (0.5, 0, 0)])
def test_cutout_refuses_bad_background(background: tuple) -> None:
    with _invalid("background must be three integers 0..255") as err:
        T.cutout(_pattern(4, 2), np.zeros((2, 4), np.uint8), background=background)
    assert err.value.code == INTERNAL


def test_cutout_refuses_mismatched_mask() -> None:
    with _invalid("mask is 3x2, the image 4x2"):
        T.cutout(_pattern(4, 2), np.zeros((2, 3), np.uint8))


# --- encode_png ---------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["opencv", "pillow"])
@pytest.mark.parametrize(("shape", "mode"), [((5, 7), "L"), ((5, 7, 3), "RGB"), ((5, 7, 4), "RGBA")])
def test_encode_png_modes_round_trip(
    shape: tuple[int, ...], mode: str, writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenCV's libpng where the server's extra is installed, Pillow in a client-only install: same pixels.
    assert T._cv2 is not None, "the test venv has the server extra, hence OpenCV"
    if writer == "pillow":
        monkeypatch.setattr(T, "_cv2", None)
    array = np.random.default_rng(5).integers(0, 256, size=shape, dtype=np.uint8)
    data = T.encode_png(array)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == mode
        np.testing.assert_array_equal(np.asarray(im), array)


@pytest.mark.parametrize("writer", ["opencv", "pillow"])
def test_encode_png_fast_and_small_levels_round_trip(
    writer: str, reference_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fast levels write with a fixed filter and zlib's RLE strategy, higher ones with the defaults: the
    # smallest files of a photo.
    if writer == "pillow":
        monkeypatch.setattr(T, "_cv2", None)
    photo = np.asarray(Image.open(reference_dir / "images" / "0003.jpg").convert("RGB"))
    sizes = {}
    for level in (0, 1, T.FAST_PNG_LEVEL, T.FAST_PNG_LEVEL + 1, 9):
        data = T.encode_png(photo, level)
        sizes[level] = len(data)
        with Image.open(io.BytesIO(data)) as im:
            np.testing.assert_array_equal(np.asarray(im), photo)
    assert sizes[0] > sizes[1] and sizes[9] <= sizes[1]


def test_encode_png_accepts_views_and_levels() -> None:
    array = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    view = T.crop(array, T.Box(x=10, y=5, width=100, height=50))
    assert len(T.encode_png(view, 0)) > len(T.encode_png(view, 9))
    with Image.open(io.BytesIO(T.encode_png(view))) as im:
        np.testing.assert_array_equal(np.asarray(im), view)


def test_encode_png_refuses_bad_input() -> None:
    with _invalid("compression level must be 0..9"):
        T.encode_png(np.zeros((2, 2), np.uint8), 10)
    with _invalid("uint8 array"):
        T.encode_png(np.zeros((2, 2), np.float32))
    with _invalid("uint8 array"):
        T.encode_png(np.zeros((2, 2, 2), np.uint8))
