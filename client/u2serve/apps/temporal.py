"""Temporal stability of a video's masks: scene cuts, smoothing over time, and the flicker figure.

Pure numpy on the small frames and masks the video pipeline already has (the model's 320×320 input
and output), so none of it costs a full-resolution pass.
"""

from __future__ import annotations

import numpy as np

# Mean absolute change (0..1) of the downsampled grey frame above which a frame starts a new scene.
# A still subject with sensor noise, or a subject moving across a background, changes it by well under
# this; a cut between two shots by well over it (tests/test_video.py: noise is no cut, a new shot is).
# A false cut costs one unsmoothed frame.
SCENE_CUT = 0.10
# Side of the grey thumbnail the scene-cut test compares (averaging removes most per-pixel noise).
_THUMB = 40
# How much of the previous smoothed mask a pixel keeps (0 = no smoothing) by default.
DEFAULT_SMOOTH = 0.6
# A pixel whose mask changes by this much (0..1) or more is moving, not flickering: it follows the
# new mask at once, so smoothing never drags a trail behind a moving subject.
_MOTION = 0.3


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A small grey float32 (0..1) version of an HxWx3 uint8 frame, for the scene-cut test."""
    grey = frame.astype(np.float32).mean(axis=2) / np.float32(255)
    height, width = grey.shape
    rows = np.linspace(0, height, _THUMB + 1).astype(int)
    cols = np.linspace(0, width, _THUMB + 1).astype(int)
    # Block means through cumulative sums: one pass, any frame size >= 1x1.
    summed = np.add.reduceat(np.add.reduceat(grey, rows[:-1], axis=0), cols[:-1], axis=1)
    counts = np.outer(np.diff(rows), np.diff(cols)).clip(min=1)
    return (summed / counts).astype(np.float32)


def is_scene_cut(previous: np.ndarray | None, current: np.ndarray, threshold: float = SCENE_CUT) -> bool:
    """Whether `current` (a thumbnail) starts a new scene after `previous`; the first frame always does."""
    return previous is None or float(np.abs(current - previous).mean()) > threshold


class MaskSmoother:
    """Edge-preserving exponential smoothing of a mask over time, reset at scene cuts.

    Each pixel keeps `strength` of its previous smoothed value where the mask changes little
    (flicker), less as the change grows, and none from a change of 0.3 (motion).

    Args:
        strength: 0 (off) to below 1.

    Raises:
        ValueError: For a strength outside [0, 1).
    """

    def __init__(self, strength: float = DEFAULT_SMOOTH) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"smoothing strength {strength!r}; accepted: 0 (off) up to, not including, 1")
        self.strength = float(strength)
        self._state: np.ndarray | None = None

    def __call__(self, mask: np.ndarray, scene_cut: bool) -> np.ndarray:
        """The smoothed HxW uint8 mask for this frame; at a scene cut, the mask itself."""
        current = mask.astype(np.float32) / np.float32(255)
        if self._state is None or scene_cut or self._state.shape != current.shape:
            self._state = current
            return mask
        keep = self.strength * np.clip(1.0 - np.abs(current - self._state) / _MOTION, 0.0, 1.0)
        self._state = keep * self._state + (1.0 - keep) * current
        return np.clip(np.rint(self._state * 255), 0, 255).astype(np.uint8)


class Flicker:
    """The flicker figure: the mean absolute frame-to-frame change of the mask (0..1), over every pair
    of consecutive frames within one scene (pairs across a scene cut do not count)."""

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None
        self._total = 0.0
        self._pairs = 0

    def add(self, mask: np.ndarray, scene_cut: bool) -> None:
        """Counts this frame's HxW uint8 mask."""
        current = mask.astype(np.float32) / np.float32(255)
        if self._previous is not None and not scene_cut and self._previous.shape == current.shape:
            self._total += float(np.abs(current - self._previous).mean())
            self._pairs += 1
        self._previous = current

    @property
    def value(self) -> float | None:
        """The figure; None until two frames of one scene have been seen."""
        return self._total / self._pairs if self._pairs else None
