"""Models and the build's recipe on composites with exact ground truth: maps and final alphas.

    python benchmarks/masks.py [--images 10] [--backgrounds 12] [--megapixels 0]
                               [--variants rvm modnet@384 rvm+modnet@384] [--per-image]

Why: what the training data is worth is decided by the final alpha, and matting only fixes the
trimap's band, so a mask error outside it survives into the dataset. This scores both the
models' own probability maps and the alpha the build makes from them, with the build's own
recipe (``tasks/recipe.make_sample``, default ``BuildConfig``), and what its acceptance rule
keeps.

Dev set: the P3M portraits with true alpha in ../shared/data/p3m_figure_gt. Their foreground is
estimated from image + true alpha with the build's own ``estimate_foreground`` and composited
(Composition-1K's 8-bit recipe, ``tasks/composite.py``) onto backgrounds that alternate between
the shared wallpapers (../shared/data/backgrounds) and scikit-image photos, so the true alpha of
every composite is exact. ``--megapixels M`` first upscales portrait and alpha (INTER_CUBIC) to
about M megapixels: the P3M figures are ~0.13 MP and SAD is a sum, so their SADs are ~8x smaller
than on 1 MP images.

Per variant it prints, averaged over the composites: SAD, MSE, Gradient and Connectivity
(``matteforge.metrics``, whole image, alpha in [0, 1]), how many composites have SAD > 50, and
seconds per image; "mask" is the variant's map (an ensemble's: the mean of its members'), "final"
the stored 8-bit alpha; "band SAD final/mask" compares the two inside the band around the map's
0.5 edge, where matting works. Then what the acceptance rule keeps (count, SAD, max, > 50), and
the acceptance line for the default and permissive recipes.

Variants: a model name, optionally ``@<size>`` (rvm: long sides, ``@384,640`` averages them and
``x<passes>`` sets its passes; modnet: the short side), or several joined by ``+``: an ensemble,
as ``segment.model: [a, b]`` builds it. Models run on one torch thread, as the build's workers do.
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

from matteforge.config import BuildConfig, load_config
from matteforge.metrics import connectivity_error, gradient_error, mse, sad
from matteforge.models.backends import load_backend
from matteforge.tasks import trimap
from matteforge.tasks.composite import composite, fit_background
from matteforge.tasks.foreground import estimate_foreground
from matteforge.tasks.recipe import make_sample

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


def model_fn(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """``name[@size[,size...]][xpasses]`` → image → that model's probability map.

    ``load_backend`` reads ``name@size`` itself; ``x<passes>`` is this benchmark's (rvm only).
    """
    base, at, rest = name.partition("@")
    sizes, _, passes = rest.partition("x")
    return load_backend(base + at + sizes, passes=int(passes) if passes else None).predict


def band_sads(final: np.ndarray, model: np.ndarray, truth: np.ndarray, half: int
              ) -> tuple[float, float]:
    """SAD of the final alpha and of the model's map inside the model map's unknown band (the
    fixed band around the map's 0.5 edge the trimap starts from)."""
    band = trimap.make_trimap(model, half_width=half) == trimap.UNKNOWN
    return (float(np.abs(final - truth)[band].sum()) / 1000,
            float(np.abs(model - truth)[band].sum()) / 1000)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    cfg = BuildConfig()
    default = "+".join(map(str, cfg.segment.model_names()))
    permissive = "+".join(map(str, load_config("permissive").segment.model_names()))
    comps = dev_set(args.images, args.backgrounds, args.megapixels)
    pixels = np.mean([c.truth.size for c in comps]) / 1e6
    scale = f"upscaled to ~{args.megapixels} MP" if args.megapixels > 0 else "native size"
    print(f"dev set: {len(comps)} composites ({args.images} P3M portraits x {args.backgrounds} "
          f"backgrounds), {scale}, mean {pixels:.3f} MP; recipe: tasks/recipe.make_sample with "
          f"BuildConfig() (default models {default}, permissive {permissive})\n")
    variants = list(args.variants or [m for m in ("rvm", "modnet", *default.split("+"))
                                      if "+" not in m] + [default, permissive])
    variants = list(dict.fromkeys(variants))
    models = {m for v in variants for m in v.split("+")}
    maps: dict[str, list[np.ndarray]] = {}
    model_seconds: dict[str, float] = {}
    for name in sorted(models):
        predict = model_fn(name)
        predict(comps[0].image)  # first call allocates; not timed
        start = time.perf_counter()
        maps[name] = [predict(c.image) for c in comps]
        model_seconds[name] = (time.perf_counter() - start) / len(comps)
    finals: dict[str, Scores] = {}
    print(f"{'variant':<22} {'output':<6} {HEADER} {'s/img':>7}")
    for variant in variants:
        members = variant.split("+")
        raw, final, recipe_s, band_final, band_model = Scores(), Scores(), 0.0, 0.0, 0.0
        for i, c in enumerate(comps):
            chosen = {m: maps[m][i] for m in members}
            start = time.perf_counter()
            sample = make_sample(c.image, chosen, cfg)
            recipe_s += time.perf_counter() - start
            raw.add(sample.probability, c.truth)
            final.add(sample.alpha, c.truth,
                      None if sample.verdict is None else sample.verdict[0])
            f, m = band_sads(sample.alpha.astype(np.float32) / 255, sample.probability,
                             c.truth, sample.row["trimap_half_width"])
            band_final, band_model = band_final + f, band_model + m
        finals[variant] = final
        n = len(comps)
        label = variant + (" (default)" if variant == default else
                           " (permissive)" if variant == permissive else "")
        print(f"{label:<26} {'mask':<6} {raw.row()} "
              f"{sum(model_seconds[m] for m in members):7.3f}")
        print(f"{'':<22} {'final':<6} {final.row()} {recipe_s / n:7.3f}   band SAD final/mask "
              f"{band_final / max(band_model, 1e-9):.3f}", flush=True)
    print("\ns/img: the models for 'mask' (summed over an ensemble's members), the recipe "
          "(trimap, alpha, foreground, quality figures) for 'final'; 1 torch thread. 'mask' of "
          "an ensemble is the mean of its maps; band: the 0.5 edge's band in that map.\n")
    print("what the acceptance rule (config `quality`, defaults) keeps")
    print(f"{'variant':<22} {GATE}  rejected for")
    for variant in variants:
        reasons = sorted({r for r in finals[variant].rejected if r is not None})
        print(f"{variant:<22} {finals[variant].gate()}  {', '.join(reasons) or '-'}")

    if args.per_image:
        print(f"\nfinal SAD per composite\n{'composite':<34}"
              + "".join(f"{v:>20}" for v in variants))
        for i, c in enumerate(comps):
            print(f"{c.name:<34}" + "".join(
                f"{finals[v].sad[i]:19.2f}{'*' if finals[v].rejected[i] else ' '}"
                for v in variants))
        print("* rejected by the acceptance rule")

    if default in finals and permissive in finals:
        ours, perm = finals[default], finals[permissive]
        kept = [s for s, r in zip(ours.sad, ours.rejected, strict=True) if r is None]
        print(f"\nacceptance: default {default} final mean SAD {np.mean(ours.sad):.2f} "
              f"(max {max(ours.sad):.2f}); accepted above {BAD_SAD:g}: "
              f"{sum(s > BAD_SAD for s in kept)}; permissive {permissive} / default = "
              f"{np.mean(perm.sad) / np.mean(ours.sad):.2f}x (goal <= 1.5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="P3M portraits (of 10)")
    parser.add_argument("--backgrounds", type=int, default=12, help="backgrounds (of 12)")
    parser.add_argument("--megapixels", type=float, default=0.0,
                        help="upscale portraits to about this size first (0: native ~0.13 MP)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="models, or models joined by + (an ensemble); default: rvm, "
                        "modnet, the default recipe's models alone and together, permissive")
    parser.add_argument("--per-image", action="store_true", help="final SAD per composite")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
