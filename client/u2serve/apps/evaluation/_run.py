"""Runs an evaluation: masks served through the SDK, or saliency maps read from a folder, streamed into the metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from u2net_client import MaskResult, U2NetClient, U2NetError
from u2serve.apps.evaluation._metrics import MetricAccumulator, Metrics
from u2serve.apps.evaluation._pairs import EvaluationInputError, Pair, read_mask

OnItem = Callable[[], None]


@dataclass(frozen=True)
class Evaluation:
    """One model's (or one folder's) result.

    Attributes:
        name: The label in the report: the served model's name, or the predictions folder's.
        source: Where the predictions came from, e.g. "served u2netp 1.0 (weights: ...)" or a folder.
        metrics: The figures.
        skipped: What was left out, "name: reason" (only with skip_unreadable).
        largest_batch: The most requests the server batched together with one of ours; None for a folder.
    """

    name: str
    source: str
    metrics: Metrics
    skipped: tuple[str, ...] = ()
    largest_batch: int | None = None


def evaluate_served(
    client: U2NetClient,
    pairs: Sequence[Pair],
    model: str,
    *,
    version: str | None = None,
    concurrency: int = 8,
    skip_unreadable: bool = False,
    save_dir: Path | None = None,
    on_item: OnItem | None = None,
) -> Evaluation:
    """Serves every pair's image through `client` and scores the masks against the ground truth.

    `concurrency` requests are in flight at once, so the server can batch them. Images the server
    refuses (INVALID_ARGUMENT) and undecodable ground truths are errors, or skipped with `skip_unreadable`;
    any other server error stops the run.

    Args:
        client: A connected client.
        pairs: From `pair_by_stem`, with the images as sources.
        model: The served model, e.g. "u2netp".
        version: Its version; None for the default.
        concurrency: Requests in flight.
        skip_unreadable: Leave unreadable items out (listed in `Evaluation.skipped`) instead of failing.
        save_dir: If given, each served mask is written there as <stem>.png, byte for byte as served.
        on_item: Called after each item (a progress bar).

    Raises:
        EvaluationInputError: Unreadable items without `skip_unreadable`, or nothing left to score.
        U2NetError: When the server fails otherwise (unreachable, unknown model, refused token).
    """
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    described: list[str] = []
    batches: list[int] = []

    def predictions() -> Iterator[tuple[Pair, np.ndarray | str]]:
        outcomes = client.map(lambda p: client.mask(p.source, model, version=version), pairs, concurrency=concurrency)
        try:
            for pair, outcome in zip(pairs, outcomes, strict=True):
                if isinstance(outcome, U2NetError):
                    if outcome.code != grpc.StatusCode.INVALID_ARGUMENT:
                        raise outcome
                    yield pair, f"{pair.source}: the server refused it ({outcome.message})"
                    continue
                if not described:
                    described.append(_describe(outcome))
                batches.append(outcome.batch_size)
                if save_dir is not None:
                    outcome.save(save_dir / f"{pair.stem}.png")
                yield pair, outcome.array
        finally:
            outcomes.close()  # stops what is still queued when the run stops early

    metrics, skipped = _score(predictions(), skip_unreadable, on_item)
    return Evaluation(model, described[0] if described else f"served {model}", metrics, skipped, max(batches))


def evaluate_folder(
    pairs: Sequence[Pair],
    name: str,
    *,
    skip_unreadable: bool = False,
    on_item: OnItem | None = None,
) -> Evaluation:
    """Scores saliency maps already on disk (the pairs' sources) against the ground truth; no server.

    Raises:
        EvaluationInputError: Undecodable files without `skip_unreadable`, or nothing left to score.
    """

    def predictions() -> Iterator[tuple[Pair, np.ndarray | str]]:
        for pair in pairs:
            try:
                yield pair, read_mask(pair.source)
            except EvaluationInputError as exc:
                yield pair, str(exc)

    folder = pairs[0].source.parent if pairs else Path()
    metrics, skipped = _score(predictions(), skip_unreadable, on_item)
    return Evaluation(name, f"saliency maps in {folder}", metrics, skipped)


def _score(
    items: Iterable[tuple[Pair, np.ndarray | str]], skip_unreadable: bool, on_item: OnItem | None
) -> tuple[Metrics, tuple[str, ...]]:
    """Feeds (pair, prediction or the reason it has none) to the metrics; returns them and what was skipped."""
    accumulator = MetricAccumulator()
    unreadable: list[str] = []
    for pair, prediction in items:
        if isinstance(prediction, str):
            unreadable.append(prediction)
        else:
            try:
                accumulator.add(prediction, read_mask(pair.ground_truth))
            except EvaluationInputError as exc:
                unreadable.append(str(exc))
        if on_item is not None:
            on_item()
    if unreadable and not skip_unreadable:
        raise EvaluationInputError(f"{len(unreadable)} unreadable (pass --skip-missing to leave them out)", unreadable)
    if not accumulator.images:
        raise EvaluationInputError("nothing left to evaluate: every item was unreadable", unreadable)
    return accumulator.result(), tuple(unreadable)


def _describe(result: MaskResult) -> str:
    return f"served {result.model} {result.model_version} (weights: {result.weights})"
