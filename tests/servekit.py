"""Test helpers: raw gRPC/REST calls to a TorchServe and images that exercise the decoder.

The serve tests speak TorchServe's generated stubs directly (not the SDK), so they check the
server's contract on their own.
"""

from __future__ import annotations

import io
import json
import random
import struct
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from u2serve.core._generated import inference_pb2, inference_pb2_grpc, u2serve_pb2

MAX_MESSAGE = 64 * 1024 * 1024
MASK = u2serve_pb2.MASK
CUTOUT = u2serve_pb2.CUTOUT


@dataclass
class Raw:
    """A raw gRPC connection to a test server's inference API."""

    target: str
    token: str

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            self.target,
            options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
        )
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)

    def segment(
        self, image: bytes, model: str = "u2netp", task: int = MASK, timeout: float = 120.0, **options: object
    ) -> u2serve_pb2.SegmentResponse:
        req = u2serve_pb2.SegmentRequest(task=task, image=image, options=u2serve_pb2.Options(**options))
        reply = self.stub.Predictions(
            inference_pb2.PredictionsRequest(model_name=model, input={"u2serve": req.SerializeToString()}),
            metadata=[("authorization", f"Bearer {self.token}")],
            timeout=timeout,
        )
        return u2serve_pb2.SegmentResponse.FromString(reply.prediction)

    def predict(self, payload: bytes, model: str = "u2netp", timeout: float = 120.0) -> u2serve_pb2.SegmentResponse:
        """Any bytes as the SegmentRequest payload, to see what the server makes of them."""
        reply = self.stub.Predictions(
            inference_pb2.PredictionsRequest(model_name=model, input={"u2serve": payload}),
            metadata=[("authorization", f"Bearer {self.token}")],
            timeout=timeout,
        )
        return u2serve_pb2.SegmentResponse.FromString(reply.prediction)

    def segment_many(self, images: list[bytes], model: str = "u2netp", task: int = MASK, **options: object):
        """All at once from threads, so that TorchServe batches them; replies in input order."""
        with ThreadPoolExecutor(max_workers=len(images)) as pool:
            futures = [pool.submit(self.segment, im, model, task, **options) for im in images]
            return [f.result() for f in futures]

    def close(self) -> None:
        self.channel.close()


def decode_png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return im


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)


def rest(port: int, model: str, body: bytes, token: str, headers: dict[str, str] | None = None):
    """PUT the raw image like `curl -T`; returns (status, content type, body)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/predictions/{model}",
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def rest_json(body: bytes) -> dict:
    return json.loads(body)


# ---- images ------------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(reference_dir: Path, name: str = "bike.jpg") -> bytes:
    return (reference_dir / "images" / name).read_bytes()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (one IDAT of a few zero rows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def sixteen_bit_png() -> bytes:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(gradient()).convert("CMYK"), "JPEG")


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((40, 60, 3), c, np.uint8)) for c in (30, 200, 90)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def palette_png_with_transparency() -> bytes:
    im = Image.fromarray(gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", transparency=0)


# ---- hostile and mutated images ----------------------------------------------------------------


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to declare width x height."""
    data = bytearray(encode(Image.fromarray(gradient(16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    # SOF0: marker, length (2), precision (1), height (2), width (2), ...
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def tiff(entries: list[tuple[int, int, int, int]], next_ifd: int = 0, tail: bytes = b"") -> bytes:
    """A little-endian TIFF with one IFD at offset 8 holding `entries` (tag, type, count, value)."""
    ifd = len(entries).to_bytes(2, "little")
    ifd += b"".join(struct.pack("<HHII", *entry) for entry in entries)
    return b"II*\x00" + (8).to_bytes(4, "little") + ifd + next_ifd.to_bytes(4, "little") + tail


def _tiny_gray_tiff(extra: list[tuple[int, int, int, int]], next_ifd: int = 0, side: int = 4) -> bytes:
    """A valid 4x4 grayscale TIFF (16 pixel bytes), its IFD extended by `extra` and chained to `next_ifd`."""
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    entries += [(277, 3, 1, 1), (279, 4, 1, 16), *extra]
    pixels_at = 8 + 2 + 12 * (len(entries) + 1) + 4
    return tiff([*entries, (273, 4, 1, pixels_at)], next_ifd, b"\x80" * 16)


def hostile_tiffs() -> dict[str, bytes]:
    """TIFFs whose IFDs loop, nest into themselves, or claim absurd counts and sizes."""
    header = b"II*\x00" + (8).to_bytes(4, "little")
    return {
        "IFD chain loops to itself": _tiny_gray_tiff([], next_ifd=8),
        "EXIF IFD points to itself": _tiny_gray_tiff([(34665, 4, 1, 8)]),
        "GPS IFD points to itself": _tiny_gray_tiff([(34853, 4, 1, 8)]),
        "SubIFD points to itself": _tiny_gray_tiff([(330, 4, 1, 8)]),
        "65535 entries of 2^30 offsets claimed": header
        + (0xFFFF).to_bytes(2, "little")
        + struct.pack("<HHII", 273, 4, 0x3FFFFFFF, 8) * 3,
        "65000x65000 declared": _tiny_gray_tiff([], side=65000),
        "garbage after the header": header + bytes(range(256)) * 4,
    }


def seed_images() -> dict[str, bytes]:
    """Small valid files of every accepted format and their common variants: what the fuzzers mutate."""
    rgb = Image.fromarray(gradient(24, 16))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(gradient(24, 16)[..., 0]))
    return {
        "jpeg": encode(rgb, "JPEG", quality=80),
        "progressive jpeg": encode(rgb, "JPEG", progressive=True),
        "png": encode(rgb, "PNG"),
        "rgba png": encode(rgba, "PNG"),
        "palette png": palette_png_with_transparency(),
        "gif": animated_gif(),
        "tiff": encode(rgb, "TIFF"),
        "deflate tiff": encode(rgba, "TIFF", compression="tiff_deflate"),
        "webp": encode(rgb, "WEBP", quality=80),
        "lossless webp": encode(rgba, "WEBP", lossless=True),
        "bmp": encode(rgb, "BMP"),
    }


EDITS = ("flip", "set", "insert", "delete", "truncate")


def edit(data: bytes, kind: str, where: float, value: int) -> bytes:
    """One edit at the relative position `where` (0..1, squared so headers are hit most)."""
    out = bytearray(data)
    pos = min(int(where * where * len(out)), max(len(out) - 1, 0))
    if kind == "truncate":
        return bytes(out[:pos])
    if kind == "insert":
        out[pos:pos] = bytes([value & 0xFF]) * (1 + value % 16)
    elif kind == "delete":
        del out[pos : pos + 1 + value % 16]
    elif out and kind == "flip":
        out[pos] ^= 1 << (value % 8)
    elif out and kind == "set":
        out[pos] = value & 0xFF
    return bytes(out)


def mutate(data: bytes, rng: random.Random, edits: int) -> bytes:
    """`edits` random edits of `data`, reproducible from `rng`'s seed."""
    for _ in range(edits):
        data = edit(data, rng.choice(EDITS), rng.random(), rng.randrange(256))
    return data
