"""The paper's metrics (MAE, F-, weighted F-, S- and E-measure, PR curves), computed by PySODMetrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import py_sod_metrics as sod

BETA2 = 0.3  # β² of the F-measure: the paper's and the SOD literature's value
GT_THRESHOLD = 128  # PySODMetrics binarises the ground truth as gt > 128
# Metric keys in report order, with the labels the reports print.
LABELS: dict[str, str] = {
    "mae": "MAE",
    "max_f": "maxFβ",
    "mean_f": "meanFβ",
    "adaptive_f": "adpFβ",
    "weighted_f": "wFβ",
    "s_measure": "Sα",
    "max_e": "maxEφ",
    "mean_e": "meanEφ",
    "adaptive_e": "adpEφ",
}


@dataclass(frozen=True)
class Curves:
    """Means over the images at each threshold 0..255 (a pixel is foreground when its value >= threshold)."""

    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f_measure: tuple[float, ...]


@dataclass(frozen=True)
class Metrics:
    """One model's figures over a data set; every value is the mean over images, as PySODMetrics reports it.

    Attributes:
        images: How many pairs were evaluated.
        resized: How many predictions were resized to their ground truth's size (bilinear).
        mae: Mean absolute error, 0..1.
        max_f, mean_f, adaptive_f: F-measure (β² = 0.3): the maximum and mean over the 256 thresholds of the
            mean curve, and at each image's adaptive threshold (twice its mean saliency).
        weighted_f: Weighted F-measure (Margolin et al.), β = 1.
        s_measure: Structure measure (Fan et al.), α = 0.5.
        max_e, mean_e, adaptive_e: Enhanced-alignment measure (Fan et al.), like the F-measure's three.
        curves: Precision, recall and F-measure at each threshold.
    """

    images: int
    resized: int
    mae: float
    max_f: float
    mean_f: float
    adaptive_f: float
    weighted_f: float
    s_measure: float
    max_e: float
    mean_e: float
    adaptive_e: float
    curves: Curves

    def scalars(self) -> dict[str, float]:
        """The single-number metrics by key, in report order."""
        return {key: getattr(self, key) for key in LABELS}

    def to_dict(self) -> dict[str, object]:
        """Plain data for JSON."""
        return asdict(self)


def resize_to(prediction: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`prediction` at the ground truth's (H, W), bilinear, as the standard SOD evaluation code resizes it."""
    return cv2.resize(prediction, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


class MetricAccumulator:
    """Feeds (prediction, ground truth) pairs to PySODMetrics one at a time, so no data set is held in memory.

    Both arrays are uint8 (H, W). PySODMetrics min-max normalises each prediction to 0..1 and binarises the
    ground truth at 128, as the authors' MATLAB evaluation does.
    """

    def __init__(self) -> None:
        self._mae = sod.MAE()
        self._fm = sod.FmeasureV2(
            {
                "f": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=BETA2),
                "p": sod.PrecisionHandler(with_dynamic=True, with_adaptive=False),
                "r": sod.RecallHandler(with_dynamic=True, with_adaptive=False),
            }
        )
        self._wfm = sod.WeightedFmeasure()
        self._sm = sod.Smeasure()
        self._em = sod.Emeasure()
        self.images = 0
        self.resized = 0

    def add(self, prediction: np.ndarray, ground_truth: np.ndarray) -> None:
        """Adds one pair; a prediction of another size is resized to the ground truth's first."""
        if prediction.shape != ground_truth.shape:
            prediction = resize_to(prediction, ground_truth.shape)
            self.resized += 1
        for metric in (self._mae, self._fm, self._wfm, self._sm, self._em):
            metric.step(pred=prediction, gt=ground_truth)
        self.images += 1

    def result(self) -> Metrics:
        """The figures over every pair added so far.

        Raises:
            ValueError: When no pair was added.
        """
        if not self.images:
            raise ValueError("no pair was evaluated")
        fm = self._fm.get_results()
        em = self._em.get_results()["em"]
        # PySODMetrics orders the thresholds 255..0; ours run 0..255.
        f_curve, e_curve = fm["f"]["dynamic"][::-1], em["curve"]
        return Metrics(
            images=self.images,
            resized=self.resized,
            mae=float(self._mae.get_results()["mae"]),
            max_f=float(f_curve.max()),
            mean_f=float(f_curve.mean()),
            adaptive_f=float(fm["f"]["adaptive"]),
            weighted_f=float(self._wfm.get_results()["wfm"]),
            s_measure=float(self._sm.get_results()["sm"]),
            max_e=float(e_curve.max()),
            mean_e=float(e_curve.mean()),
            adaptive_e=float(em["adp"]),
            curves=Curves(
                precision=tuple(float(v) for v in fm["p"]["dynamic"][::-1]),
                recall=tuple(float(v) for v in fm["r"]["dynamic"][::-1]),
                f_measure=tuple(float(v) for v in f_curve),
            ),
        )
