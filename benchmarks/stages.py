"""Per-stage seconds per megapixel on real portraits, one thread, as the build runs them.

    python benchmarks/stages.py [--sizes 0.25 1 2] [--repeat 1]

Inputs: the astronaut from scikit-image and, when present, ../shared/data/portraits; each is
resized (bicubic) to the requested megapixels, which the output says.  Each runs the default
recipe exactly as the build does (its segmenter, then ``tasks/recipe.make_sample`` timed by its
own clock).  Prints seconds per megapixel for ingest (PNG decode), segment (every model of the
ensemble, plus presence), trimap, alpha, foreground, quality and composite.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from matteforge.config import BuildConfig
from matteforge.tasks import composite as comp
from matteforge.tasks.ingest import decode_image
from matteforge.tasks.recipe import StageClock, make_sample
from matteforge.tasks.segment import segmenter_for

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def portraits() -> dict[str, np.ndarray]:
    from skimage import data

    found = {"astronaut": data.astronaut()}
    folder = SHARED / "portraits"
    if folder.exists():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".jpg", ".png"):
                found[path.stem] = np.asarray(Image.open(path).convert("RGB"))
    return found


def resize_to(image: np.ndarray, megapixels: float) -> np.ndarray:
    h, w = image.shape[:2]
    scale = (megapixels * 1e6 / (h * w)) ** 0.5
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)


def time_stages(image: np.ndarray, background: np.ndarray) -> dict[str, float]:
    """One portrait through the build's own stages: its segmenter, then ``make_sample``."""
    seconds: dict[str, float] = {}
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    t = time.perf_counter()
    decoded = decode_image(buf.getvalue()).image
    seconds["ingest"] = time.perf_counter() - t
    assert decoded is not None
    cfg = BuildConfig()
    seg = segmenter_for(cfg.segment)
    t = time.perf_counter()
    result = seg.predict(decoded)
    seconds["segment"] = time.perf_counter() - t
    clock = StageClock()
    sample = make_sample(decoded, result.model_maps(), cfg, clock)
    seconds.update(clock.seconds)
    h, w = decoded.shape[:2]
    t = time.perf_counter()
    comp.composite(sample.foreground, sample.alpha, comp.fit_background(background, h, w))
    seconds["composite"] = time.perf_counter() - t
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 2.0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from skimage import data

    background = data.rocket()
    images = portraits()
    # Warm-up: model load and numba compilation are one-off costs, not per-image ones.
    time_stages(resize_to(images["astronaut"], 0.05), background)
    stages = ("ingest", "segment", "trimap", "alpha", "foreground", "quality", "composite")
    print(f"inputs: {', '.join(images)} (resized bicubic to each size); 1 torch thread")
    print(f"{'MP':>5} " + " ".join(f"{s:>11}" for s in stages) + "   (seconds per megapixel)")
    for mp in args.sizes:
        totals = dict.fromkeys(stages, 0.0)
        count = 0
        for image in images.values():
            sized = resize_to(image, mp)
            for _ in range(args.repeat):
                for stage, secs in time_stages(sized, background).items():
                    totals[stage] += secs / (sized.shape[0] * sized.shape[1] / 1e6)
                count += 1
        print(f"{mp:>5.2f} " + " ".join(f"{totals[s] / count:>11.3f}" for s in stages))


if __name__ == "__main__":
    main()
