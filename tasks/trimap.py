"""Trimap: a person probability map → 0 (background) / 128 (unknown) / 255 (foreground).

The unknown band is where the mask edge might be wrong; KNN matting later solves only there.
Its width scales with the image by default, because a fixed pixel width is too thin on a 12 MP
photo and swallows the person on a thumbnail.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from matteforge.tasks.morphology import binary_morphology

KernelShape = Literal["ellipse", "rect", "cross"]
_SHAPES = {"ellipse": cv2.MORPH_ELLIPSE, "rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS}

BACKGROUND, UNKNOWN, FOREGROUND = 0, 128, 255


def band_width(
    height: int, width: int, *, fixed: int | None = None, fraction: float = 0.01, minimum: int = 3
) -> int:
    """Half-width of the unknown band in pixels: ``fixed`` or ``fraction`` of the longer side."""
    if fixed is not None:
        return int(fixed)
    return max(int(minimum), round(fraction * max(height, width)))


def structuring_element(shape: KernelShape, half_width: int) -> np.ndarray:
    if shape not in _SHAPES:
        raise ValueError(f"kernel shape must be one of {sorted(_SHAPES)}, got {shape!r}")
    size = 2 * int(half_width) + 1
    return cv2.getStructuringElement(_SHAPES[shape], (size, size))


def binarize(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Person mask as uint8 0/255 (the form OpenCV morphology and PNG files want)."""
    return np.where(np.asarray(probability) >= threshold, 255, 0).astype(np.uint8)


def make_trimap(
    probability: np.ndarray,
    *,
    threshold: float = 0.5,
    kernel_shape: KernelShape = "ellipse",
    half_width: int = 5,
) -> np.ndarray:
    """Erode the mask for sure-foreground, dilate it for sure-background, the rest is unknown.

    ``probability`` may be a float map in [0, 1] or an already binary uint8 0/255 mask
    (uint8 input is rescaled to [0, 1] first).
    """
    prob = np.asarray(probability)
    if prob.ndim != 2:
        raise ValueError(f"expected an HxW map, got shape {prob.shape}")
    if prob.dtype == np.uint8:
        prob = prob.astype(np.float32) / 255.0
    mask = binarize(prob, threshold)
    kernel = structuring_element(kernel_shape, half_width)
    sure_fg = binary_morphology(mask, kernel, "erode", "replicate") == 255
    maybe_fg = binary_morphology(mask, kernel, "dilate", "replicate") == 255
    trimap = np.full(mask.shape, UNKNOWN, dtype=np.uint8)
    trimap[sure_fg] = FOREGROUND
    trimap[~maybe_fg] = BACKGROUND
    return trimap


def unknown_fraction(trimap: np.ndarray) -> float:
    return float(np.count_nonzero(trimap == UNKNOWN)) / max(1, trimap.size)


def settle_confident(trimap: np.ndarray, maps: list[np.ndarray], margin: float) -> np.ndarray:
    """Unknown pixels that every map calls with confidence become known.

    A band pixel where all models are within ``margin`` of 1 is foreground, within ``margin`` of
    0 background; what stays unknown is where a model is unsure or the models disagree. The
    band's width still bounds how far the models' edge may be moved; this only keeps the solve
    from second-guessing pixels no model doubts.
    """
    settled = trimap.copy()
    unknown = settled == UNKNOWN
    sure_fg = unknown.copy()
    sure_bg = unknown.copy()
    for m in maps:
        p = np.asarray(m, dtype=np.float32)
        if p.shape != trimap.shape:
            raise ValueError(f"map shape {p.shape} does not match the trimap {trimap.shape}")
        sure_fg &= p >= 1.0 - margin
        sure_bg &= p <= margin
    settled[sure_fg] = FOREGROUND
    settled[sure_bg] = BACKGROUND
    return settled
