"""Band-only KNN alpha against pymatting's whole-image KNN and closed-form mattes.

    python benchmarks/alpha.py [--sizes 0.25 1] [--images 3] [--per-image]

Inputs: the P3M portraits with ground-truth alpha in ../shared/data/p3m_figure_gt (~0.1 MP),
upscaled with cv2.INTER_CUBIC (image and GT alike) to each requested size in megapixels. The
trimap is the GT's fractional pixels (0 < α < 255) grown by 1 % of the image diagonal, the rest
split at α = 127. Every method runs in this process on the same image and trimap, one after the
other; pymatting's numba functions are compiled on a small image before anything is timed.

Per size it prints, averaged over the images: wall seconds per image, peak memory (the largest
growth of the process's resident set during one call, read from VmHWM after resetting it through
/proc/self/clear_refs, with freed heap handed back by malloc_trim first; Linux only, blank
elsewhere), SAD against the GT over the trimap's unknown
region, and the speed ratio against pymatting's estimate_alpha_knn.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from matteforge.metrics import sad, unknown_region
from matteforge.tasks.alpha import AlphaInfo, knn_alpha_with_info

P3M = Path(__file__).resolve().parents[2] / "shared" / "data" / "p3m_figure_gt"


def _status_mib(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


def _release_freed_memory() -> None:
    """Hand freed heap back to the OS so the next call's RSS growth is its own (glibc only)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray], image: np.ndarray, trimap: np.ndarray
) -> tuple[np.ndarray, float, float | None]:
    """``(alpha, seconds, peak MiB above the RSS at the start)`` of one call."""
    _release_freed_memory()
    can_reset = _reset_peak()
    start_rss = _status_mib("VmRSS")
    start = time.perf_counter()
    result = fn(image, trimap)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM") if can_reset else None
    grown = None if peak is None or start_rss is None else max(peak - start_rss, 0.0)
    return result, seconds, grown


def load_portraits(limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not P3M.exists():
        sys.exit(f"{P3M} not found: this benchmark needs ../shared/data beside the checkout")
    found = []
    for path in sorted((P3M / "image").glob("*.png"))[:limit]:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        alpha = cv2.imread(str(P3M / "alpha" / path.name), cv2.IMREAD_GRAYSCALE)
        found.append((path.stem, image, alpha))
    return found


def resize_to(array: np.ndarray, megapixels: float) -> np.ndarray:
    h, w = array.shape[:2]
    scale = math.sqrt(megapixels * 1e6 / (h * w))
    size = (round(w * scale), round(h * scale))
    return cv2.resize(array, size, interpolation=cv2.INTER_CUBIC)


def trimap_from_alpha(alpha: np.ndarray) -> np.ndarray:
    radius = max(3, round(0.01 * math.hypot(*alpha.shape)))
    fractional = ((alpha > 0) & (alpha < 255)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    trimap = np.where(alpha > 127, 255, 0).astype(np.uint8)
    trimap[cv2.dilate(fractional, kernel) > 0] = 128
    return trimap


def methods(infos: list[AlphaInfo]) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """The contenders; ours appends its AlphaInfo to ``infos`` on every call."""
    import pymatting

    def ours(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        alpha, info = knn_alpha_with_info(image, trimap)
        infos.append(info)
        return alpha

    return {
        "matteforge knn (band)": ours,
        "pymatting knn": lambda image, trimap: pymatting.estimate_alpha_knn(
            image / 255.0, trimap / 255.0
        ),
        "pymatting cf": lambda image, trimap: pymatting.estimate_alpha_cf(
            image / 255.0, trimap / 255.0
        ),
    }


def warm_up(runs: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]) -> None:
    """Compile pymatting's numba code (and import everything) before timing."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    image = np.where((radius < 20)[..., None], [200, 80, 60], [40, 90, 180])
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    trimap = np.where(radius < 20, 255, 0).astype(np.uint8)
    trimap[np.abs(radius - 20) < 3] = 128
    for run in runs.values():
        run(image, trimap)


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0], help="megapixels")
    parser.add_argument("--images", type=int, default=3, help="how many P3M portraits (max 10)")
    parser.add_argument("--per-image", action="store_true", help="also print every image")
    args = parser.parse_args()

    portraits = load_portraits(args.images)
    infos: list[AlphaInfo] = []
    runs = methods(infos)
    warm_up(runs)
    print(
        f"{len(portraits)} P3M portraits upscaled with cv2.INTER_CUBIC; trimap = fractional GT "
        "grown by 1 % of the diagonal; peak = max RSS growth during a call (VmHWM)"
    )
    for megapixels in args.sizes:
        rows: dict[str, list[tuple[float, float | None, float]]] = {name: [] for name in runs}
        infos.clear()
        shares = []
        for stem, image0, alpha0 in portraits:
            image = resize_to(image0, megapixels)
            gt = resize_to(alpha0, megapixels)
            trimap = trimap_from_alpha(gt)
            region = unknown_region(trimap)
            for name, run in runs.items():
                alpha, seconds, peak = measure(run, image, trimap)
                error = sad(np.clip(alpha, 0, 1), gt, region)
                rows[name].append((seconds, peak, error))
                if args.per_image:
                    print(
                        f"  {stem} {image.shape[1]}x{image.shape[0]} {name:22s} "
                        f"{seconds:7.2f} s {_fmt(peak, '7.0f')} MiB SAD {error:7.2f}"
                    )
            shares.append(region.mean())
        reference = np.mean([r[0] for r in rows["pymatting knn"]])
        unknown_share = float(np.mean(shares))
        iterations = np.mean([i.iterations for i in infos])
        graph_s = np.mean([i.seconds_graph for i in infos])
        solve_s = np.mean([i.seconds_solve for i in infos])
        print(
            f"\n{megapixels:g} MP (unknown {100 * unknown_share:.1f} % of pixels; ours: "
            f"{iterations:.0f} CG iterations, graph {graph_s:.2f} s + solve {solve_s:.2f} s)"
        )
        print(f"  {'method':22s} {'s/image':>8s} {'peak MiB':>9s} {'SAD':>7s} {'speed-up':>9s}")
        for name, values in rows.items():
            seconds = float(np.mean([v[0] for v in values]))
            peaks = [v[1] for v in values if v[1] is not None]
            peak = max(peaks) if peaks else None
            error = float(np.mean([v[2] for v in values]))
            print(
                f"  {name:22s} {seconds:8.2f} {_fmt(peak, '9.0f'):>9s} {error:7.2f} "
                f"{reference / seconds:8.1f}x"
            )


if __name__ == "__main__":
    main()
