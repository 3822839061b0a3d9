"""Portraits/s end to end and per stage, CPU against CUDA, on the build's own per-sample path.

    python benchmarks/gpu.py [--images 4] [--megapixels 1.0] [--config NAME]
                             [--devices cpu cuda] [--torch-cpu]

Each device runs the same portraits through a shard's own path, ``steps/shard.process_samples``
(decode, the models, trimap, alpha, foreground, quality, files, 2 composites per portrait by
default) with ``segment.device``, ``segment.batch_size`` and ``alpha.device`` set for it:

* ``cpu``: the tested default (models on the CPU one portrait at a time, the alpha by scipy CG
  with AMG, the foreground by pymatting);
* ``cuda``: models on the GPU in batches of up to 8 portraits (torch; MODNet by onnxruntime's
  CUDA provider when installed), the alpha by torch's Jacobi CG and the foreground by the torch
  multi-level estimator on the GPU; skipped with a message where torch sees no GPU;
* ``torch-cpu`` (``--torch-cpu``): the CUDA branch's code on torch's CPU device, so a machine
  without a GPU runs what a GPU machine would (the tests do).

Printed per device: portraits/s over the timed portraits (one untimed first portrait per device
pays the model load and CUDA start-up), seconds per portrait by stage, each stage against the
CPU's, and how far its alphas and foregrounds are from the CPU's (max |Δ| in 8-bit levels and the
share of pixels that differ). Quality figures, composites (an integer blend, ~4 ms at 0.7 MP,
against a PNG encode that only a CPU does) and writes run on the CPU on every device.  Inputs:
``--images`` portraits of ../shared/data (P3M figures, then the portraits) when present, else
scikit-image's astronaut, resized to ``--megapixels``; the weights are fetched before anything
is timed. Made to finish within 5 minutes unattended on a lent GPU machine with
the defaults (about 1 minute here on 2 CPU cores for the CPU device).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from matteforge.config import BuildConfig, load_config
from matteforge.dataset.codec import decode
from matteforge.dataset.manifest import STAGES
from matteforge.dataset.storage import Location, list_file_sizes, locate
from matteforge.demo import prepare_demo_data
from matteforge.steps.backgrounds import index_backgrounds
from matteforge.steps.shard import BackgroundCache, process_sample, process_samples
from matteforge.tasks.segment import GPU_BATCH, batch_size, segmenter_for

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEVICES = {  # label: (segment.device, alpha.device)
    "cpu": ("cpu", None),
    "cuda": ("cuda", "cuda"),
    "torch-cpu": ("cpu", "cpu"),
}


@dataclass
class DeviceRun:
    """What one device did with the portraits."""

    label: str
    wall: float = 0.0
    portraits: int = 0
    stages: dict[str, float] = field(default_factory=dict)  # total seconds per stage
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # alpha, fg
    statuses: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.portraits / self.wall if self.wall else 0.0

    def per_portrait(self, stage: str) -> float:
        return self.stages.get(stage, 0.0) / max(1, self.portraits)


def portrait_files(count: int, megapixels: float) -> list[tuple[str, bytes]]:
    """``count`` PNG-encoded portraits of ~``megapixels``: real ones first, the astronaut last."""
    paths = sorted((SHARED / "p3m_figure_gt" / "image").glob("*.png"))
    paths += sorted(p for p in (SHARED / "portraits").glob("*") if p.suffix in (".jpg", ".png"))
    images = [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in paths[:count]]
    if len(images) < count:
        from skimage import data

        astronaut = data.astronaut()
        images += [(f"astronaut-{i}", astronaut[:, ::-1] if i % 2 else astronaut)
                   for i in range(count - len(images))]
    files = []
    for name, image in images:
        h, w = image.shape[:2]
        scale = (megapixels * 1e6 / (h * w)) ** 0.5
        resized = cv2.resize(image, (max(32, round(w * scale)), max(32, round(h * scale))),
                             interpolation=cv2.INTER_CUBIC)
        buf = io.BytesIO()
        Image.fromarray(resized).save(buf, format="PNG")
        files.append((name, buf.getvalue()))
    return files


def device_config(base: BuildConfig, label: str) -> BuildConfig:
    """The base recipe on one device: the CUDA branch (and its CPU stand-in) batches the models."""
    segment_device, alpha_device = DEVICES[label]
    batch = None if alpha_device is None else GPU_BATCH
    return base.model_copy(update={
        "segment": base.segment.model_copy(update={"device": segment_device,
                                                   "batch_size": batch}),
        "alpha": base.alpha.model_copy(update={"device": alpha_device}),
    })


def run_device(label: str, base: BuildConfig, files: list[tuple[str, bytes]],
               backgrounds: Path, work: Path) -> DeviceRun:
    """The portraits through the build's own per-sample path on one device."""
    cfg = device_config(base, label)
    seg = segmenter_for(cfg.segment)
    out = locate(str(work / label))
    src = locate(str(backgrounds))
    _, refs = index_backgrounds(list_file_sizes(src), src, out, copy=False,
                                max_pixels=cfg.ingest.max_pixels, max_bytes=cfg.ingest.max_bytes)
    cache = BackgroundCache(src, refs)
    process_sample("warm-up", files[0][1], cfg, seg, cache, out)  # loads, CUDA start-up
    run = DeviceRun(label)
    started = time.perf_counter()
    inputs = [(name, data, None) for name, data in files]
    for (name, _), (_, row) in zip(files, process_samples(inputs, cfg, seg, cache, out,
                                                          batch_size(cfg.segment)), strict=True):
        run.statuses.append(f"{row['status']}{':' + row['reason'] if row['reason'] else ''}")
        for stage in STAGES:
            run.stages[stage] = run.stages.get(stage, 0.0) + (row.get(f"seconds_{stage}") or 0.0)
        if row.get("alpha_uri"):
            run.outputs[name] = (_read(out, row["alpha_uri"], "grey"),
                                 _read(out, row["fg_uri"], "rgb"))
    run.wall = time.perf_counter() - started
    run.portraits = len(files)
    return run


def _read(out: Location, rel: str, mode: str) -> np.ndarray:
    return decode(Path(out.path(rel)).read_bytes(), mode)


def difference(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None
               ) -> tuple[int, float, float]:
    """(max |a − b| in 8-bit levels, share of values that differ, mean |a − b|), over the
    pixels ``where`` is true when given (a foreground matters only where α > 0)."""
    delta = np.abs(a.astype(np.int16) - b.astype(np.int16))
    if where is not None:
        delta = delta[where]
    if delta.size == 0:
        return 0, 0.0, 0.0
    return int(delta.max()), float((delta > 0).mean()), float(delta.mean())


def visible(alpha: np.ndarray) -> np.ndarray:
    """Pixels where a foreground shows in a composite (α > 0.1)."""
    return alpha > 25


def report(runs: list[DeviceRun]) -> None:
    reference = runs[0]
    print(f"\n{'':14s}" + "".join(f"{r.label:>22s}" for r in runs))
    print(f"{'portraits/s':14s}" + "".join(
        f"{r.rate:13.3f} ({r.rate / reference.rate:4.2f}x)" for r in runs))
    for stage in STAGES:
        cells = []
        for r in runs:
            base = reference.per_portrait(stage)
            ratio = f"({base / r.per_portrait(stage):4.2f}x)" if r.per_portrait(stage) else ""
            cells.append(f"{r.per_portrait(stage):13.3f} {ratio:>8s}")
        print(f"{stage + ' s':14s}" + "".join(cells))
    print("(Nx: how many times faster than the first device; quality, composite and write run "
          "on the CPU everywhere)")
    for r in runs[1:]:
        for name, (alpha, fg) in r.outputs.items():
            if name not in reference.outputs:
                continue
            ra, rf = reference.outputs[name]
            (am, ash, _), (fm, fsh, fmean) = difference(alpha, ra), difference(fg, rf, visible(ra))
            print(f"{r.label} vs {reference.label}, {name}: alpha max |Δ| {am} "
                  f"({ash:.2%} of pixels), foreground where α > 0.1: max |Δ| {fm}, "
                  f"mean {fmean:.2f} ({fsh:.2%} differ)")
    for r in runs:
        print(f"{r.label}: {', '.join(r.statuses)}")


def main(argv: list[str] | None = None) -> list[DeviceRun]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--megapixels", type=float, default=1.0)
    parser.add_argument("--config", default=None, help="a config name or file (default recipe)")
    parser.add_argument("--composites", type=int, default=2, help="per portrait")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=list(DEVICES))
    parser.add_argument("--torch-cpu", action="store_true",
                        help="also run the CUDA branch's code on torch's CPU device")
    args = parser.parse_args(argv)
    base = BuildConfig() if args.config is None else load_config(args.config)
    base = base.model_copy(update={"composite": base.composite.model_copy(update={
        "per_foreground_train": args.composites, "per_foreground_test": args.composites})})
    labels = list(dict.fromkeys([*args.devices, *(["torch-cpu"] if args.torch_cpu else [])]))
    if "cuda" in labels and not torch.cuda.is_available():
        print("torch sees no CUDA device: the cuda column is skipped (CPU figures only)")
        labels.remove("cuda")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.images} portrait(s) of ~{args.megapixels:g} MP, {args.composites} "
          f"composite(s) each; devices: {', '.join(labels)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="matteforge-gpu-") as tmp:
        work = Path(tmp)
        _, backgrounds = prepare_demo_data(work / "demo")
        files = portrait_files(args.images, args.megapixels)
        segmenter_for(base.segment)  # fetch and check the weights before any clock starts
        runs = []
        for label in labels:
            started = time.perf_counter()
            runs.append(run_device(label, base, files, backgrounds, work))
            print(f"{label}: done in {time.perf_counter() - started:.1f} s", flush=True)
    report(runs)
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
