"""Band-only KNN alpha against pymatting's whole-image KNN and closed-form mattes.

    python benchmarks/alpha.py [--sizes 0.25 1 2 4 12] [--images 2] [--skip-reference-above 4]
                               [--trimaps fractional gt model] [--per-image]

Inputs: the P3M portraits with ground-truth alpha in ../shared/data/p3m_figure_gt (~0.1 MP),
upscaled with cv2.INTER_CUBIC (image and GT alike) to each requested size in megapixels. Three
trimaps per image, one table each: "fractional" (the GT's fractional pixels, 0 < α < 255, grown
by 1 % of the image diagonal, the rest split at α = 127), "gt" (the build's band, erode/dilate,
around GT > 0.5) and "model" (the build's own trimap from the default recipe's model maps). Every
method runs in this process on the same image and trimap, one after the other; pymatting's numba
functions are compiled on a small image before anything is timed. "matteforge knn+cf" adds the
recipe's closed-form term (``alpha.cf_weight``) to the same KNN solve; neither uses a prior here.

Per size it prints, averaged over the images: wall seconds per image, peak memory (the largest
growth of the process's resident set during one call, read from VmHWM after resetting it through
/proc/self/clear_refs, with freed heap handed back by malloc_trim first; Linux only, blank
elsewhere), SAD against the GT over the trimap's unknown
region, and the speed ratio against pymatting's estimate_alpha_knn. Where torch sees a GPU, ours
also runs with the solve on it ("matteforge knn (cuda)": graph on the CPU, Jacobi CG on the GPU).

pymatting builds its graph over the whole image (~4 GB per megapixel for KNN), so above
``--skip-reference-above`` megapixels (default 4; 12 MP would need ~45 GB) only ours runs. For
those sizes each image is also solved once more in a fresh child process, whose VmHWM (the whole
process's peak resident set, interpreter and imports included) is printed as "process peak": that
is the number the < 2 GiB goal at 12 MP is about.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from matteforge.config import BuildConfig
from matteforge.metrics import sad, unknown_region
from matteforge.tasks.alpha import AlphaInfo, AlphaOptions, knn_alpha_with_info
from matteforge.tasks.recipe import ensemble_map
from matteforge.tasks.recipe import make_trimap as recipe_trimap
from matteforge.tasks.segment import segmenter_for
from matteforge.tasks.trimap import band_width, make_trimap

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


TRIMAPS = ("fractional", "gt", "model")


def make_trimaps(kinds: list[str], image: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """The requested trimaps of one image: ``fractional`` (the GT's fractional pixels grown),
    ``gt`` (the build's band, erode/dilate, around GT > 0.5) and ``model`` (the build's own
    trimap from the default recipe's model maps, ``tasks/recipe.make_trimap``)."""
    out = {}
    if "fractional" in kinds:
        out["fractional"] = trimap_from_alpha(gt)
    if "gt" in kinds:
        half = band_width(*gt.shape, fraction=BuildConfig().trimap.width_fraction)
        out["gt"] = make_trimap(gt.astype(np.float32) / 255.0, half_width=half)
    if "model" in kinds:
        cfg = BuildConfig()
        maps = segmenter_for(cfg.segment).predict(image).model_maps()
        out["model"] = recipe_trimap(image.shape, maps, ensemble_map(maps), cfg)[0]
    return out


def child_peak_mib(megapixels: float, index: int) -> float | None:
    """VmHWM (MiB) of a fresh process that loads portrait ``index`` and runs ours once."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(megapixels), str(index)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"VmHWM (\S+)", done.stdout)
    return float(found.group(1)) if found and found.group(1) != "None" else None


def run_child(megapixels: float, index: int) -> None:
    ((_, image0, alpha0),) = load_portraits(index + 1)[index:]
    image = resize_to(image0, megapixels)
    trimap = trimap_from_alpha(resize_to(alpha0, megapixels))
    del image0, alpha0
    knn_alpha_with_info(image, trimap)
    print(f"VmHWM {_status_mib('VmHWM')}")


def methods(infos: list[AlphaInfo]) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """The contenders; ours appends its AlphaInfo to ``infos`` on every call."""
    import pymatting

    def ours(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        alpha, info = knn_alpha_with_info(image, trimap)
        infos.append(info)
        return alpha

    def ours_with_cf(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        options = AlphaOptions(cf_weight=BuildConfig().alpha.cf_weight)
        alpha, _ = knn_alpha_with_info(image, trimap, options)
        return alpha

    def ours_on_gpu(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        alpha, _ = knn_alpha_with_info(image, trimap, AlphaOptions(device="cuda"))
        return alpha

    gpu = {"matteforge knn (cuda)": ours_on_gpu} if torch.cuda.is_available() else {}
    return {
        "matteforge knn (band)": ours,
        "matteforge knn+cf": ours_with_cf,
        **gpu,
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
    parser.add_argument(
        "--sizes", type=float, nargs="+", default=[0.25, 1.0, 2.0, 4.0, 12.0], help="megapixels"
    )
    parser.add_argument("--images", type=int, default=2, help="how many P3M portraits (max 10)")
    parser.add_argument(
        "--skip-reference-above",
        type=float,
        default=4.0,
        metavar="MP",
        help="run only ours above this many megapixels",
    )
    parser.add_argument("--per-image", action="store_true", help="also print every image")
    parser.add_argument("--trimaps", nargs="+", choices=TRIMAPS, default=list(TRIMAPS),
                        help="which trimaps (see make_trimaps); the memory child uses fractional")
    parser.add_argument("--child", type=float, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], int(args.child[1]))
        return

    portraits = load_portraits(args.images)
    infos: list[AlphaInfo] = []
    runs = methods(infos)
    warm_up(runs)
    print(
        f"{len(portraits)} P3M portraits (~0.1 MP) upscaled with cv2.INTER_CUBIC to each size; "
        f"trimaps: {', '.join(args.trimaps)} (make_trimaps); SAD over the unknown region; "
        "peak = max RSS growth during one call (VmHWM after clear_refs), worst image"
    )
    torch.set_num_threads(1)
    for megapixels in args.sizes:
        with_reference = megapixels <= args.skip_reference_above
        active = (
            runs if with_reference else {"matteforge knn (band)": runs["matteforge knn (band)"]}
        )
        sized = [(stem, resize_to(image0, megapixels), resize_to(alpha0, megapixels))
                 for stem, image0, alpha0 in portraits]
        trimaps = [make_trimaps(args.trimaps, image, gt) for _, image, gt in sized]
        for kind in args.trimaps:
            report(megapixels, kind, active, sized, [t[kind] for t in trimaps], infos, args,
                   with_reference)
        if not with_reference:
            peaks = [p for p in (child_peak_mib(megapixels, i) for i in range(len(portraits)))
                     if p is not None]
            if peaks:
                print(f"  process peak (VmHWM of a fresh process running ours on the "
                      f"fractional trimap, worst image): {max(peaks):.0f} MiB")
            print(f"  (references skipped above {args.skip_reference_above:g} MP)")


def report(megapixels: float, kind: str,
           active: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]],
           sized: list[tuple[str, np.ndarray, np.ndarray]], trimaps: list[np.ndarray],
           infos: list[AlphaInfo], args: argparse.Namespace, with_reference: bool) -> None:
    """Every method on every image with one kind of trimap: the table for that trimap."""
    rows: dict[str, list[tuple[float, float | None, float]]] = {name: [] for name in active}
    infos.clear()
    shares = []
    for (stem, image, gt), trimap in zip(sized, trimaps, strict=True):
        region = unknown_region(trimap)
        for name, run in active.items():
            alpha, seconds, peak = measure(run, image, trimap)
            error = sad(np.clip(alpha, 0, 1), gt, region)
            rows[name].append((seconds, peak, error))
            if args.per_image:
                print(f"  {stem} {image.shape[1]}x{image.shape[0]} {name:22s} "
                      f"{seconds:7.2f} s {_fmt(peak, '7.0f')} MiB SAD {error:7.2f}")
            del alpha
        shares.append(region.mean())
    reference = float(np.mean([r[0] for r in rows["pymatting knn"]])) if with_reference else None
    ref_sad = float(np.mean([r[2] for r in rows["pymatting knn"]])) if with_reference else None
    ours = infos
    print(
        f"\n{megapixels:g} MP, {kind} trimap (unknown {100 * float(np.mean(shares)):.1f} % of "
        f"pixels; ours: {np.mean([i.n_graph for i in ours]) / 1e3:.0f}k graph nodes, "
        f"{np.mean([i.iterations for i in ours]):.0f} CG iterations, graph "
        f"{np.mean([i.seconds_graph for i in ours]):.2f} s + solve "
        f"{np.mean([i.seconds_solve for i in ours]):.2f} s)"
    )
    print(f"  {'method':22s} {'s/image':>8s} {'peak MiB':>9s} {'SAD':>7s} {'speed-up':>9s} "
          f"{'SAD/pymatting knn':>18s}")
    for name, values in rows.items():
        seconds = float(np.mean([v[0] for v in values]))
        peaks = [v[1] for v in values if v[1] is not None]
        peak = max(peaks) if peaks else None
        error = float(np.mean([v[2] for v in values]))
        ratio = "" if reference is None else f"{reference / seconds:8.1f}x"
        vs = "" if ref_sad is None else f"{error / ref_sad:17.3f}x"
        print(f"  {name:22s} {seconds:8.2f} {_fmt(peak, '9.0f'):>9s} {error:7.2f} {ratio:>9s} "
              f"{vs:>18s}")


if __name__ == "__main__":
    main()
