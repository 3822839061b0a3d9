"""A build killed part-way: what it leaves is consistent, and a rerun completes the dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from matteforge.tasks import manifest
from matteforge.tasks.storage import TEMP_DIR, locate
from matteforge.verify import verify_dataset

N_INPUTS = 6


def _portraits(folder: Path, astronaut: np.ndarray) -> list[Path]:
    """Six different files of one portrait (sizes differ, so bytes and sample ids do)."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(N_INPUTS):
        side = 192 + 16 * i
        path = folder / f"portrait-{i}.png"
        Image.fromarray(astronaut).resize((side, side), Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    return paths


def _build_command(portraits: Path, backgrounds: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "matteforge.cli", "build", "--config", "demo",
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


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_mid_build_then_rerun_gives_a_complete_verified_dataset(tmp_path, astronaut):
    from matteforge.demo import prepare_demo_data

    _, backgrounds = prepare_demo_data(tmp_path / "data")
    inputs = _portraits(tmp_path / "portraits", astronaut)
    out = tmp_path / "out"
    command = _build_command(tmp_path / "portraits", backgrounds, out)
    build = subprocess.Popen(command, env=_env(tmp_path / "home-1"), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(_committed(out)) < 2 and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGKILL)  # the CLI, its Prefect server and the Dask workers
    build.wait(timeout=60)
    assert build.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    deadline = time.monotonic() + 60
    while _live_members(build.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_members(build.pid) == []  # no worker or server lingers

    done = len(_committed(out))
    assert 2 <= done < N_INPUTS and not (out / "dataset.json").exists()
    killed = verify_dataset(str(out))
    assert not killed.ok  # no dataset.json: the build did not finish, and verify says so
    assert [p for p in killed.problems if "missing" in p and "dataset.json" not in p] == []

    rerun = subprocess.run(command, env=_env(tmp_path / "home-2"), capture_output=True,
                           text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    printed = rerun.stdout.split("dataset written to", 1)[1]
    summary = json.loads(printed[printed.index("{"):])
    assert summary["skipped"] == done and summary["samples"] == N_INPUTS - done
    report = verify_dataset(str(out))
    assert report.ok, report.problems
    samples = pd.read_parquet(out / "manifest/samples")
    assert sorted(samples["source_uri"]) == sorted(str(p) for p in inputs)  # each exactly once
    composites = pd.read_parquet(out / "manifest/composites")
    assert composites["composite_id"].is_unique
    assert len(composites) == samples["n_composites"].sum() > 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dataset"]["samples"] == N_INPUTS == len(stats["shards"])
    assert not (out / TEMP_DIR).exists()


def test_a_composites_file_without_its_samples_file_is_uncommitted_and_removed(tmp_path):
    """What a kill between a shard's two manifest writes leaves; the next build's first step."""
    from matteforge.flows.build import _recover

    loc = locate(str(tmp_path))
    row = {"composite_id": "a_b", "sample_id": "a", "bg_id": "b", "merged_uri": "merged/a_b.png"}
    manifest.write_table(loc, "composites", "shard-killed.parquet", [row])
    (tmp_path / TEMP_DIR).mkdir(exist_ok=True)
    (tmp_path / TEMP_DIR / ".tmp-0-a.png").write_bytes(b"half")
    problems = verify_dataset(str(tmp_path)).problems
    assert any("shard-killed.parquet has no samples file" in p for p in problems)
    assert _recover(loc) == ["shard-killed.parquet"]
    assert list((tmp_path / "manifest" / "composites").iterdir()) == []
    assert not (tmp_path / TEMP_DIR).exists()


def test_local_writes_go_through_the_temporary_folder_and_leave_nothing(tmp_path):
    loc = locate(str(tmp_path))
    manifest.write_table(loc, "samples", "shard-x.parquet", [{"sample_id": "x", "status": "ok"}])
    assert list((tmp_path / TEMP_DIR).iterdir()) == []
    assert [p.name for p in (tmp_path / "manifest/samples").iterdir()] == ["shard-x.parquet"]
