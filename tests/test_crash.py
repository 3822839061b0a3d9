"""A build killed part-way: what it leaves is consistent, and a rerun completes the dataset."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from portraits import light_config, resized_copies

from matteforge.dataset import manifest
from matteforge.dataset.storage import TEMP_DIR, locate
from matteforge.dataset.verify import verify_dataset

N_INPUTS = 6


def _portraits(folder: Path, astronaut: np.ndarray) -> list[Path]:
    return resized_copies(folder, astronaut, N_INPUTS)


def _build_command(portraits: Path, backgrounds: Path, out: Path) -> list[str]:
    config = light_config(portraits.parent)  # a kill test: the machinery, not the recipe
    return [sys.executable, "-m", "matteforge.cli", "build", "--config", str(config),
            "--input", str(portraits), "--backgrounds", str(backgrounds), "--output", str(out),
            "--workers", "1", "--shard-size", "1"]


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return env


def _live_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies waiting for init aside)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _committed(out: Path) -> list[Path]:
    return sorted((out / "manifest" / "samples").glob("shard-*.parquet"))


def _written_since(out: Path, started: float) -> int:
    """Data files (not manifest, not temporary) written or rewritten since ``started``.

    The build creates and removes folders meanwhile (``.tmp/``): os.walk skips what vanished.
    """
    count = 0
    for folder, subfolders, names in os.walk(out):
        if Path(folder) == out:
            subfolders[:] = [d for d in subfolders if d not in ("manifest", TEMP_DIR)]
        for name in names:
            try:
                count += os.stat(os.path.join(folder, name)).st_mtime >= started
            except FileNotFoundError:  # renamed over or removed while we looked
                continue
    return count


def _kill_when(build: subprocess.Popen, ready: Callable[[], bool]) -> bool:
    """SIGKILL the build's whole process group once ``ready()``; False if it finished first."""
    deadline = time.monotonic() + 600
    while not ready() and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if build.poll() is not None:
        return False
    os.killpg(build.pid, signal.SIGKILL)  # the CLI, its Prefect server and the Dask workers
    assert build.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 60
    while _live_members(build.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_members(build.pid) == []  # no worker or server lingers
    return True


# What a killed build may leave that verify reports: no dataset.json yet, and a composites file
# whose samples file never came (removed by the next build).  Anything else is a lost, broken
# or duplicated row.
_KILLED_BUILD_PROBLEMS = ("dataset.json is missing", "has no samples file")


def _assert_consistent(out: Path) -> None:
    report = verify_dataset(str(out))
    assert not report.ok  # no dataset.json: the build did not finish, and verify says so
    assert [p for p in report.problems if not any(k in p for k in _KILLED_BUILD_PROBLEMS)] == []
    samples = pd.read_parquet(out / "manifest/samples")
    assert samples["source_uri"].is_unique


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_builds_sigkilled_at_random_points_then_rerun_give_a_complete_verified_dataset(
    tmp_path, astronaut
):
    """Killed after two committed shards, then twice more mid-shard at seeded random points.

    Set MATTEFORGE_CRASH_SEED to try other points; the seed and the points are printed.
    """
    from matteforge.demo import prepare_demo_data

    seed = int(os.environ.get("MATTEFORGE_CRASH_SEED", "20261201"))
    rng = random.Random(seed)
    _, backgrounds = prepare_demo_data(tmp_path / "data")
    inputs = _portraits(tmp_path / "portraits", astronaut)
    out = tmp_path / "out"
    command = _build_command(tmp_path / "portraits", backgrounds, out)
    build = subprocess.Popen(command, env=_env(tmp_path / "home-1"), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(build, lambda: len(_committed(out)) >= 2), "the build ended unkilled"
    done = len(pd.read_parquet(out / "manifest/samples"))  # shards of one: one row each
    assert 2 <= done < N_INPUTS and not (out / "dataset.json").exists()
    _assert_consistent(out)

    points = zip((2, 3), rng.sample(range(1, 13), 2), rng.sample([1, 2, 3], 2), strict=True)
    for attempt, files, shard_size in points:  # incremental reruns killed mid-shard
        print(f"crash seed {seed}: run {attempt} killed after {files} data file(s) written, "
              f"shard size {shard_size}")
        rerun = [*command[:-1], str(shard_size)]
        started = time.time()
        build = subprocess.Popen(rerun, env=_env(tmp_path / f"home-{attempt}"),
                                 start_new_session=True, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        killed = _kill_when(build, lambda n=files, t=started: _written_since(out, t) >= n)
        rows = len(pd.read_parquet(out / "manifest/samples"))
        assert rows >= done  # a kill never takes back a committed row
        done = rows
        if not killed:  # it finished first: nothing left to kill
            assert build.returncode == 0 and done == N_INPUTS
            break
        _assert_consistent(out)
        print(f"  {done} of {N_INPUTS} inputs committed, "
              f"{len(verify_dataset(str(out)).warnings)} orphan warning(s)")

    secret = "PLANTED-SECRET-123"
    home = tmp_path / "home-final"
    final = subprocess.run([*command, "--storage-option", f"output:secret={secret}"],
                           env=_env(home), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    printed = final.stdout.split("dataset written to", 1)[1]
    summary = json.loads(printed[printed.index("{"):])
    assert summary["skipped"] == done and summary["samples"] == N_INPUTS - done
    report = verify_dataset(str(out))
    assert report.ok, report.problems
    assert report.warnings == []  # every file the killed runs wrote is named by a row now
    samples = pd.read_parquet(out / "manifest/samples")
    assert sorted(samples["source_uri"]) == sorted(str(p) for p in inputs)  # each exactly once
    composites = pd.read_parquet(out / "manifest/composites")
    assert composites["composite_id"].is_unique
    assert len(composites) == samples["n_composites"].sum() > 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dataset"]["samples"] == N_INPUTS
    assert set(stats["shards"]) == {p.name for p in _committed(out)}
    assert not (out / TEMP_DIR).exists()
    # the storage option reached the output's filesystem, and no file, log or Prefect record
    planted = secret.encode()
    assert planted not in (final.stdout + final.stderr).encode()
    leaks = [p for root in (out, home) for p in root.rglob("*")
             if p.is_file() and planted in p.read_bytes()]
    assert leaks == []


def test_a_composites_file_without_its_samples_file_is_uncommitted_and_removed(tmp_path):
    """What a kill between a shard's two manifest writes leaves; the next build's first step."""
    import logging

    from matteforge.flows.build import recover

    loc = locate(str(tmp_path))
    row = {"composite_id": "a_b", "sample_id": "a", "bg_id": "b", "merged_uri": "merged/a_b.png"}
    manifest.write_table(loc, "composites", "shard-killed.parquet", [row])
    (tmp_path / TEMP_DIR).mkdir(exist_ok=True)
    (tmp_path / TEMP_DIR / ".tmp-0-a.png").write_bytes(b"half")
    problems = verify_dataset(str(tmp_path)).problems
    assert any("shard-killed.parquet has no samples file" in p for p in problems)
    loaded, damage = recover(loc, False, logging.getLogger("test"))
    assert loaded.rows("composites") == [] and damage.sources == set()
    assert list((tmp_path / "manifest" / "composites").iterdir()) == []
    assert not (tmp_path / TEMP_DIR).exists()


def test_files_no_row_names_are_a_warning_not_a_problem(tmp_path):
    """What a kill between a sample's file writes and its shard's commit leaves behind."""
    loc = locate(str(tmp_path))
    row = {"sample_id": "a", "source_uri": "/in/a.png", "status": "ok", "n_composites": 0}
    for kind in manifest.ARTIFACTS:
        rel = f"{kind}/a.png"
        (tmp_path / kind).mkdir()
        (tmp_path / rel).write_bytes(kind.encode())
        row |= {f"{kind}_uri": rel, f"{kind}_bytes": len(kind), f"{kind}_sha256": None}
    manifest.write_table(loc, "samples", "shard-a.parquet", [row])
    (tmp_path / "alpha" / "orphan.png").write_bytes(b"from a killed run")
    report = verify_dataset(str(tmp_path))
    assert [p for p in report.problems if "orphan" in p] == []
    assert len(report.warnings) == 1 and "alpha/orphan.png" in report.warnings[0]
    (tmp_path / "alpha" / "orphan.png").unlink()
    assert verify_dataset(str(tmp_path)).warnings == []


def test_local_writes_go_through_the_temporary_folder_and_leave_nothing(tmp_path):
    loc = locate(str(tmp_path))
    manifest.write_table(loc, "samples", "shard-x.parquet", [{"sample_id": "x", "status": "ok"}])
    assert list((tmp_path / TEMP_DIR).iterdir()) == []
    assert [p.name for p in (tmp_path / "manifest/samples").iterdir()] == ["shard-x.parquet"]
