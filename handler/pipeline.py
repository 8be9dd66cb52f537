"""The serving pipeline over a batch: decode, one tensor batch through the model, compose, encode.

Free of TorchServe: `Segmenter.run` takes parsed requests (or the error each row already got)
and returns one `Outcome` per request, in order. A bad image fails its own request only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from handler import transforms as T
from handler.errors import U2ServeError
from handler.model import Variant
from handler.requests import SegmentRequest, Task, internal_error

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")


@dataclass
class Outcome:
    """What one request produced: an encoded image with its metadata, or an error."""

    request: SegmentRequest | None
    error: U2ServeError | None = None
    png: bytes = b""
    width: int = 0
    height: int = 0
    output_size: tuple[int, int] = (0, 0)
    box: T.Box | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchStats:
    requests: int  # rows TorchServe batched together
    images: int  # of which decoded and run through the model together
    timings_ms: dict[str, float]


@dataclass
class Batch:
    """A batch between stages."""

    outcomes: list[Outcome]
    decoded: list[tuple[Outcome, T.Decoded]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


class Segmenter:
    """Runs a traced U²-Net over batches of requests on one device."""

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        variant: Variant,
        device: torch.device,
        max_pixels: int,
        png_compression: int = 1,
    ) -> None:
        self.model = model
        self.variant = variant
        self.device = device
        self.max_pixels = max_pixels
        self.png_compression = png_compression

    def run(self, items: Sequence[SegmentRequest | U2ServeError]) -> tuple[list[Outcome], BatchStats]:
        """All three stages over one batch; one Outcome per item, in order."""
        return self.compose(self.infer(self.decode(items)))

    def decode(self, items: Sequence[SegmentRequest | U2ServeError]) -> Batch:
        """Stage 1: decode each image; a bad one becomes its request's error."""
        batch = Batch([Outcome(None, error=i) if isinstance(i, U2ServeError) else Outcome(i) for i in items])
        for out in batch.outcomes:
            if out.request is None:
                continue
            try:
                with _timed(out.timings_ms, "decode"):
                    image = T.decode_image(out.request.image, self.max_pixels)
            except U2ServeError as exc:
                out.error = exc
                continue
            except Exception as exc:  # a decoder bug must fail this request only, not its batch-mates
                log.exception("decode failed unexpectedly")
                out.error = internal_error(exc)
                continue
            out.width, out.height = image.size
            batch.decoded.append((out, image))
        return batch

    def infer(self, batch: Batch) -> Batch:
        """Stage 2: every decoded image of the batch through the model as one tensor batch."""
        if batch.decoded:
            batch.masks = self._masks([d for _, d in batch.decoded], batch.timings_ms)
        return batch

    def compose(self, batch: Batch) -> tuple[list[Outcome], BatchStats]:
        """Stage 3: per request, threshold / cutout / crop and PNG-encode."""
        shared = batch.timings_ms
        for (out, image), mask in zip(batch.decoded, batch.masks, strict=True):
            out.timings_ms["preprocess"] = shared["preprocess"]
            out.timings_ms["inference"] = shared["inference"]
            out.timings_ms["postprocess"] = shared["postprocess"] / len(batch.decoded)
            try:
                self._compose(out, image, mask)
            except U2ServeError as exc:
                out.error = exc
            except Exception as exc:  # as in decode: one request's failure stays its own
                log.exception("compose failed unexpectedly")
                out.error = internal_error(exc)
        totals = dict(shared)
        for stage in ("decode", "encode"):
            totals[stage] = sum(o.timings_ms.get(stage, 0.0) for o in batch.outcomes)
        return batch.outcomes, BatchStats(len(batch.outcomes), len(batch.decoded), totals)

    def _masks(self, images: list[T.Decoded], timings: dict[str, float]) -> list[np.ndarray]:
        v = self.variant
        with _timed(timings, "preprocess"):
            batch = T.preprocess([d.rgb for d in images], v.input_size, v.mean, v.std, self.device)
        with _timed(timings, "inference"), torch.inference_mode():
            d0 = self.model(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        with _timed(timings, "postprocess"):
            return T.masks_from_output(d0, [d.size for d in images])

    def _compose(self, out: Outcome, image: T.Decoded, mask: np.ndarray) -> None:
        req = out.request
        assert req is not None
        opts = req.options
        with _timed(out.timings_ms, "postprocess"):
            out.box = T.bounding_box(mask, opts.box_threshold)
            if opts.threshold is not None:
                mask = T.apply_threshold(mask, opts.threshold)
            result = mask if req.task == Task.MASK else T.cutout(image.rgb, mask, image.alpha, opts.background)
            if opts.crop and out.box is not None:
                result = T.crop(result, T.expand_box(out.box, opts.crop_margin, out.width, out.height))
        with _timed(out.timings_ms, "encode"):
            level = self.png_compression if opts.png_compression is None else opts.png_compression
            out.png = T.encode_png(result, level)
        out.output_size = (result.shape[1], result.shape[0])
