"""Mask refinement: rembg's post-processing (OpenCV) and alpha matting (pymatting), as rembg does them.

Needs the server extra's OpenCV, SciPy and pymatting (`pip install "u2serve[server]"`); the SDK's base
install imports this module only when a tensor-path call asks for refine.

Matting's cost is bounded: the closed-form solve runs only on the box around the trimap's unknown band,
downscaled to at most MATTING_MAX_PIXELS, and its alpha and foreground colours are upsampled back into
that band; the sure regions keep 0 / 255 and the input's own colours.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from u2serve.core.errors import internal

# The most pixels the matting solve sees (the unknown band's box, downscaled): the closed-form solve's time
# grows faster than its pixels, so the cap bounds a request's cost whatever the input's size (make bench
# records it: BENCHMARKS.md, "Cutout options"). The served mask itself is upsampled from 320x320: at 0.5 MP
# the solve still sees its edges at a finer resolution than the network.
MATTING_MAX_PIXELS = 500_000
# Pixels of sure region kept around the unknown band's box, so the solve has known neighbours.
_MARGIN = 8


def _modules() -> tuple[Any, Any]:
    try:
        import cv2
        import pymatting
    except ImportError as exc:
        raise internal(
            f"refine needs OpenCV and pymatting ({exc.name} is missing): pip install 'u2serve[server]'"
        ) from exc
    return cv2, pymatting


def postprocess(mask: np.ndarray) -> np.ndarray:
    """rembg's post_process_mask: opening with a 3x3 ellipse, a 5x5 Gaussian blur with sigma 2, then
    255 where the blurred mask is >= 127, else 0 (a hard mask with smooth outlines, specks removed)."""
    cv2, _ = _modules()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    blurred = cv2.GaussianBlur(opened, (5, 5), sigmaX=2, sigmaY=2, borderType=cv2.BORDER_DEFAULT)
    return np.where(blurred < 127, 0, 255).astype(np.uint8)


def trimap(mask: np.ndarray, foreground_threshold: int, background_threshold: int, erode_size: int) -> np.ndarray:
    """rembg's trimap: 255 where mask > foreground_threshold, 0 where mask < background_threshold, each
    region eroded by an erode_size square (3x3 cross for 0), 128 elsewhere.

    rembg erodes with scipy's binary_erosion (sure foreground shrinks at the image border, sure background
    does not); OpenCV's erode with the same kernel, anchor and constant borders gives the same regions
    (tests/test_compose.py compares them), and is much faster on a large mask.
    """
    cv2, _ = _modules()
    if erode_size > 0:
        kernel = np.ones((erode_size, erode_size), dtype=np.uint8)
    else:
        kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))

    def erode(region: np.ndarray, border: int) -> np.ndarray:
        eroded = cv2.erode(region.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=border)
        return eroded.astype(bool)

    sure_fg = erode(mask > foreground_threshold, 0)
    sure_bg = erode(mask < background_threshold, 1)
    out = np.full(mask.shape, 128, dtype=np.uint8)
    out[sure_fg] = 255
    out[sure_bg] = 0
    return out


def matte(
    rgb: np.ndarray, mask: np.ndarray, foreground_threshold: int, background_threshold: int, erode_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Alpha matting from the mask's trimap, with the foreground colours estimated (decontaminated).

    Returns:
        (alpha HxW uint8, foreground HxWx3 uint8). Outside the trimap's unknown band the alpha is 0 or 255
        and the colours are the input's. A trimap without both sure regions has nothing to solve
        against: the mask and the input come back unchanged.
    """
    cv2, pymatting = _modules()
    tri = trimap(mask, foreground_threshold, background_threshold, erode_size)
    unknown = tri == 128
    if not unknown.any() or not (tri == 255).any() or not (tri == 0).any():
        return mask, rgb
    rows, cols = np.flatnonzero(unknown.any(axis=1)), np.flatnonzero(unknown.any(axis=0))
    top, bottom = max(0, rows[0] - _MARGIN), min(mask.shape[0], rows[-1] + 1 + _MARGIN)
    left, right = max(0, cols[0] - _MARGIN), min(mask.shape[1], cols[-1] + 1 + _MARGIN)
    box_rgb, box_tri = rgb[top:bottom, left:right], tri[top:bottom, left:right]
    height, width = box_tri.shape
    scale = min(1.0, math.sqrt(MATTING_MAX_PIXELS / (height * width)))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    if scale < 1.0:
        box_rgb_s = cv2.resize(box_rgb, small, interpolation=cv2.INTER_AREA)
        box_tri_s = cv2.resize(box_tri, small, interpolation=cv2.INTER_NEAREST)
    else:
        box_rgb_s, box_tri_s = box_rgb, box_tri
    if not (box_tri_s == 255).any() or not (box_tri_s == 0).any():
        return mask, rgb
    image = box_rgb_s.astype(np.float64) / 255.0
    alpha = pymatting.estimate_alpha_cf(image, box_tri_s.astype(np.float64) / 255.0)
    foreground = pymatting.estimate_foreground_ml(image, alpha)
    if scale < 1.0:
        alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        foreground = cv2.resize(foreground, (width, height), interpolation=cv2.INTER_LINEAR)
    band = unknown[top:bottom, left:right]
    out_alpha = tri.copy()
    out_fg = rgb.copy()
    out_alpha[top:bottom, left:right][band] = np.clip(np.rint(alpha[band] * 255.0), 0, 255).astype(np.uint8)
    out_fg[top:bottom, left:right][band] = np.clip(np.rint(foreground[band] * 255.0), 0, 255).astype(np.uint8)
    return out_alpha, out_fg
