"""Dilation and erosion of a binary mask by a disk-like kernel in time that does not grow with it.

The trimap's band and the quality ring dilate a portrait's mask by an ellipse kernel whose
radius grows with the image (1 % and 2 % of the long side). OpenCV's cost grows with the
kernel: at 12 MP, 1.0 s per call at radius 46 and 3.3 s at radius 92 (one thread), 4.2 s of
every 12 MP portrait. :func:`binary_morphology` gives the same bytes from one exact Euclidean
distance transform instead:

* a pixel within the largest disk inside the kernel of an "on" pixel is on;
* one farther than the kernel's farthest offset from every on pixel is off;
* the thin shell between is decided by the few kernel offsets outside that disk (for OpenCV's
  ellipse, at most two per kernel row), looked up for the shell's pixels only.

Small kernels, and kernels far from a disk (a rectangle: its corners are a fifth of it), go to
OpenCV, which is the faster there. The distance transform costs the same at any radius (22 ms
per MP, one thread); OpenCV's ellipse costs 5 ms per MP at radius 12, 21 at 24, 39 at 32 and 84
at 48 — the same crossover at 1 and 12 MP.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

Operation = Literal["dilate", "erode"]
# "replicate": pixels past the edge repeat the edge (cv2.BORDER_REPLICATE); "ignore": they take
# no part (OpenCV's default border for dilate and erode).
Border = Literal["replicate", "ignore"]
_CV_OPS = {"dilate": cv2.dilate, "erode": cv2.erode}
# The distance path looks up each offset outside the kernel's inscribed disk for every shell
# pixel; past this many per kernel side it is no longer the cheaper one.
MAX_OUTER_PER_SIDE = 4
# Below this kernel radius OpenCV is the faster (measured above).
DISTANCE_MIN_RADIUS = 26


def binary_morphology(mask: np.ndarray, kernel: np.ndarray, operation: Operation,
                      border: Border = "ignore", *,
                      min_radius: int = DISTANCE_MIN_RADIUS) -> np.ndarray:
    """``cv2.dilate``/``cv2.erode`` of an HxW uint8 mask holding 0 and at most one other value.

    ``kernel``: odd-sized, anchored at its centre (``cv2.getStructuringElement``). A mask with
    more values, a kernel narrower than ``min_radius`` on either side of its centre, or one far
    from a disk goes to OpenCV as it is.
    """
    mask = np.ascontiguousarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 mask, got {mask.dtype} {mask.shape}")
    kernel = np.asarray(kernel)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"expected a 2-D kernel with odd sides, got shape {kernel.shape}")
    if border not in ("replicate", "ignore"):
        raise ValueError(f"border must be 'replicate' or 'ignore', got {border!r}")
    # the kernel decides first: a small one (the 1 MP trimap) goes to OpenCV without a pass
    # over the mask
    offsets = None if min(kernel.shape) // 2 < min_radius else _Offsets.of(kernel)
    if offsets is not None and len(offsets.outer) > MAX_OUTER_PER_SIDE * sum(kernel.shape):
        offsets = None
    on = 0 if offsets is None else int(mask.max())
    if on == 0 or np.count_nonzero((mask != 0) & (mask != on)):
        options = {"borderType": cv2.BORDER_REPLICATE} if border == "replicate" else {}
        return _CV_OPS[operation](mask, kernel, **options)
    # erosion is the dilation of the complement; outside the image, "ignore" means "on" for it
    seeds = mask != 0 if operation == "dilate" else mask == 0
    grown = _dilate(seeds, offsets, border)
    if operation == "erode":
        np.logical_not(grown, out=grown)
    return grown.view(np.uint8) * np.uint8(on)


class _Offsets:
    """A kernel's offsets from its centre, split by its inscribed disk."""

    def __init__(self, inner: int, farthest: int, outer: np.ndarray) -> None:
        self.inner = inner  # every offset with dy² + dx² ≤ inner is in the kernel
        self.farthest = farthest  # no offset of the kernel is farther (squared)
        self.outer = outer  # (n, 2) dy, dx: the kernel's offsets with dy² + dx² > inner

    @classmethod
    def of(cls, kernel: np.ndarray) -> _Offsets | None:
        """None when the kernel lacks its centre (then the disk argument does not hold)."""
        ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
        dy, dx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
        squared = dy * dy + dx * dx
        member = np.asarray(kernel) != 0
        if not member[ry, rx]:
            return None
        missing = squared[~member]
        # past the kernel's box every offset is missing: the nearest is one step beyond it
        beyond = (min(ry, rx) + 1) ** 2
        inner = min(int(missing.min()) if missing.size else beyond, beyond) - 1
        outer = np.stack([dy[member & (squared > inner)], dx[member & (squared > inner)]], axis=1)
        return cls(inner, int(squared[member].max()), outer)


def _dilate(seeds: np.ndarray, offsets: _Offsets, border: Border) -> np.ndarray:
    """Pixels with a seed at one of the kernel's offsets (bool HxW)."""
    height, width = seeds.shape
    if not seeds.any():
        # nothing to grow from; with "replicate" an empty image has no seed past its edge either
        return np.zeros_like(seeds)
    reach = int(np.ceil(np.sqrt(offsets.farthest)))
    pad = reach + 1
    padded = cv2.copyMakeBorder(seeds.view(np.uint8), pad, pad, pad, pad,
                                cv2.BORDER_REPLICATE if border == "replicate" else
                                cv2.BORDER_CONSTANT, value=0)
    # distance of every pixel to its nearest seed (exact Euclidean: Felzenszwalb's algorithm)
    distance = cv2.distanceTransform((padded == 0).view(np.uint8), cv2.DIST_L2,
                                     cv2.DIST_MASK_PRECISE)[pad:pad + height, pad:pad + width]
    squared = np.square(distance, dtype=np.float32)
    # squared distances are integers; float32 holds them to well under 0.5 at these radii
    grown = squared <= offsets.inner + 0.5
    ys, xs = np.nonzero((squared > offsets.inner + 0.5) & (squared <= offsets.farthest + 0.5))
    if ys.size:
        hit = np.zeros(ys.size, dtype=bool)
        ys += pad
        xs += pad
        for dy, dx in offsets.outer:
            hit |= padded[ys + dy, xs + dx] != 0
        grown[ys - pad, xs - pad] = hit
    return grown
