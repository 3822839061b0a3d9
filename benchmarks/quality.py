"""Quality figures on real portraits with their real mask and with deliberately broken masks.

    python benchmarks/quality.py [--model rvm] [--breaks shifted other confetti bloated eroded]

Why: the acceptance rule's limits (``quality`` in the config, ``tasks/quality.py``) must accept
every good sample and reject broken ones; this prints the figures both ways so the limits can be
chosen from numbers, and prints what the default limits decide for each row.

Portraits: the P3M figures in ../shared/data/p3m_figure_gt/image, plus ../shared/data/portraits.
Each goes through the build's own stages (segment → trimap → KNN alpha → F and B) once with the
model's probability map and once per break of it:

- shifted: the map moved right by 15 % of the width (a mask of the right shape, misplaced);
- other: the map of a different portrait, resized (a mask that belongs to another image);
- confetti: the map with half of its 12-px blocks zeroed (a model that fell apart);
- bloated: the mask dilated by 6 % of the long side (takes in the background around the person);
- eroded: the mask eroded by 6 % of the long side (loses limbs and hair).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from matteforge.config import BuildConfig
from matteforge.tasks import trimap
from matteforge.tasks.alpha import knn_alpha_with_info
from matteforge.tasks.codec import to_uint8
from matteforge.tasks.foreground import estimate_foreground_background
from matteforge.tasks.ingest import decode_image
from matteforge.tasks.quality import judge, quality_figures
from matteforge.tasks.segment import load_segmenter

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BREAKS = ("shifted", "other", "confetti", "bloated", "eroded")


def portraits() -> list[tuple[str, np.ndarray]]:
    files = sorted((SHARED / "p3m_figure_gt" / "image").glob("*.png"))
    files += sorted((SHARED / "portraits").glob("*.*"))
    out = []
    for path in files:
        decoded = decode_image(path.read_bytes())
        if decoded.image is not None:
            out.append((path.stem, decoded.image))
    return out


def broken(kind: str, prob: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = prob.shape
    if kind == "shifted":
        shifted = np.zeros_like(prob)
        dx = round(0.15 * w)
        shifted[:, dx:] = prob[:, : w - dx]
        return shifted
    if kind == "other":
        return cv2.resize(other, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "confetti":
        cells = rng.random((math.ceil(h / 12), math.ceil(w / 12))) < 0.5
        keep = np.kron(cells, np.ones((12, 12)))[:h, :w]
        return (prob * keep).astype(np.float32)
    radius = max(1, round(0.06 * max(h, w)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    op = cv2.dilate if kind == "bloated" else cv2.erode
    return op(prob.astype(np.float32), kernel)


def figures(image: np.ndarray, prob: np.ndarray, cfg: BuildConfig) -> dict[str, float]:
    """The build's trimap → alpha → F, B stages on one probability map, then every figure."""
    h, w = prob.shape
    half = trimap.band_width(h, w, fixed=cfg.trimap.width, fraction=cfg.trimap.width_fraction,
                             minimum=cfg.trimap.min_width)
    tri = trimap.make_trimap(prob, threshold=cfg.trimap.threshold,
                             kernel_shape=cfg.trimap.kernel_shape, half_width=half)
    alpha, info = knn_alpha_with_info(image, tri, prior=prob, prior_weight=cfg.alpha.prior_weight)
    alpha8 = to_uint8(alpha)
    fg, bg = estimate_foreground_background(image, alpha8)
    row: dict[str, float] = dict(quality_figures(image, prob, tri, alpha8, fg, bg, half).as_row())
    row.update(unknown_fraction=trimap.unknown_fraction(tri), alpha_iterations=info.iterations,
               alpha_residual=info.residual)
    return row


COLUMNS = ("unknown_fraction", "mask_alpha_disagreement", "composite_residual", "edge_support",
           "fg_components", "alpha_iterations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rvm")
    parser.add_argument("--breaks", nargs="*", default=list(BREAKS), choices=BREAKS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = BuildConfig()
    limits = cfg.quality.limits()
    seg = load_segmenter(args.model)
    people = portraits()
    probs = [seg.predict(image).probability for _, image in people]
    rng = np.random.default_rng(0)
    header = f"{'image':24s} {'mask':9s} " + " ".join(f"{c[:12]:>12s}" for c in COLUMNS)
    print(f"model {args.model}; limits {limits}")
    print(header + "  verdict")
    caught = {kind: 0 for kind in args.breaks}
    good_rejected = 0
    for index, ((name, image), prob) in enumerate(zip(people, probs, strict=True)):
        other = probs[(index + 1) % len(probs)]
        for kind in ["model", *args.breaks]:
            p = prob if kind == "model" else broken(kind, prob, other, rng)
            row = figures(image, p, cfg)
            verdict = judge(row, limits)
            if kind == "model":
                good_rejected += verdict is not None
            elif verdict is not None:
                caught[kind] += 1
            cells = " ".join(f"{row[c]:12.4f}" if isinstance(row[c], float) else f"{row[c]:12d}"
                             for c in COLUMNS)
            print(f"{name:24s} {kind:9s} {cells}  {verdict[0] if verdict else 'ok'}", flush=True)
    n = len(people)
    print(f"\ngood masks rejected: {good_rejected}/{n}")
    for kind, hits in caught.items():
        print(f"broken '{kind}' rejected: {hits}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
