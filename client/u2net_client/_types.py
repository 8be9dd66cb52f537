"""Typed results: masks and cutouts as images or arrays, models as ModelInfo."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

from u2serve.core.types import Box

__all__ = ["Box", "CutoutResult", "MaskResult", "ModelInfo", "WorkerInfo"]


@dataclass(frozen=True)
class _Result:
    png: bytes = field(repr=False)
    model: str
    model_version: str
    weights: str
    input_size: tuple[int, int]
    box: Box | None
    timings: Mapping[str, float] = field(repr=False)
    batch_size: int
    media_type: str = "image/png"

    @property
    def data(self) -> bytes:
        """The encoded image as the server returned it (PNG, WebP or JPEG: see `media_type`)."""
        return self.png

    @cached_property
    def image(self) -> Image.Image:
        """The result as a PIL image (decoded on first use)."""
        im = Image.open(io.BytesIO(self.png))
        im.load()
        return im

    @property
    def array(self) -> np.ndarray:
        """The result as a numpy uint8 array: (H, W) for a mask, (H, W, 3 or 4) for a cutout."""
        return np.asarray(self.image)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the returned image; smaller than `input_size` when cropped."""
        return self.image.size

    @property
    def extension(self) -> str:
        """The file name extension of `media_type`: ".png", ".webp" or ".jpg"."""
        return {"image/webp": ".webp", "image/jpeg": ".jpg"}.get(self.media_type, ".png")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file the server returned (PNG, WebP or JPEG), byte for byte."""
        with open(path, "wb") as f:
            f.write(self.png)


@dataclass(frozen=True)
class MaskResult(_Result):
    """A saliency mask.

    Attributes:
        png: The encoded bytes the server returned (PNG unless output_format said otherwise).
        media_type: What `png` holds: "image/png", "image/webp" or "image/jpeg".
        image: The mask as a PIL image, mode "L", the size of the input as displayed (EXIF applied),
            or of the box when cropped.
        array: The mask as a numpy uint8 array of shape (height, width).
        model: The model that answered, e.g. "u2netp".
        model_version: Its version, e.g. "1.0".
        weights: Where the model's weights came from, e.g. "random (seed 0)".
        input_size: (width, height) of the input as displayed.
        box: The salient object's bounding box, None when nothing is salient.
        timings: Server-side milliseconds per stage: decode, preprocess, inference, postprocess, encode.
        batch_size: How many requests the server batched together with this one.
    """

    @cached_property
    def image(self) -> Image.Image:
        """The mask as a PIL image, mode "L" (WebP has no grey mode: its RGB is taken back to "L")."""
        im = Image.open(io.BytesIO(self.png))
        im.load()
        return im if im.mode == "L" else im.convert("L")


@dataclass(frozen=True)
class CutoutResult(_Result):
    """A cutout: the input with the mask as alpha (RGBA), or composited over a background or effect (RGB).

    Attributes:
        png: The encoded bytes the server returned (PNG unless output_format said otherwise).
        media_type: What `png` holds: "image/png", "image/webp" or "image/jpeg".
        image: The cutout as a PIL image, mode "RGBA", or "RGB" over a background colour, an opaque
            background image or an effect.
        array: The cutout as a numpy uint8 array of shape (height, width, 4 or 3).
        model: The model that answered, e.g. "u2netp".
        model_version: Its version, e.g. "1.0".
        weights: Where the model's weights came from.
        input_size: (width, height) of the input as displayed.
        box: The salient object's bounding box, None when nothing is salient.
        timings: Server-side milliseconds per stage.
        batch_size: How many requests the server batched together with this one.
    """


@dataclass(frozen=True)
class WorkerInfo:
    """One TorchServe worker process of a model."""

    id: str
    status: str
    pid: int | None
    memory_bytes: int
    gpu: bool


@dataclass(frozen=True)
class ModelInfo:
    """A model as the management API describes it.

    Attributes:
        name: The model's name, used as `model=` in requests.
        version: The model's version.
        url: The archive it was loaded from.
        workers: The worker processes; `ready_workers` counts the ones serving.
        min_workers: The lower bound set by `scale`.
        max_workers: The upper bound set by `scale`.
        batch_size: The most requests TorchServe batches into one handler call.
        max_batch_delay_ms: How long TorchServe waits to fill a batch.
        weights: Where the weights came from (e.g. "random (seed 0)"); None if the handler did not say.
        weights_random: True when the weights are a random stand-in, not trained ones.
        variant: The architecture, "u2net" or "u2netp"; None if the handler did not say.
        device: Where the model runs, e.g. "cpu" or "cuda:0".
        max_pixels: The largest input (width * height) the model accepts.
        engine: The runtime the worker actually loaded ("torchscript-bf16", "onnxruntime", "torchscript"),
            after any fallback; None if the handler did not say.
    """

    name: str
    version: str
    url: str
    workers: tuple[WorkerInfo, ...]
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay_ms: int
    weights: str | None = None
    weights_random: bool | None = None
    variant: str | None = None
    device: str | None = None
    max_pixels: int | None = None
    engine: str | None = None

    @property
    def ready_workers(self) -> int:
        """How many workers are READY."""
        return sum(w.status == "READY" for w in self.workers)
