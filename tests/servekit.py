"""Test helpers: raw gRPC/REST calls to a TorchServe and images that exercise the decoder.

The serve tests speak TorchServe's generated stubs directly (not the SDK), so they check the
server's contract on their own.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from u2net_client._generated import inference_pb2, inference_pb2_grpc, u2serve_pb2

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
