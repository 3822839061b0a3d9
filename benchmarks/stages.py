"""Per-stage seconds on real portraits, one thread, as the build runs them.

    python benchmarks/stages.py [--sizes 0.25 1 2] [--repeat 1]
    python benchmarks/stages.py --config comp1k [--megapixels 0.7] [--pool 100]

Inputs: the astronaut from scikit-image and, when present, ../shared/data/portraits; each is
resized (bicubic) to the requested megapixels, which the output says.

Without ``--config``: the default recipe exactly as the build does it (its segmenter, then
``tasks/recipe.make_sample`` timed by its own clock); prints seconds per megapixel for ingest
(PNG decode), segment (every model of the ensemble, plus presence), trimap, alpha, foreground,
quality and one composite's blend.

With ``--config NAME``: each portrait goes through the build's own per-sample path
(``steps/shard.process_sample``: the stages, the files, ``make_composites``) with that config, as
a training sample, once storing its composites and once with ``composite.store: false``; prints
seconds per portrait by stage, the cost per stored composite against the floor measured in the
same run on the same images (``tasks/composite.composite`` + an OpenCV PNG level-1 encode: the
least any stored composite costs), and the lazy build's time per portrait against the model +
alpha + foreground time.  Backgrounds: a pool of ``--pool`` distinct crops (0.3-2 MP, JPEG) of
../shared/data/backgrounds, so a comp1k portrait gets its 100.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from matteforge.config import BuildConfig, load_config
from matteforge.dataset.codec import decode
from matteforge.dataset.manifest import STAGES
from matteforge.dataset.materialize import CompositeRecipe
from matteforge.dataset.storage import locate
from matteforge.steps.shard import BackgroundCache, BackgroundRef, make_composites, process_sample
from matteforge.steps.worker_env import configure_threads
from matteforge.tasks import composite as comp
from matteforge.tasks.ingest import content_hash, decode_image
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


def background_pool(folder: Path, count: int, seed: int = 0) -> list[BackgroundRef]:
    """``count`` distinct backgrounds: crops of 0.3-2 MP of the shared photos, as JPEG files."""
    photos = [np.asarray(Image.open(p).convert("RGB"))
              for p in sorted((SHARED / "backgrounds").glob("*.jpg"))]
    if not photos:
        raise SystemExit(f"no backgrounds in {SHARED / 'backgrounds'}")
    rng = np.random.default_rng(seed)
    refs = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        area = min(rng.uniform(0.3e6, 2e6), h * w)
        aspect = rng.uniform(0.75, 1.6)
        ch, cw = min(h, round((area / aspect) ** 0.5)), min(w, round((area * aspect) ** 0.5))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        buf = io.BytesIO()
        Image.fromarray(photo[y:y + ch, x:x + cw]).save(buf, "JPEG", quality=90)
        bg_id = content_hash(buf.getvalue())[:20]
        path = folder / f"{bg_id}.jpg"
        path.write_bytes(buf.getvalue())
        refs.append(BackgroundRef(bg_id, str(path), str(path)))
    return refs


def _best(fn: Any, repeat: int = 3) -> float:
    """Fastest of ``repeat`` runs, seconds (the least disturbed by other processes)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _cpu(fn: Any, repeat: int = 3) -> float:
    """Least CPU seconds of ``repeat`` runs (this process, all threads): what a run costs
    whatever else the machine is doing."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def floor_and_parts(out: Any, row: dict[str, Any], composites: list[dict[str, Any]],
                    cache: BackgroundCache, sample: int) -> dict[str, float]:
    """Seconds per composite, on ``sample`` of this portrait's composites: the floor (the
    blend, ``tasks/composite.composite``, + cv2 PNG level 1) and the build's parts alone."""
    fg = decode(Path(out.path(row["fg_uri"])).read_bytes(), "rgb")
    alpha = decode(Path(out.path(row["alpha_uri"])).read_bytes(), "grey")
    measured = [_parts(fg, alpha, CompositeRecipe.from_row(c), cache.ref(c["bg_id"]).source_path,
                       out.path("bench-write.png")) for c in composites[:sample]]
    return {k: sum(m[k] for m in measured) / len(measured) for k in measured[0]}


def _parts(fg: np.ndarray, alpha: np.ndarray, recipe: CompositeRecipe, source: str,
           target: str) -> dict[str, float]:
    data = Path(source).read_bytes()
    decode_fit = _best(lambda: recipe.fit(decode_image(data).image), 1)
    bg = recipe.fit(decode_image(data).image)
    pixels = comp.composite(fg, alpha, bg, recipe.mode)
    blend = _best(lambda: comp.composite(fg, alpha, bg, recipe.mode))
    png1 = _best(lambda: cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                                      [cv2.IMWRITE_PNG_COMPRESSION, 1]))
    floor_cpu = _cpu(lambda: cv2.imencode(".png", cv2.cvtColor(
        comp.composite(fg, alpha, bg, recipe.mode), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_PNG_COMPRESSION, 1]))
    encoded = recipe.encode(pixels)
    return {"floor": blend + png1, "blend": blend, "png1": png1, "floor_cpu": floor_cpu,
            "decode+fit": decode_fit,
            "render": _best(lambda: recipe.render(fg, alpha, bg)),
            "encode": _best(lambda: recipe.encode(pixels)),
            "sha256+write": _best(lambda: (content_hash(encoded),
                                           Path(target).write_bytes(encoded)))}


def composite_cpu(out: Any, row: dict[str, Any], cfg: BuildConfig,
                  cache: BackgroundCache) -> tuple[float, float]:
    """(wall, CPU) seconds per composite of the build's ``make_composites`` run again on this
    sample's stored fg and alpha; CPU counts every thread of the process (the writer's too),
    which is what a composite costs when every core is busy with another shard."""
    fg = decode(Path(out.path(row["fg_uri"])).read_bytes(), "rgb")
    alpha = decode(Path(out.path(row["alpha_uri"])).read_bytes(), "grey")
    wall, cpu = time.perf_counter(), time.process_time()
    rows = make_composites(row["sample_id"], fg, alpha, "train", cfg, cache,
                           locate(out.path("again")), row["fg_uri"], row["alpha_uri"])
    return ((time.perf_counter() - wall) / len(rows), (time.process_time() - cpu) / len(rows))


def run_config(name: str, megapixels: float, pool: int, sample: int) -> None:
    """--config: the build's per-sample path per portrait, stored and lazy composites."""
    work = Path(tempfile.mkdtemp(prefix="matteforge-stages-"))
    try:
        _run_config(name, megapixels, pool, sample, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_config(name: str, megapixels: float, pool: int, sample: int, work: Path) -> None:
    base = load_config(name, **{"run.torch_threads": 1})
    configs = {store: base.model_copy(update={"composite": base.composite.model_copy(
        update={"store": store})}) for store in (True, False)}
    seg = segmenter_for(base.segment)
    (work / "bg").mkdir()
    refs = background_pool(work / "bg", pool)
    cache = BackgroundCache(locate(str(work / "bg")), refs)
    images = {k: resize_to(v, megapixels) for k, v in portraits().items()}
    load_before = os.getloadavg()

    def run(image: np.ndarray, store: bool, folder: str) -> Any:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        group = ("0" * 16, "bench", "train")  # a training sample: per_foreground_train
        return process_sample(f"{folder}.png", buf.getvalue(), configs[store], seg, cache,
                              locate(str(work / folder)), None, group)

    run(resize_to(images["astronaut"], 0.05), True, "warm-up")  # model load, numba compile
    c = base.composite
    print(f"config {base.name}: {c.per_foreground_train} composites per training portrait "
          f"from a pool of {pool} backgrounds (crops of 0.3-2 MP), {c.mode} blend, {c.format}, "
          f"effects {c.effects or 'none'}; 1 torch thread; inputs resized to {megapixels} MP")
    shown = [s for s in STAGES if s != "composite"]
    print(f"{'portrait':>22} {'n':>4} " + " ".join(f"{s:>9}" for s in shown)
          + f" {'composite':>9} {'lazy comp':>9}   (seconds per portrait)")
    totals: dict[str, float] = {}
    per_composite: list[float] = []
    parts: list[dict[str, float]] = []
    again: list[tuple[float, float]] = []
    for key, image in images.items():
        stored = run(image, True, f"stored-{key}")
        lazy = run(image, False, f"lazy-{key}")
        assert stored.stages is not None and lazy.stages is not None
        if stored.stages.status != "ok":
            print(f"{key}: {stored.stages.status} {stored.stages.reason}, skipped")
            continue
        n = len(stored.composites)
        per_composite.append(stored.seconds["composite"] / n)
        row = stored.row(configs[True], seg)
        parts.append(floor_and_parts(locate(str(work / f"stored-{key}")), row,
                                     stored.composites, cache, sample))
        again.append(composite_cpu(locate(str(work / f"stored-{key}")), row, configs[True],
                                   cache))
        for stage, secs in stored.seconds.items():
            totals[stage] = totals.get(stage, 0.0) + secs
        lazy_total = sum(lazy.seconds.values())
        totals["lazy_build"] = totals.get("lazy_build", 0.0) + lazy_total
        totals["lazy_composite"] = totals.get("lazy_composite", 0.0) + lazy.seconds["composite"]
        model = sum(lazy.seconds[s] for s in ("segment", "trimap", "alpha", "foreground"))
        totals["model_alpha_fg"] = totals.get("model_alpha_fg", 0.0) + model
        print(f"{key[:22]:>22} {n:>4} " + " ".join(f"{stored.seconds[s]:>9.3f}" for s in shown)
              + f" {stored.seconds['composite']:>9.3f} {lazy.seconds['composite']:>9.3f}")
    count = len(per_composite)
    if not count:
        return
    mean = {k: v / count for k, v in totals.items()}
    print(f"{'mean':>22} {'':>4} " + " ".join(f"{mean[s]:>9.3f}" for s in shown)
          + f" {mean['composite']:>9.3f} {mean['lazy_composite']:>9.3f}")
    part = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
    cost = sum(per_composite) / count
    print(f"\nstored composites: {cost * 1000:.1f} ms each (make_composites, all of them); "
          f"floor {part['floor'] * 1000:.1f} ms (composite() {part['blend'] * 1000:.1f} + "
          f"PNG level 1 {part['png1'] * 1000:.1f}, {sample} per portrait, same run): "
          f"ratio {cost / part['floor']:.2f} (target <= 1.5)")
    wall, cpu = (sum(a[i] for a in again) / len(again) for i in (0, 1))
    print(f"  make_composites again on the stored fg and alpha: {wall * 1000:.1f} ms wall "
          f"(ratio {wall / part['floor']:.2f}), {cpu * 1000:.1f} ms CPU of all threads, "
          f"against the floor's {part['floor_cpu'] * 1000:.1f} ms CPU: ratio "
          f"{cpu / part['floor_cpu']:.2f} (what counts when every core is busy)")
    print(f"  parts, measured alone: background decode + fit {part['decode+fit'] * 1000:.1f} "
          f"ms (when not cached), render {part['render'] * 1000:.1f}, encode "
          f"{part['encode'] * 1000:.1f}, sha256 + write {part['sha256+write'] * 1000:.1f} "
          "(encode, hash and write run on a background thread)")
    model = mean["model_alpha_fg"]
    print(f"lazy build (composite.store: false): {mean['lazy_build']:.2f} s per portrait, "
          f"model + alpha + foreground {model:.2f} s (segment+trimap+alpha+foreground): ratio "
          f"{mean['lazy_build'] / model:.2f} (target <= 1.3)")
    print(f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 2.0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--config", help="run the build's per-sample path with this config "
                        "(packaged name or YAML), e.g. comp1k")
    parser.add_argument("--megapixels", type=float, default=0.7, help="--config: input size")
    parser.add_argument("--pool", type=int, default=100, help="--config: backgrounds")
    parser.add_argument("--floor-sample", type=int, default=8,
                        help="--config: composites per portrait the floor is measured on")
    args = parser.parse_args()
    configure_threads(1)  # torch, BLAS and numba on one thread, as each worker runs them
    if args.config:
        run_config(args.config, args.megapixels, args.pool, args.floor_sample)
        return
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
