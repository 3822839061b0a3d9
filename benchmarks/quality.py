"""Quality figures on real portraits with their real masks and with deliberately broken masks.

    python benchmarks/quality.py [--models rvm modnet] [--breaks shifted other confetti ...]

Why: the acceptance rule's limits (``quality`` in the config, ``tasks/quality.py``) must accept
every good sample and reject broken ones; this prints the figures both ways so the limits can be
chosen from numbers, and prints what the default limits decide for each row.

Portraits: the P3M figures in ../shared/data/p3m_figure_gt/image, plus ../shared/data/portraits.
Each goes through the build's own recipe (``tasks/recipe.make_sample``, default ``BuildConfig``
but for the models) once with the models' maps and once per break. ``--models`` names one model
or several (an ensemble, the default's); with several, each break is tried on the first model's
map alone ("<break>/1": one model fails, the others do not) and on every map at once
("<break>/all": all fail alike, so agreement cannot help).

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
from matteforge.models.backends import load_backend
from matteforge.tasks.ingest import decode_image
from matteforge.tasks.recipe import make_sample

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


def figures(image: np.ndarray, maps: dict[str, np.ndarray], cfg: BuildConfig
            ) -> tuple[dict[str, float], tuple[str, str] | None]:
    """The build's recipe on one portrait and its maps: the row's figures and the verdict."""
    sample = make_sample(image, maps, cfg)
    return sample.row, sample.verdict


COLUMNS = ("unknown_fraction", "mask_alpha_disagreement", "edge_support", "fg_components",
           "model_disagreement", "alpha_iterations")


def variants(maps: dict[str, np.ndarray], others: dict[str, np.ndarray], kinds: list[str],
             rng: np.random.Generator) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The good maps, then each break of the first map alone and (ensembles) of all of them."""
    out = [("model", maps)]
    first = next(iter(maps))
    for kind in kinds:
        if len(maps) == 1:
            out.append((kind, {first: broken(kind, maps[first], others[first], rng)}))
            continue
        out.append((f"{kind}/1", {**maps, first: broken(kind, maps[first], others[first], rng)}))
        out.append((f"{kind}/all", {k: broken(kind, m, others[k], rng) for k, m in maps.items()}))
    return out


def _cell(value: float | int | None) -> str:
    if value is None:
        return f"{'-':>12s}"
    return f"{value:12.4f}" if isinstance(value, float) else f"{value:12d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="one model or an ensemble; default: the default config's")
    parser.add_argument("--breaks", nargs="*", default=list(BREAKS), choices=BREAKS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = BuildConfig()
    names = args.models or cfg.segment.model_names()
    limits = cfg.quality.limits()
    backends = {str(n): load_backend(n) for n in names}
    people = portraits()
    maps = [{n: b.predict(image) for n, b in backends.items()} for _, image in people]
    rng = np.random.default_rng(0)
    header = f"{'image':24s} {'mask':12s} " + " ".join(f"{c[:12]:>12s}" for c in COLUMNS)
    print(f"models {' + '.join(backends)}; recipe: BuildConfig() defaults; limits {limits}")
    print(header + "  verdict")
    caught: dict[str, int] = {}
    good_rejected = 0
    for index, ((name, image), good) in enumerate(zip(people, maps, strict=True)):
        others = maps[(index + 1) % len(maps)]
        for kind, chosen in variants(good, others, args.breaks, rng):
            row, verdict = figures(image, chosen, cfg)
            if kind == "model":
                good_rejected += verdict is not None
            else:
                caught[kind] = caught.get(kind, 0) + (verdict is not None)
            cells = " ".join(_cell(row.get(c)) for c in COLUMNS)
            print(f"{name:24s} {kind:12s} {cells}  {verdict[0] if verdict else 'ok'}", flush=True)
    n = len(people)
    print(f"\ngood masks rejected: {good_rejected}/{n}")
    for kind, hits in caught.items():
        print(f"broken '{kind}' rejected: {hits}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
