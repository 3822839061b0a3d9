"""Build throughput on 1 and 2 Dask workers, and Prefect's per-task overhead against shard size.

    python benchmarks/scale.py [--images 12] [--side 384] [--workers 1 2] [--tiny 32] [--repeat 3]

Everything runs as a user would run it: a ``prefect server``, a ``dask scheduler`` and N ``dask
worker`` processes (one thread each) on loopback, and ``matteforge build --dask-address``.

* Throughput: ``--images`` distinct portraits (the scikit-image astronaut and cameraman, resized to
  ``--side`` px and mirrored/shifted so every file has its own hash), one image per shard, on a
  cluster warmed by a throwaway build first (so model loading is not counted), ``--repeat``
  times.  Reported as images/s over the flow's own wall time (listing inputs and the flow's start
  included): every run and the best, since other load on a shared machine only slows runs down.
* Overhead: ``--tiny`` 16x16 PNGs, which ingest rejects at once (``too_small``), on 1 worker with
  shard sizes 1, 4 and ``--tiny``: nearly all the time is Prefect + Dask per task, so
  (wall - wall at one shard) / (tasks - 1) is the cost of one more task.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from matteforge.demo import prepare_demo_data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import loopback


def make_portraits(folder: Path, count: int, side: int) -> None:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    sources = [data.astronaut(), np.stack([data.camera()] * 3, axis=-1)]
    for i in range(count):
        image = Image.fromarray(sources[i % 2]).resize((side + i // 2, side))  # distinct bytes
        if (i // 2) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"portrait-{i:03d}.png")


def make_tiny(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (16, 16), (i, 255 - i, 7)).save(folder / f"tiny-{i:03d}.png")


def build(env: dict[str, str], address: str, inputs: Path, backgrounds: Path, out: Path,
          shard_size: int) -> dict:
    """One ``matteforge build`` on the cluster; returns the summary it prints."""
    argv = [sys.executable, "-m", "matteforge.cli", "build", "--config", "demo", "--input",
            str(inputs), "--backgrounds", str(backgrounds), "--output", str(out),
            "--dask-address", address, "--shard-size", str(shard_size), "--mode", "overwrite"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    text = proc.stdout
    return json.loads(text[text.index("{", text.index("dataset written to")):])


def run_on_cluster(n_workers: int, root: Path, env: dict[str, str], jobs: list[tuple[str, Path,
                   int]], backgrounds: Path, warmup: Path) -> dict[str, dict]:
    """Start a scheduler and ``n_workers`` workers, warm them, run ``jobs``, stop them."""
    from distributed import Client

    logs = root / f"dask-{n_workers}"
    services: list[loopback.Service] = []
    try:
        scheduler, address = loopback.start_dask_scheduler(logs, env)
        services.append(scheduler)
        services += [loopback.start_dask_worker(address, f"w{i}", logs, env)
                     for i in range(n_workers)]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=loopback.STARTUP_SECONDS)
        build(env, address, warmup, backgrounds, root / "warm", 1)
        return {name: build(env, address, inputs, backgrounds, root / f"out-{name}", size)
                for name, inputs, size in jobs}
    finally:
        for service in reversed(services):
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tiny", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="matteforge-scale-") as tmp:
        root = Path(tmp)
        demo, backgrounds = prepare_demo_data(root / "demo")
        make_portraits(root / "portraits", args.images, args.side)
        make_tiny(root / "tiny", args.tiny)
        server, url = loopback.start_prefect_server(root / "prefect", root / "logs")
        env = loopback.prefect_env(root / "prefect", url)
        env.update(OMP_NUM_THREADS="1", DASK_LOGGING__DISTRIBUTED="warning")
        try:
            print(f"machine: {os.cpu_count()} cores; {args.images} portraits of "
                  f"~{args.side}x{args.side} px, one per shard; demo config")
            for n in args.workers:
                jobs = [(f"portraits-{i}", root / "portraits", 1) for i in range(args.repeat)]
                if n == 1:
                    sizes = sorted({1, 4, args.tiny})
                    jobs += [(f"tiny-{s}", root / "tiny", s) for s in sizes]
                result = run_on_cluster(n, root, env, jobs, backgrounds, demo)
                runs = [v for k, v in result.items() if k.startswith("portraits-")]
                rates = ", ".join(f"{r['images_per_second']:.3f}" for r in runs)
                best = max(runs, key=lambda r: r["images_per_second"])
                print(f"{n} worker(s): {best['samples']} images {best['by_status']}; images/s "
                      f"{rates}; best {best['images_per_second']:.3f} ({best['seconds']:.1f} s)")
                if n == 1:
                    report_overhead({k: v for k, v in result.items() if k.startswith("tiny-")},
                                    args.tiny)
        finally:
            server.stop()


def report_overhead(runs: dict[str, dict], n_items: int) -> None:
    walls = {n_items // int(k.split("-")[1]): v["seconds"] for k, v in runs.items()}
    print(f"overhead ({n_items} inputs rejected at ingest, 1 worker):")
    for tasks, wall in sorted(walls.items()):
        print(f"  {tasks:3d} task(s) of {n_items // tasks:3d}: flow {wall:6.2f} s, "
              f"{wall / n_items * 1000:7.1f} ms/input")
    tasks_, walls_ = zip(*sorted(walls.items()), strict=True)
    slope, intercept = np.polyfit(tasks_, walls_, 1)
    print(f"  least-squares: {slope * 1000:.0f} ms per task + {intercept:.2f} s per flow run")


if __name__ == "__main__":
    main()
