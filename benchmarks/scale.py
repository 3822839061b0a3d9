"""Scale-out: images/s on 1 and 2 Dask workers, peak RSS per worker at 12 MP, time outside stages.

    python benchmarks/scale.py [--images 12] [--side 384] [--workers 1 2] [--repeat 3]
                               [--tiny 32] [--rss-images 2] [--rss-side 4000]
                               [--skip-speedup] [--skip-overhead] [--skip-rss]

Everything runs as a user would run it: a ``prefect server``, a ``dask scheduler`` and N ``dask
worker`` processes (``--nthreads 1`` each) on loopback, and ``matteforge build --config demo
--dask-address``.  Every process gets one BLAS/OpenMP/OpenCV thread (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENCV_FOR_THREADS_NUM`` = 1), so a worker is
one core's worth of work and N workers are compared on the same terms.  Timings are printed,
never checked; the targets are printed beside them.  The load average is printed at the start
and the end: on a shared machine other load only slows runs down, which is why the best run
counts.  The defaults took 686 s on the project's 2-core machine (2026-12-07); ``--repeat 2``,
``--skip-overhead`` or ``--rss-images 1`` make it shorter, ``--skip-speedup``/``--skip-rss`` run
one half.

It prints four parts:

* **Speed-up** (target ≥ 1.8× for 2 workers over 1): ``--images`` distinct portraits (the
  scikit-image astronaut and cameraman, resized to ~``--side`` px and mirrored/shifted so every
  file has its own hash), one image per shard, so every worker has work.  One cluster per
  worker count, all up at once; each is warmed by the same throwaway build (the first 2 × the
  most workers of those portraits: models loaded and Prefect's engine started on every worker;
  a worker that got no warm-up task is named), then ``--repeat`` rounds of timed builds
  alternate between the clusters (1, 2, 1, 2, …), so load that comes and goes on a shared
  machine falls on every worker count alike (an idle cluster costs only its heartbeats).
  images/s = images / the flow's own wall time (from the start of the ``build-dataset`` flow
  to its summary: the flow process loading the mask models, planning, listing and the manifest
  included, the CLI's start and the flow run's creation not).  Printed per worker count:
  every run, the best, how many Dask tasks each worker ran, and the CPU seconds each process
  spent in the best run (each worker with its nanny, the ``matteforge build`` process with its
  children over its whole life, the Prefect server, the scheduler) against wall × cores, which
  shows where the cores went; a worker that needs more CPU seconds per image with 2 workers
  than with 1 is slowed by its neighbour (shared caches and memory bandwidth), not by
  waiting.  Then the ratio of the best runs (and of the medians) against the fewest workers, and
  the machine's ceiling: the ratio there would be if only the stages took time, from the stage
  seconds the two best runs' manifests record (on the project's 2-vCPU machine two busy
  workers each run the models ~10-20 % slower than one alone, so the ceiling is ~1.65x).
* **Time outside the stages**: for the best run of each worker count (and the 12 MP run),
  stage s = the sum of every manifest row's ``seconds_<stage>`` (ingest … write), task s = the
  ``process-shard`` tasks' own wall time (``stats.json``: ``dataset.task_seconds``), worker s =
  flow wall × workers.  Shares of worker s: *in stages*; *in tasks, not stages* (opening the
  storage, the model lookup, committing the shard's manifest files); *outside tasks* = 1 −
  task/worker s (Prefect's task engine, Dask scheduling, the flow's own steps before and after
  the shards, and a worker idle while another finishes).  *outside the stages* is their sum,
  1 − stage/(wall × workers).
* **Overhead** (1 worker): ``--tiny`` 16x16 PNGs, which ingest rejects at once (``too_small``),
  with shard sizes 1, 4 and ``--tiny``: nearly all the time is Prefect + Dask per task, so the
  least-squares slope of flow wall against tasks is the cost of one more task.
* **Peak RSS at 12 MP** (target ≤ 2 GiB per worker): ``--rss-images`` portraits upscaled to
  ``--rss-side`` × ¾ ``--rss-side`` px (4000x3000 = 12 MP), one per shard, on a fresh 1-worker
  cluster warmed by the demo build.  A thread reads ``VmHWM`` (the kernel's peak resident set)
  from ``/proc/<pid>/status`` of every process under each ``dask worker`` nanny every 0.25 s
  and once at the end; the worker process's value is printed in GiB (with its resident set
  after the warm-up), and a worker the nanny restarted is named; if the build fails (a worker
  killed for memory), its error is printed and the peaks still are.  Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from matteforge.dataset import manifest
from matteforge.dataset.snapshot import Manifest
from matteforge.dataset.storage import locate
from matteforge.demo import prepare_demo_data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import loopback

GiB = 1024**3
SPEEDUP_TARGET = 1.8  # issue 19: 2 workers over 1
RSS_TARGET_GIB = 2.0  # issue 19: peak resident set per worker at 12 MP
ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "OPENCV_FOR_THREADS_NUM")


def make_portraits(folder: Path, count: int, width: int, height: int) -> None:
    """``count`` portraits of ~``width`` x ``height`` px, each file with its own bytes."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    sources = [data.astronaut(), np.stack([data.camera()] * 3, axis=-1)]
    for i in range(count):
        image = Image.fromarray(sources[i % 2]).resize((width + i // 2, height),
                                                        Image.Resampling.BICUBIC)
        if (i // 2) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"portrait-{i:03d}.png")


def make_tiny(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (16, 16), (i, 255 - i, 7)).save(folder / f"tiny-{i:03d}.png")


# --- processes: CPU seconds and peak resident set ----------------------------------------------

def _tree(root: int) -> list[psutil.Process]:
    try:
        top = psutil.Process(root)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and every live process under it."""
    total = 0.0
    for proc in _tree(root):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def status_bytes(pid: int, key: str) -> int | None:
    """``VmHWM``/``VmRSS`` of ``pid`` from /proc (Linux), in bytes; None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakWatch:
    """Peak resident set (VmHWM) of each worker process, sampled under each nanny."""

    def __init__(self, nannies: dict[str, int], every: float = 0.25) -> None:
        self.nannies = nannies  # worker name → pid of its `dask worker` (nanny) process
        self.peaks: dict[str, dict[int, int]] = {name: {} for name in nannies}  # name → pid → B
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        for name, nanny in self.nannies.items():
            for proc in _tree(nanny)[1:]:  # the nanny's children: the worker (and its helpers)
                hwm = status_bytes(proc.pid, "VmHWM")
                if hwm is not None:
                    seen = self.peaks[name]
                    seen[proc.pid] = max(seen.get(proc.pid, 0), hwm)

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()

    def __enter__(self) -> PeakWatch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def worker_peak(self, name: str) -> tuple[int, int]:
        """(largest VmHWM under the nanny, processes seen that held ≥ 100 MiB): the worker's
        peak, and more than one such process means the nanny restarted it."""
        seen = self.peaks[name]
        return max(seen.values(), default=0), sum(v >= 100 * 2**20 for v in seen.values())


# --- builds on a loopback cluster ---------------------------------------------------------------

@dataclass
class Run:
    """One timed ``matteforge build``: what it printed, where it wrote, what it cost."""

    summary: dict[str, Any]
    out: Path
    workers: int
    cpu: dict[str, float] = field(default_factory=dict)  # process → CPU seconds during the run
    tasks: dict[str, int] = field(default_factory=dict)  # worker name → tasks it ran
    command_wall: float = 0.0  # the whole `matteforge build` process, its start included

    @property
    def rate(self) -> float:
        return float(self.summary["images_per_second"])

    @property
    def wall(self) -> float:
        return float(self.summary["seconds"])


def _executed(dask_worker: Any) -> int:
    return int(dask_worker.state.executed_count)


class Cluster:
    """A ``dask scheduler`` and ``n`` ``dask worker`` processes on loopback (a context)."""

    def __init__(self, n: int, root: Path, env: dict[str, str], server: loopback.Service,
                 backgrounds: Path) -> None:
        self.n, self.root, self.env, self.backgrounds = n, root, env, backgrounds
        self.server = server
        self.services: list[loopback.Service] = []
        self.workers: dict[str, loopback.Service] = {}

    def __enter__(self) -> Cluster:
        from distributed import Client

        logs = self.root / f"dask-{self.n}"
        try:
            self.scheduler, self.address = loopback.start_dask_scheduler(logs, self.env)
            self.services.append(self.scheduler)
            for i in range(self.n):
                worker = loopback.start_dask_worker(self.address, f"w{i}", logs, self.env)
                self.services.append(worker)
                self.workers[worker.name] = worker
            self.client = Client(self.address, timeout=60)
            self.client.wait_for_workers(self.n, timeout=loopback.STARTUP_SECONDS)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if hasattr(self, "client"):
            self.client.close()
        for service in reversed(self.services):
            service.stop()

    def tasks_run(self) -> dict[str, int]:
        """Tasks each worker has run so far, by worker name."""
        names = {addr: w["name"] for addr, w in self.client.scheduler_info()["workers"].items()}
        return dict(sorted((names[addr], n) for addr, n in self.client.run(_executed).items()))

    def worker_rss(self) -> dict[str, int]:
        """Each worker process's resident set now (bytes), by worker name."""
        names = {addr: w["name"] for addr, w in self.client.scheduler_info()["workers"].items()}
        pids = self.client.run(os.getpid)
        return {names[addr]: status_bytes(pid, "VmRSS") or 0 for addr, pid in pids.items()}

    def build(self, inputs: Path, out: Path, shard_size: int) -> Run:
        """One ``matteforge build`` on this cluster, with the CPU each process spent on it."""
        argv = [sys.executable, "-m", "matteforge.cli", "build", "--config", "demo", "--input",
                str(inputs), "--backgrounds", str(self.backgrounds), "--output", str(out),
                "--dask-address", self.address, "--shard-size", str(shard_size),
                "--mode", "overwrite"]
        roots = {"Prefect server": self.server.proc.pid, "scheduler": self.scheduler.proc.pid,
                 **{name: w.proc.pid for name, w in self.workers.items()}}
        tasks_before = self.tasks_run()
        cpu_before = {name: cpu_seconds(pid) for name, pid in roots.items()}
        own, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=3600)
        done, command_wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in roots.items()}
        cpu["build command"] = (done.ru_utime + done.ru_stime) - (own.ru_utime + own.ru_stime)
        tasks = {k: v - tasks_before.get(k, 0) for k, v in self.tasks_run().items()}
        text = proc.stdout
        summary = json.loads(text[text.index("{", text.index("dataset written to")):])
        return Run(summary, out, self.n, cpu, tasks, command_wall)


# --- reading a built dataset -------------------------------------------------------------------

@dataclass
class TimeSplit:
    """Where a build's worker time went (seconds)."""

    stages: dict[str, float]
    task: float
    wall: float
    workers: int

    @classmethod
    def of(cls, run: Run) -> TimeSplit:
        rows = Manifest.load(locate(str(run.out))).rows("samples")
        stages = {s: sum(r.get(f"seconds_{s}") or 0.0 for r in rows) for s in manifest.STAGES}
        stats = json.loads((run.out / manifest.STATS_FILE).read_text())
        return cls(stages, float(stats["dataset"]["task_seconds"]), run.wall, run.workers)

    @property
    def stage(self) -> float:
        return sum(self.stages.values())

    @property
    def worker(self) -> float:
        return self.wall * self.workers


def print_time_split(splits: dict[str, TimeSplit]) -> None:
    print("time outside the stages (stage s: manifest seconds_<stage> summed; task s: "
          "process-shard tasks, stats.json; worker s: flow wall x workers):")
    print(f"  {'run':<18} {'wall s':>7} {'worker s':>8} {'task s':>7} {'stage s':>7} "
          f"{'in stages':>10} {'in tasks,':>10} {'outside':>10} {'outside':>10}")
    print(f"  {'':<18} {'':>7} {'':>8} {'':>7} {'':>7} {'':>10} {'not stages':>10} "
          f"{'tasks':>10} {'the stages':>10}")
    for label, s in splits.items():
        w = s.worker
        print(f"  {label:<18} {s.wall:7.2f} {w:8.2f} {s.task:7.2f} {s.stage:7.2f} "
              f"{s.stage / w:10.1%} {(s.task - s.stage) / w:10.1%} {1 - s.task / w:10.1%} "
              f"{1 - s.stage / w:10.1%}")
    for label, s in splits.items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in s.stages.items() if v >= 0.005)
        print(f"  {label} stage seconds: {parts}")


# --- the four parts ----------------------------------------------------------------------------

def speedup(args: argparse.Namespace, root: Path, env: dict[str, str],
            server: loopback.Service, backgrounds: Path) -> dict[str, TimeSplit]:
    portraits = root / "portraits"
    make_portraits(portraits, args.images, args.side, args.side)
    print(f"speed-up: {args.images} portraits of ~{args.side}x{args.side} px, one per shard; "
          f"the same inputs and warm-up for every cluster; timed builds alternate between them")
    if args.images < 2 * max(args.workers):
        print(f"  note: fewer than 2 images per worker ({args.images} for "
              f"{max(args.workers)}), so the last shards leave workers idle")
    warm = root / "warm-portraits"
    make_portraits(warm, min(args.images, 2 * max(args.workers)), args.side, args.side)
    runs: dict[int, list[Run]] = {n: [] for n in args.workers}
    idle: dict[int, list[str]] = {}
    tiny: dict[int, Run] = {}
    with contextlib.ExitStack() as stack:
        clusters = {n: stack.enter_context(Cluster(n, root, env, server, backgrounds))
                    for n in args.workers}
        for n, cluster in clusters.items():
            cluster.build(warm, root / f"warm-{n}", 1)
            idle[n] = [name for name, count in cluster.tasks_run().items() if count == 0]
        for i in range(args.repeat):
            for n, cluster in clusters.items():
                runs[n].append(cluster.build(portraits, root / f"out-{n}-{i}", 1))
        if 1 in clusters and not args.skip_overhead and args.tiny > 0:
            make_tiny(root / "tiny", args.tiny)
            tiny = {s: clusters[1].build(root / "tiny", root / f"tiny-{s}", s)
                    for s in sorted({1, 4, args.tiny})}
    best: dict[int, Run] = {}
    medians: dict[int, float] = {}
    for n in args.workers:
        top = best[n] = max(runs[n], key=lambda r: r.rate)
        medians[n] = statistics.median(r.rate for r in runs[n])
        label = f"{n} worker{'s' if n > 1 else ''}"
        rates = ", ".join(f"{r.rate:.3f}" for r in runs[n])
        print(f"  {label:<9}: images/s {rates}; best {top.rate:.3f} ({top.summary['samples']} "
              f"images {top.summary['by_status']} in {top.wall:.1f} s; Dask tasks per worker "
              f"{_per_worker(top.tasks)})")
        if idle[n]:
            print(f"    warning: {', '.join(idle[n])} ran no task in the warm-up build")
        print_cpu(top, args.cores)
        if tiny and n == 1:
            report_overhead(tiny, args.tiny)
    base = min(best)
    splits = {n: TimeSplit.of(best[n]) for n in sorted(best)}
    for n in sorted(best):
        if n == base:
            continue
        target = (f"target >= {SPEEDUP_TARGET}x" if (n, base) == (2, 1)
                  else f"ideal {n / base:.1f}x")
        print(f"  {n} vs {base} worker(s): {best[n].rate / best[base].rate:.2f}x best/best, "
              f"{medians[n] / medians[base]:.2f}x median/median ({target}); the machine's "
              f"ceiling {machine_ceiling(splits[base], splits[n]):.2f}x")
    print("  (ceiling: the speed-up if nothing but the stages took time, n/base x the stage "
          "seconds per image with base workers over those with n: cores that slow each "
          "other down, sharing caches, memory bandwidth or a host core, lower it below n/base)")
    return {f"{n} worker(s), best": split for n, split in splits.items()}


def machine_ceiling(base: TimeSplit, more: TimeSplit) -> float:
    """The speed-up of ``more`` workers over ``base`` if only the stages took time: how much
    more work the cores do together, from the stage seconds each run's manifest records."""
    return (more.workers / base.workers) * (base.stage / more.stage)


def _per_worker(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def print_cpu(run: Run, cores: int) -> None:
    workers = {k: v for k, v in run.cpu.items() if k in run.tasks}
    others = {k: v for k, v in run.cpu.items() if k not in run.tasks}
    total, on_workers = sum(run.cpu.values()), sum(workers.values())
    images = max(int(run.summary["samples"]), 1)
    print(f"    CPU s in that run (wall x {cores} cores = {run.wall * cores:.1f}; counted "
          f"{total:.1f}): workers {_per_worker({k: round(v, 1) for k, v in workers.items()})} "
          f"= {on_workers / run.wall:.2f} cores busy, {on_workers / images:.2f} s per image; "
          + ", ".join(f"{k} {v:.1f}" for k, v in others.items())
          + f" (in {run.command_wall:.1f} s, its start included)")


def report_overhead(runs: dict[int, Run], n_items: int) -> None:
    walls = {n_items // size: run.wall for size, run in runs.items()}
    print(f"  overhead ({n_items} inputs rejected at ingest, 1 worker):")
    for tasks, wall in sorted(walls.items()):
        print(f"    {tasks:3d} task(s) of {n_items // tasks:3d}: flow {wall:6.2f} s, "
              f"{wall / n_items * 1000:7.1f} ms/input")
    tasks_, walls_ = zip(*sorted(walls.items()), strict=True)
    slope, intercept = np.polyfit(tasks_, walls_, 1)
    print(f"    least-squares: {slope * 1000:.0f} ms per task + {intercept:.2f} s per flow run")


def peak_rss(args: argparse.Namespace, root: Path, env: dict[str, str],
             server: loopback.Service, demo: Path, backgrounds: Path) -> dict[str, TimeSplit]:
    width, height = args.rss_side, args.rss_side * 3 // 4
    big = root / "big"
    make_portraits(big, args.rss_images, width, height)
    print(f"peak RSS: {args.rss_images} portraits of ~{width}x{height} px "
          f"({width * height / 1e6:.1f} MP), one per shard, 1 worker warmed by the demo build")
    with Cluster(1, root, env, server, backgrounds) as cluster:
        nannies = {name: w.proc.pid for name, w in cluster.workers.items()}
        with PeakWatch(nannies) as watch:
            cluster.build(demo, root / "warm-rss", 1)
            after_warmup = cluster.worker_rss()
            try:
                run: Run | None = cluster.build(big, root / "out-rss", 1)
            except RuntimeError as exc:
                run = None
                print(f"  the build failed: {str(exc)[-1500:]}")
    if run is not None:
        print(f"  images/s {run.rate:.3f} ({run.summary['samples']} images "
              f"{run.summary['by_status']} in {run.wall:.1f} s)")
        print_cpu(run, args.cores)
    for name in nannies:
        peak, processes = watch.worker_peak(name)
        verdict = "met" if peak / GiB <= RSS_TARGET_GIB else "NOT met"
        restarted = f"; restarted: {processes} worker processes" if processes > 1 else ""
        print(f"  {name}: peak RSS {peak / GiB:.2f} GiB (VmHWM of the worker process; "
              f"{after_warmup.get(name, 0) / GiB:.2f} GiB after the warm-up{restarted}); target "
              f"<= {RSS_TARGET_GIB:g} GiB: {verdict}")
    return {} if run is None else {f"1 worker, {width * height / 1e6:.1f} MP": TimeSplit.of(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=12, help="portraits for the speed-up")
    parser.add_argument("--side", type=int, default=384, help="their side in px")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="timed builds per worker count")
    parser.add_argument("--tiny", type=int, default=32, help="rejected inputs for the overhead")
    parser.add_argument("--rss-images", type=int, default=2, help="portraits for the RSS run")
    parser.add_argument("--rss-side", type=int, default=4000, help="their long side in px")
    parser.add_argument("--skip-speedup", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    args.workers = sorted(set(args.workers))
    args.cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory(prefix="matteforge-scale-") as tmp:
        root = Path(tmp)
        demo, backgrounds = prepare_demo_data(root / "demo")
        server, url = loopback.start_prefect_server(root / "prefect", root / "logs")
        env = loopback.prefect_env(root / "prefect", url)
        env.update(dict.fromkeys(ONE_THREAD, "1"), DASK_LOGGING__DISTRIBUTED="warning")
        started = time.perf_counter()
        print(f"machine: {args.cores} cores, {psutil.virtual_memory().total / GiB:.0f} GiB; "
              f"load {_load()}; demo config; one thread per worker")
        splits: dict[str, TimeSplit] = {}
        try:
            if not args.skip_speedup:
                splits |= speedup(args, root, env, server, backgrounds)
            if not args.skip_rss:
                splits |= peak_rss(args, root, env, server, demo, backgrounds)
        finally:
            server.stop()
        if splits:
            print_time_split(splits)
        print(f"done in {time.perf_counter() - started:.0f} s; load {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"


if __name__ == "__main__":
    main()
