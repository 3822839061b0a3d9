"""Quality figures of one sample, computed without ground truth, and the rule that rejects it.

A build over thousands of photos cannot be checked by eye, so every ok-looking sample gets a few
numbers that go bad when its mask or alpha is wrong; the manifest keeps them and the acceptance
rule (:func:`judge`) turns the worst into ``status="rejected"``, ``reason="low_quality:<figure>"``.

- ``mask_alpha_disagreement``: 1 − IoU of ``alpha ≥ 0.5`` and ``model probability ≥ 0.5``.  Matting
  may move an edge by a few pixels; when it moves a lot the two stages saw different people.
- ``composite_residual``: mean ``|I − (αF + (1−α)B)|`` (0..1 scale, channel mean) over the unknown
  band, with F and B estimated from I and α.  A right alpha explains the image with smooth F and B;
  a wrong one leaves the image's own edges in the residual.
- ``edge_support``: median image gradient on the alpha's 0.5 contour over the median in a ring
  around it.  A right matte's edge sits on the image's strongest edges; a misplaced, bloated,
  eroded or borrowed mask's edge cuts through at random (docs/quality.md has the ranges).  The
  figure that catches a well-formed mask in the wrong place, which no other figure here sees.
- ``fg_components``: connected regions of ``alpha ≥ 0.5`` larger than 0.1 % of the image.  One
  person is one or a few regions (an arm across the body); a broken mask is confetti.
- ``model_disagreement`` (two or more models): pixels where the models' maps differ by more than
  0.5, as a share of the person area (pixels any model puts at ≥ 0.5), with the bounding box of
  the largest such region (``model_disagreement_box``, "x0,y0,x1,y1" as fractions of width and
  height).
  Good models disagree on a few hair strands; when one loses half the person to a busy
  background, or finds a second "person" in it, they disagree on a large region.
- plus figures other stages already record: ``unknown_fraction`` (trimap), ``presence``
  (segment), ``alpha_iterations`` / ``alpha_residual`` (solver).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from matteforge.tasks.morphology import binary_morphology

MIN_COMPONENT_FRACTION = 0.001  # smaller specks of alpha are not counted as separate regions


@dataclass(frozen=True)
class QualityFigures:
    """The figures :func:`quality_figures` adds to a sample row (manifest column names)."""

    mask_alpha_disagreement: float
    composite_residual: float
    edge_support: float
    fg_components: int

    def as_row(self) -> dict[str, float | int]:
        return asdict(self)


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def mask_alpha_disagreement(probability: np.ndarray, alpha: np.ndarray) -> float:
    """1 − IoU of the model's person region and the alpha's; 0 when both are empty."""
    model = _unit(probability) >= 0.5
    matte = _unit(alpha) >= 0.5
    union = np.count_nonzero(model | matte)
    if union == 0:
        return 0.0
    return 1.0 - np.count_nonzero(model & matte) / union


def composite_residual(
    image: np.ndarray, alpha: np.ndarray, foreground: np.ndarray, background: np.ndarray,
    region: np.ndarray,
) -> float:
    """Mean absolute compositing-equation error over ``region`` (HxW bool), 0..1 scale."""
    if not region.any():
        return 0.0
    # select, then convert: the band is a few % of a portrait (0.6 s of float copies at 12 MP)
    a = _unit(alpha[region])[:, None]
    i = _unit(image[region])
    model = a * _unit(foreground[region]) + (1.0 - a) * _unit(background[region])
    return float(np.abs(i - model).mean())


def edge_support(image: np.ndarray, alpha: np.ndarray, ring_radius: int) -> float:
    """Median gradient magnitude on the ``alpha ≥ 0.5`` contour / its median within ``ring_radius``.

    Medians, not means: a busy background (a star field, foliage) has a few very strong edges
    that lift a ring's mean as much as a misplaced contour lowers it, and a portrait on the
    Hubble deep field scored like a broken mask (mean ratio 1.21; median ratio 1.70). 0 when
    alpha has no contour (nothing, or everything, is foreground): no edge supports it.
    """
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    grey = cv2.GaussianBlur(grey, (0, 0), 1.0)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    binary = (_unit(alpha) >= 0.5).astype(np.uint8)
    contour = cv2.morphologyEx(binary, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    if not contour.any():
        return 0.0
    size = 2 * max(1, int(ring_radius)) + 1
    ring = binary_morphology(contour.view(np.uint8),
                             cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)),
                             "dilate") > 0
    ring_level = max(float(np.median(magnitude[ring])), 1e-3)
    return float(np.median(magnitude[contour]) / ring_level)


def fg_components(alpha: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION) -> int:
    """Connected regions (8-connected) of ``alpha ≥ 0.5`` covering ≥ ``min_fraction`` of pixels."""
    binary = (_unit(alpha) >= 0.5).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[1:n, cv2.CC_STAT_AREA]
    return int(np.count_nonzero(areas >= min_fraction * binary.size))


def quality_figures(
    image: np.ndarray, probability: np.ndarray, trimap: np.ndarray, alpha: np.ndarray,
    foreground: np.ndarray, background: np.ndarray, band_half_width: int,
) -> QualityFigures:
    """All figures of one sample (uint8 or [0, 1] float inputs; ``trimap`` 0/128/255).

    ``band_half_width`` is the trimap's; the edge-support ring is twice as wide, so it reaches
    past the band on both sides.
    """
    return QualityFigures(
        mask_alpha_disagreement=round(mask_alpha_disagreement(probability, alpha), 6),
        composite_residual=round(composite_residual(image, alpha, foreground, background,
                                                    trimap == 128), 6),
        edge_support=round(edge_support(image, alpha, 2 * band_half_width), 4),
        fg_components=fg_components(alpha),
    )


def model_disagreement(maps: list[np.ndarray], gap: float = 0.5) -> tuple[float, str]:
    """``(share, box)``: pixels where the maps differ by more than ``gap`` over the person area.

    ``box`` is the bounding box of the largest connected disagreement region, "x0,y0,x1,y1" as
    fractions of width and height ("" when none): where a reviewer should look.
    """
    stack = [_unit(m) for m in maps]
    spread = np.max(stack, axis=0) - np.min(stack, axis=0)
    region = (spread > gap).astype(np.uint8)
    person = np.count_nonzero(np.max(stack, axis=0) >= 0.5)
    count = np.count_nonzero(region)
    if count == 0:
        return 0.0, ""
    share = count / max(person, 1)
    n, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:n, cv2.CC_STAT_AREA]))]
    rows, cols = region.shape
    box = f"{x / cols:.3f},{y / rows:.3f},{(x + w) / cols:.3f},{(y + h) / rows:.3f}"
    return round(float(share), 6), box


def judge(figures: Mapping[str, float | int | None], limits: Mapping[str, tuple[str, float]]
          ) -> tuple[str, str] | None:
    """The first figure outside its limit as (reason, detail), or None when all pass.

    ``limits`` maps a figure name to ``("max" | "min", bound)`` in the order to check; a figure
    that is missing, None or NaN is not judged (older rows, stages that did not run).
    """
    for name, (kind, bound) in limits.items():
        value = figures.get(name)
        if value is None or value != value:
            continue
        if (kind == "max" and value > bound) or (kind == "min" and value < bound):
            word = "above" if kind == "max" else "below"
            return f"low_quality:{name}", f"{name} {value:.4g} is {word} the limit {bound:.4g}"
    return None
