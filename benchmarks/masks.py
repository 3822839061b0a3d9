"""Mask backends on composites with exact ground truth: raw model masks and final alphas.

    python benchmarks/masks.py [--images 10] [--backgrounds 4] [--megapixels 0]
                               [--variants rvm rvm@512x1 rvm@384,640x4 meet mediapipe-selfie]
                               [--prior-weights 0 0.01 0.1 1] [--flip] [--per-image]

Why: what the training data is worth is decided by the final alpha, and KNN matting only fixes
the trimap band, so a mask error outside it survives into the dataset. This scores both the
model's own probability map and the alpha the build makes from it.

Dev set: the P3M portraits with true alpha in ../shared/data/p3m_figure_gt. Their foreground is
estimated from image + true alpha with the build's own ``estimate_foreground`` and composited
(Composition-1K's 8-bit recipe, ``tasks/composite.py``) onto backgrounds that alternate between
the shared wallpapers (../shared/data/backgrounds) and scikit-image photos, so the true alpha of
every composite is exact. ``--megapixels M`` first upscales portrait and alpha (INTER_CUBIC) to
about M megapixels: the P3M figures are ~0.13 MP and SAD is a sum, so their SADs are ~8× smaller
than on 1 MP images.

Per variant it prints, averaged over the composites: SAD, MSE, Gradient and Connectivity
(``matteforge.metrics``, whole image, alpha in [0, 1]), how many composites have SAD > 50, and
seconds per image (model; trimap + KNN). "mask" is the model's probability map, "final" the
stored 8-bit alpha after the build's trimap and KNN alpha with the default ``BuildConfig``.
Then the KNN prior table (``alpha.prior_weight``) for the first variant, and the acceptance
line: the first variant's final mean SAD against mediapipe-selfie's.

Variants: a backend name, optionally ``@<long side>`` (rvm only; ``@384,640`` averages the maps
at those sizes; ``@512x1`` also sets rvm's passes, here one: the recipe before 2026-12-02) and
``+flip`` (mean of the mask and the flipped-back mask of the mirrored image; ``--flip`` adds
``rvm+flip``).
Models run on one torch thread, as the build's workers do.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data as skdata

from matteforge.config import BuildConfig
from matteforge.metrics import connectivity_error, gradient_error, mse, sad
from matteforge.models.backends import load_backend
from matteforge.tasks import trimap
from matteforge.tasks.alpha import knn_alpha_with_info
from matteforge.tasks.codec import to_uint8
from matteforge.tasks.composite import composite, fit_background
from matteforge.tasks.foreground import estimate_foreground, estimate_foreground_background
from matteforge.tasks.quality import judge, quality_figures

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
P3M = SHARED / "p3m_figure_gt"
WALLPAPERS = SHARED / "backgrounds"
# Busy real photos without people (a person in the background would be a wrong "truth").
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "skimage_coffee": skdata.coffee,
    "skimage_rocket": skdata.rocket,
    "skimage_chelsea": skdata.chelsea,
    "skimage_hubble": skdata.hubble_deep_field,
    "skimage_motorcycle": lambda: skdata.stereo_motorcycle()[0],
    "skimage_immunohistochemistry": skdata.immunohistochemistry,
}
BAD_SAD = 50.0


@dataclass
class Composite:
    name: str
    image: np.ndarray  # HxWx3 uint8
    truth: np.ndarray  # HxW float in [0, 1]


@dataclass
class Scores:
    sad: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    grad: list[float] = field(default_factory=list)
    conn: list[float] = field(default_factory=list)
    rejected: list[str | None] = field(default_factory=list)

    def add(self, pred: np.ndarray, truth: np.ndarray, rejected: str | None = None) -> None:
        self.rejected.append(rejected)
        self.sad.append(sad(pred, truth))
        self.mse.append(mse(pred, truth))
        self.grad.append(gradient_error(pred, truth))
        self.conn.append(connectivity_error(pred, truth))

    def row(self) -> str:
        bad = sum(s > BAD_SAD for s in self.sad)
        return (f"{np.mean(self.sad):8.2f} {max(self.sad):8.2f} {np.mean(self.mse):9.5f} "
                f"{np.mean(self.grad):8.2f} {np.mean(self.conn):8.2f} {bad:6d}")

    def gate(self) -> str:
        """What the build's acceptance rule (config ``quality``) keeps: count, SAD, >50."""
        kept = [s for s, r in zip(self.sad, self.rejected, strict=True) if r is None]
        if not kept:
            return f"{0:5d} {'-':>8} {'-':>8} {0:6d}"
        bad = sum(s > BAD_SAD for s in kept)
        return f"{len(kept):5d} {np.mean(kept):8.2f} {max(kept):8.2f} {bad:6d}"


HEADER = f"{'SAD':>8} {'max SAD':>8} {'MSE':>9} {'Grad':>8} {'Conn':>8} {'>50':>6}"
GATE = f"{'kept':>5} {'SAD':>8} {'max SAD':>8} {'>50':>6}"


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _upscale(array: np.ndarray, megapixels: float) -> np.ndarray:
    h, w = array.shape[:2]
    scale = math.sqrt(megapixels * 1e6 / (h * w))
    return cv2.resize(array, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)


def backgrounds(count: int) -> list[tuple[str, np.ndarray]]:
    """Wallpapers and photos taken in turn, so a small ``count`` still has both kinds."""
    walls = [(p.stem, _read_rgb(p)) for p in sorted(WALLPAPERS.glob("*.jpg"))]
    photos = [(name, load().astype(np.uint8)) for name, load in PHOTOS.items()]
    mixed = [x for pair in zip(walls, photos, strict=False) for x in pair]
    mixed += walls[len(photos):] + photos[len(walls):]
    return mixed[:count]


def dev_set(n_images: int, n_backgrounds: int, megapixels: float) -> list[Composite]:
    if not P3M.exists():
        sys.exit(f"{P3M} not found: this benchmark needs ../shared/data beside the checkout")
    bgs = backgrounds(n_backgrounds)
    found = []
    for path in sorted((P3M / "image").glob("*.png"))[:n_images]:
        image = _read_rgb(path)
        alpha = cv2.imread(str(P3M / "alpha" / path.name), cv2.IMREAD_GRAYSCALE)
        if megapixels > 0:
            image, alpha = _upscale(image, megapixels), _upscale(alpha, megapixels)
        fg = estimate_foreground(image, alpha)
        truth = alpha.astype(np.float32) / 255.0
        for bg_name, bg in bgs:
            merged = composite(fg, alpha, fit_background(bg, *alpha.shape))
            found.append(Composite(f"{path.stem}/{bg_name}", merged, truth))
    return found


def mask_fn(variant: str) -> Callable[[np.ndarray], np.ndarray]:
    """``name[@size[,size...][xpasses]][+flip]`` → image → probability map (mean over sizes)."""
    spec, _, flip = variant.partition("+")
    name, _, sizes = spec.partition("@")
    sizes, _, passes = sizes.partition("x")
    backend = load_backend(  # rvm averages the maps of its sizes itself
        name, size=tuple(int(s) for s in sizes.split(",")) if sizes else None,
        passes=int(passes) if passes else None)
    if flip != "flip":
        return backend.predict

    def flipped(image: np.ndarray) -> np.ndarray:
        mirrored = backend.predict(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
        return 0.5 * (backend.predict(image) + mirrored)

    return flipped


def final_alpha(
    image: np.ndarray, probability: np.ndarray, cfg: BuildConfig, prior_weight: float
) -> tuple[np.ndarray, str | None]:
    """What flows/shard.py stores as alpha/<id>.png for this mask (8-bit), and the reason the
    build's acceptance rule would reject the sample (None: kept). Presence is not judged."""
    t, a = cfg.trimap, cfg.alpha
    half = trimap.band_width(*image.shape[:2], fixed=t.width, fraction=t.width_fraction,
                             minimum=t.min_width)
    tri = trimap.make_trimap(probability, threshold=t.threshold, kernel_shape=t.kernel_shape,
                             half_width=half)
    alpha, info = knn_alpha_with_info(
        image, tri, n_neighbors=a.n_neighbors, spatial_weight=a.spatial_weight,
        constraint_weight=math.inf if a.constraint_weight is None else a.constraint_weight,
        prior=probability, prior_weight=prior_weight, tol=a.tol, max_iter=a.max_iter,
        search_eps=a.search_eps, device=a.device)
    alpha8 = to_uint8(alpha)
    fg, bg = estimate_foreground_background(image, alpha8)
    row = {**quality_figures(image, probability, tri, alpha8, fg, bg, half).as_row(),
           "unknown_fraction": trimap.unknown_fraction(tri),
           "alpha_iterations": info.iterations, "alpha_residual": info.residual}
    verdict = judge(row, cfg.quality.limits())
    return alpha8, None if verdict is None else verdict[0]


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    cfg = BuildConfig()
    comps = dev_set(args.images, args.backgrounds, args.megapixels)
    pixels = np.mean([c.truth.size for c in comps]) / 1e6
    scale = f"upscaled to ~{args.megapixels} MP" if args.megapixels > 0 else "native size"
    print(f"dev set: {len(comps)} composites ({args.images} P3M portraits x {args.backgrounds} "
          f"backgrounds), {scale}, mean {pixels:.3f} MP; trimap/alpha: BuildConfig() defaults "
          f"(prior_weight {cfg.alpha.prior_weight})\n")
    variants = list(args.variants) + (["rvm+flip"] if args.flip else [])
    masks: dict[str, list[np.ndarray]] = {}
    finals: dict[str, Scores] = {}
    knn_seconds: dict[str, float] = {}
    print(f"{'variant':<18} {'output':<6} {HEADER} {'s/img':>7}")
    for variant in variants:
        predict = mask_fn(variant)
        predict(comps[0].image)  # first call allocates; not timed
        raw, final, model_s, knn_s = Scores(), Scores(), 0.0, 0.0
        masks[variant] = []
        for c in comps:
            start = time.perf_counter()
            prob = predict(c.image)
            model_s += time.perf_counter() - start
            masks[variant].append(prob)
            raw.add(prob, c.truth)
            start = time.perf_counter()
            alpha8, rejected = final_alpha(c.image, prob, cfg, cfg.alpha.prior_weight)
            knn_s += time.perf_counter() - start
            final.add(alpha8, c.truth, rejected)
        finals[variant], knn_seconds[variant] = final, knn_s / len(comps)
        n = len(comps)
        print(f"{variant:<18} {'mask':<6} {raw.row()} {model_s / n:7.3f}")
        print(f"{'':<18} {'final':<6} {final.row()} {knn_s / n:7.3f}", flush=True)
    print("\ns/img: model for 'mask', trimap + KNN alpha + quality figures for 'final' "
          "(1 torch thread)\n")
    print("final alphas the build keeps (its acceptance rule, config `quality`, defaults)")
    print(f"{'variant':<18} {GATE}  rejected for")
    for variant in variants:
        reasons = sorted({r for r in finals[variant].rejected if r is not None})
        print(f"{variant:<18} {finals[variant].gate()}  {', '.join(reasons) or '-'}")
    print()

    base = variants[0]
    print(f"KNN prior (alpha.prior_weight) on {base} masks, final alpha")
    print(f"{'prior_weight':<12} {HEADER} {'s/img':>7}")
    for weight in args.prior_weights:
        if weight == cfg.alpha.prior_weight:
            scores, seconds = finals[base], knn_seconds[base]
        else:
            scores, seconds = Scores(), 0.0
            for c, prob in zip(comps, masks[base], strict=True):
                start = time.perf_counter()
                alpha8, rejected = final_alpha(c.image, prob, cfg, weight)
                seconds += (time.perf_counter() - start) / len(comps)
                scores.add(alpha8, c.truth, rejected)
        print(f"{weight:<12g} {scores.row()} {seconds:7.3f}", flush=True)

    if args.per_image:
        print(f"\nfinal SAD per composite\n{'composite':<34}"
              + "".join(f"{v:>18}" for v in variants))
        for i, c in enumerate(comps):
            print(f"{c.name:<34}" + "".join(
                f"{finals[v].sad[i]:17.2f}{'*' if finals[v].rejected[i] else ' '}"
                for v in variants))
        print("* rejected by the acceptance rule")

    if "mediapipe-selfie" in finals and base != "mediapipe-selfie":
        ours, selfie = finals[base], finals["mediapipe-selfie"]
        ratio = np.mean(selfie.sad) / np.mean(ours.sad)
        print(f"\nacceptance: final mean SAD selfie {np.mean(selfie.sad):.2f} / {base} "
              f"{np.mean(ours.sad):.2f} = {ratio:.2f}x (goal >= 4x); {base} max SAD "
              f"{max(ours.sad):.2f}, {sum(s > BAD_SAD for s in ours.sad)} above {BAD_SAD:g}; "
              f"kept by the acceptance rule (kept, SAD, max, >50): {base} {ours.gate()}, "
              f"selfie {selfie.gate()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="P3M portraits (of 10)")
    parser.add_argument("--backgrounds", type=int, default=4, help="backgrounds (of 12)")
    parser.add_argument("--megapixels", type=float, default=0.0,
                        help="upscale portraits to about this size first (0: native ~0.13 MP)")
    parser.add_argument("--variants", nargs="+",
                        default=["rvm", "rvm@512x1", "rvm@384,640x4", "meet",
                                 "mediapipe-selfie"],
                        help="first one is the default backend: prior table and acceptance")
    parser.add_argument("--prior-weights", type=float, nargs="+", default=[0, 0.01, 0.1, 1])
    parser.add_argument("--flip", action="store_true", help="add rvm+flip (mirror TTA)")
    parser.add_argument("--per-image", action="store_true", help="final SAD per composite")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
