"""The serving pipeline over a batch: decode, one tensor batch through the model, compose, encode.

Free of TorchServe and of any protocol: `Segmenter.run` takes requests (or the error each row already
got) and returns one `Outcome` per request, in order. A bad image fails its own request only. The
pixel work is u2serve.core.imaging's, the one pipeline the SDK's tensor path runs too; what is left
here is torch's: the batch on the device, through the model.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from handler.model import Variant
from u2serve.core import compose, imaging
from u2serve.core.errors import Code, CoreError
from u2serve.core.options import Options
from u2serve.core.types import Box

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")


class Task(enum.IntEnum):
    """u2serve.v1.Task's numbers."""

    MASK = 1
    CUTOUT = 2


@dataclass(frozen=True)
class SegmentRequest:
    """One request, whatever protocol it came in (handler.codec): options already checked."""

    task: Task
    image: bytes
    options: Options = field(default_factory=Options)


def model_input(images: Sequence[np.ndarray], variant: Variant, device: torch.device | str = "cpu") -> torch.Tensor:
    """The variant's (N, 3, S, S) input batch of HxWx3 uint8 images (imaging.preprocess), on `device`."""
    pixels = imaging.preprocess(images, variant.input_size, variant.mean, variant.std)
    return torch.from_numpy(pixels).to(device)


def masks_from_d0(d0: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """8-bit masks at each (width, height) from the network's d0, on any device or dtype (imaging.masks_from_output)."""
    return imaging.masks_from_output(d0.to(torch.float32).cpu().numpy(), sizes)


def internal_error(exc: BaseException) -> CoreError:
    return CoreError(Code.INTERNAL, f"internal error while serving the request: {type(exc).__name__}: {exc}")


@dataclass
class Outcome:
    """What one request produced: an encoded image with its metadata, or an error."""

    request: SegmentRequest | None
    error: CoreError | None = None
    image: bytes = b""
    media_type: str = "image/png"
    width: int = 0
    height: int = 0
    output_size: tuple[int, int] = (0, 0)
    box: Box | None = None
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
    # Each decoded request with its image and its background image (None without one).
    decoded: list[tuple[Outcome, imaging.Decoded, imaging.Decoded | None]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)


@contextmanager
def _own_failure(out: Outcome, stage: str) -> Iterator[None]:
    """A failure of one request in `stage` becomes that request's error, its batch-mates unaffected: the
    core's code for a CoreError (the caller's fault or ours, as it says), INTERNAL for anything else."""
    try:
        yield
    except CoreError as exc:
        out.error = exc
    except Exception as exc:  # a decoder or compose bug must fail this request only
        log.exception("%s failed unexpectedly", stage)
        out.error = internal_error(exc)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


class Segmenter:
    """Runs a traced U²-Net over batches of requests on one device.

    With `threads` > 1 the requests of a batch are decoded, and composed and encoded, on that many threads
    (Pillow, OpenCV, zlib and numpy's large operations release the GIL): between two model calls the worker
    would otherwise use one core of the several its inference runs on.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        variant: Variant,
        device: torch.device,
        max_pixels: int,
        png_compression: int = 1,
        threads: int = 1,
    ) -> None:
        self.model = model
        self.variant = variant
        self.device = device
        self.max_pixels = max_pixels
        self.png_compression = png_compression
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="u2serve-pixels") if threads > 1 else None

    def _each(self, fn: Callable[..., object], *items: Sequence[object]) -> list[object]:
        """fn over the items, in order: on the pool when there is one and more than one item."""
        if self._pool is None or len(items[0]) < 2:
            return [fn(*args) for args in zip(*items, strict=True)]
        return list(self._pool.map(fn, *items))

    def run(self, items: Sequence[SegmentRequest | CoreError]) -> tuple[list[Outcome], BatchStats]:
        """All three stages over one batch; one Outcome per item, in order."""
        return self.compose(self.infer(self.decode(items)))

    def decode(self, items: Sequence[SegmentRequest | CoreError]) -> Batch:
        """Stage 1: decode each image; a bad one becomes its request's error."""
        batch = Batch([Outcome(None, error=i) if isinstance(i, CoreError) else Outcome(i) for i in items])
        pending = [out for out in batch.outcomes if out.request is not None]
        decoded = self._each(self._decode, pending)
        batch.decoded = [(out, *images) for out, images in zip(pending, decoded, strict=True) if images is not None]
        return batch

    def _decode(self, out: Outcome) -> tuple[imaging.Decoded, imaging.Decoded | None] | None:
        """One request's image and background image; None (and the request's error set) when it fails."""
        assert out.request is not None
        with _own_failure(out, "decode"), _timed(out.timings_ms, "decode"):
            image = imaging.decode_image(out.request.image, self.max_pixels)
            background = self._decode_background(out.request.options)
            out.width, out.height = image.size
            return image, background
        return None

    def _decode_background(self, options: Options) -> imaging.Decoded | None:
        """The request's background image, under the input's limits; its faults name it."""
        if (background := compose.decode_background(options, self.max_pixels)) is not None:
            compose.check_background(background, options)
        return background

    def infer(self, batch: Batch) -> Batch:
        """Stage 2: every decoded image of the batch through the model as one tensor batch.

        A failure here is ours (the engine, the device), never the caller's: each request of the batch
        gets INTERNAL with what went wrong, and the worker keeps serving.
        """
        if not batch.decoded:
            return batch
        try:
            batch.masks = self._masks([image for _, image, _ in batch.decoded], batch.timings_ms)
        except Exception as exc:
            log.exception("the model failed on a batch of %d", len(batch.decoded))
            error = exc if isinstance(exc, CoreError) else internal_error(exc)
            for out, _, _ in batch.decoded:
                out.error = CoreError(Code.INTERNAL, error.message)
            batch.decoded = []
        return batch

    def compose(self, batch: Batch) -> tuple[list[Outcome], BatchStats]:
        """Stage 3: per request, refine / threshold / cutout / crop / background, and encode."""
        shared = batch.timings_ms
        for out, _, _ in batch.decoded:
            out.timings_ms["preprocess"] = shared["preprocess"]
            out.timings_ms["inference"] = shared["inference"]
            out.timings_ms["postprocess"] = shared["postprocess"] / len(batch.decoded)
        self._each(self._compose_one, batch.decoded, batch.masks)
        totals = dict(shared)
        for stage in ("decode", "encode"):
            totals[stage] = sum(o.timings_ms.get(stage, 0.0) for o in batch.outcomes)
        return batch.outcomes, BatchStats(len(batch.outcomes), len(batch.decoded), totals)

    def _masks(self, images: list[imaging.Decoded], timings: dict[str, float]) -> list[np.ndarray]:
        with _timed(timings, "preprocess"):
            batch = model_input([d.rgb for d in images], self.variant, self.device)
        with _timed(timings, "inference"), torch.inference_mode():
            d0 = self.model(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        with _timed(timings, "postprocess"):
            return masks_from_d0(d0, [d.size for d in images])

    def _compose_one(self, decoded: tuple[Outcome, imaging.Decoded, imaging.Decoded | None], mask: np.ndarray) -> None:
        """One request's compose and encode; a failure becomes its own error."""
        out, image, background = decoded
        with _own_failure(out, "compose"):
            self._compose(out, image, mask, background)

    def _compose(
        self, out: Outcome, image: imaging.Decoded, mask: np.ndarray, background: imaging.Decoded | None
    ) -> None:
        req = out.request
        assert req is not None
        opts = req.options
        with _timed(out.timings_ms, "postprocess"):
            result, out.box = compose.compose(image, mask, req.task == Task.MASK, opts, background)
        with _timed(out.timings_ms, "encode"):
            out.image = compose.encode(result, opts, self.png_compression)
        out.media_type = opts.media_type
        out.output_size = (result.shape[1], result.shape[0])
