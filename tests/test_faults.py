"""Faults an operator meets, end to end through the CLI on one small dataset, in order:

near-identical frames land in one split; another build's lock refuses a second build before
anything starts; damage (a flipped byte, a lost composite, a truncated shard) is repaired by
``verify --repair``; a write the disk refuses exits non-zero and the next plain run redoes it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import loopback
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from portraits import light_config

N_FRAMES = 4


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _cli(*args: str, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matteforge.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, astronaut, prefect_server) -> dict:
    from skimage import data

    from matteforge.demo import prepare_demo_data

    root = tmp_path_factory.mktemp("faults")
    _, backgrounds = prepare_demo_data(root / "demo")
    inputs = root / "inputs"
    inputs.mkdir()
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256)))
    for i in range(N_FRAMES):  # a clip: the same scene moved by a few pixels, other bytes
        (inputs / f"clip-frame-{i}.jpg").write_bytes(_jpeg(np.roll(small, 3 * i, axis=1)))
    camera = np.asarray(Image.fromarray(data.camera()).resize((256, 256)).convert("RGB"))
    (inputs / "camera.jpg").write_bytes(_jpeg(camera))
    env = loopback.prefect_env(root / "home", prefect_server[0])
    out = root / "out"
    args = ["--config", str(light_config(root)), "--input", str(inputs), "--backgrounds",
            str(backgrounds), "--output", str(out)]
    with _port_taken(8787):  # Dask's dashboard port, as when another cluster runs here
        first = _cli("build", *args, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # without --verbose Dask says nothing about moving its dashboard (issue 17, item 8)
    assert "already in use" not in first.stderr, first.stderr[-2000:]
    return {"root": root, "out": out, "args": args, "env": env, "inputs": inputs}


@contextmanager
def _port_taken(port: int) -> Iterator[None]:
    """Hold ``port`` on every interface (or leave it to whoever holds it already)."""
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
            sock.listen()
        except OSError:
            pass  # someone holds it: just as good
        yield


def _samples(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "manifest/samples")


@pytest.mark.slow
def test_frames_of_one_clip_share_one_group_and_one_split(dataset):
    rows = _samples(dataset["out"]).set_index("source_uri")
    frames = rows.loc[[str(dataset["inputs"] / f"clip-frame-{i}.jpg") for i in range(N_FRAMES)]]
    assert frames["sample_id"].nunique() == N_FRAMES  # four files ...
    assert frames["group_id"].nunique() == 1  # ... one group ...
    assert frames["split"].nunique() == 1  # ... one split
    camera = rows.loc[str(dataset["inputs"] / "camera.jpg")]
    assert camera["group_id"] != frames["group_id"].iloc[0]


@pytest.mark.slow
def test_a_rebuild_with_nothing_to_do_starts_nothing_and_changes_nothing(dataset):
    record = (dataset["out"] / "dataset.json").stat().st_mtime_ns
    again = _cli("build", *dataset["args"], env=dataset["env"], timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do: all 5 input(s)" in again.stderr
    assert "prefect" not in again.stderr.lower()  # no server was started
    assert (dataset["out"] / "dataset.json").stat().st_mtime_ns == record


@pytest.mark.slow
def test_a_limited_build_with_json_events(dataset):
    out = dataset["root"] / "limited"
    args = [*dataset["args"][:-1], str(out), "--limit", "2", "--log-format", "json"]
    proc = _cli("build", *args, env=dataset["env"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # nothing but JSON
    kinds = [e["event"] for e in events]
    assert kinds[0] == "listed" and kinds[-1] == "done" and "shard" in kinds
    assert next(e for e in events if e["event"] == "plan")["todo"] == 2
    assert events[-1]["summary"]["samples"] == 2
    assert sorted(_samples(out)["source_uri"]) == [
        str(dataset["inputs"] / "camera.jpg"), str(dataset["inputs"] / "clip-frame-0.jpg")]


@pytest.mark.slow
def test_the_progress_bar_on_a_terminal_updates_and_ends_at_100_percent(dataset):
    """The build under a pseudo-terminal, as a person at a terminal runs it."""
    import pty
    import select

    out = dataset["root"] / "on-a-terminal"
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "matteforge.cli", "build", *dataset["args"][:-1], str(out),
         "--limit", "2"], stdin=secondary, stdout=secondary, stderr=secondary,
        env={**dataset["env"], "COLUMNS": "160", "TERM": "xterm"}, close_fds=True)
    os.close(secondary)
    screen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal closed: the build is done
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    assert proc.wait(timeout=60) == 0, screen.decode(errors="replace")[-3000:]
    text = screen.decode(errors="replace")
    assert "plan: 2 input(s), 2 to process, 0 already done" in text
    assert "100%" in text and "2/2" in text  # the bar ran to the end
    assert text.count("2/2") >= 1 and ("0/2" in text or "1/2" in text)  # and moved on the way


@pytest.mark.slow
def test_reprocess_on_the_command_line_makes_a_verified_new_version(dataset):
    new = dataset["root"] / "reprocessed"
    proc = _cli("reprocess", str(dataset["out"]), "--output", str(new), "--set",
                "composite.per_foreground_test=2", "--set", "composite.per_foreground_train=2",
                env=dataset["env"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    meta = json.loads((new / "dataset.json").read_text())
    assert meta["parent"]["reprocessed_from"] == "composite"
    ok = _samples(new).query("status == 'ok'")
    assert (ok["n_composites"] == 2).all() and len(ok) == len(
        _samples(dataset["out"]).query("status == 'ok'"))
    assert _cli("verify", str(new), env=dataset["env"], timeout=300).returncode == 0
    bad = _cli("reprocess", str(dataset["out"]), "--output", str(new / "x"), "--set",
               "compositte.per_foreground_test=2", env=dataset["env"])
    assert bad.returncode == 2 and "did you mean composite" in bad.stderr.splitlines()[-1]


@pytest.mark.slow
def test_the_dataset_card_loads_with_hugging_face_datasets(dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = dataset["out"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: samples" in card
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    samples = _samples(out)
    ok = samples[samples["status"] == "ok"]
    present = {s for s in ("train", "test") if (ok["split"] == s).any()}
    assert set(loaded) == present  # an empty split is left out of the card
    for split in present:
        assert loaded[split].num_rows == (ok["split"] == split).sum()
        assert sorted(loaded[split]["sample_id"]) == sorted(ok[ok["split"] == split]["sample_id"])
    composites = datasets.load_dataset(str(out), "composites", cache_dir=str(tmp_path / "c"))
    assert sum(composites[s].num_rows for s in composites) == len(
        pd.read_parquet(out / "manifest/composites"))
    first = loaded[sorted(present)[0]].map(lambda r: {"alpha": str(out / r["alpha_uri"])})
    image = first.cast_column("alpha", datasets.Image())[0]["alpha"]
    assert image.size == (first[0]["width"], first[0]["height"])


@pytest.mark.slow
def test_a_second_build_is_refused_while_another_holds_the_lock(dataset):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from matteforge.dataset.lock import output_lock\n"
         "from matteforge.dataset.storage import locate\n"
         f"with output_lock(locate({str(dataset['out'])!r})):\n"
         "    print('held', flush=True); time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        record = (dataset["out"] / "dataset.json").stat().st_mtime_ns
        started = time.monotonic()
        refused = _cli("build", *dataset["args"], env=dataset["env"], timeout=120)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 4, refused.stderr
    [line] = refused.stderr.strip().splitlines()[-1:]
    assert f"pid {holder.pid}" in line and "is locked by a build of" in line
    assert (dataset["out"] / "dataset.json").stat().st_mtime_ns == record  # nothing touched
    print(f"refused in {waited:.1f} s")


@pytest.mark.slow
def test_verify_repair_redoes_exactly_the_damaged_samples(dataset):
    out, env = dataset["out"], dataset["env"]
    before = _samples(out)
    ok = before[before["status"] == "ok"].sort_values("source_uri")
    assert len(ok) >= 3
    alpha = out / ok.iloc[0]["alpha_uri"]
    data = bytearray(alpha.read_bytes())
    data[len(data) // 2] ^= 0xFF
    alpha.write_bytes(bytes(data))  # same size: only a hash sees it
    composites = pd.read_parquet(out / "manifest/composites")
    lost = composites[composites["sample_id"] == ok.iloc[1]["sample_id"]].iloc[0]
    (out / lost["merged_uri"]).unlink()
    shard = sorted((out / "manifest/samples").glob("shard-*.parquet"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    checked = _cli("verify", str(out), env=env, timeout=300)
    assert checked.returncode == 1
    assert f"manifest/samples/{shard.name} cannot be read" in checked.stdout
    repaired = _cli("verify", str(out), "--repair", env=env)
    assert repaired.returncode == 0, repaired.stdout[-3000:] + repaired.stderr[-3000:]
    assert "1 manifest file(s) moved to quarantine/" in repaired.stdout
    [moved] = (out / "quarantine/manifest/samples").iterdir()
    assert moved.name == f"{shard.name}.0"
    after = _samples(out)
    assert sorted(after["source_uri"]) == sorted(before["source_uri"])  # each input once
    assert (after["status"] == "ok").sum() == len(ok)
    assert _cli("verify", str(out), env=env, timeout=300).returncode == 0


@pytest.mark.slow
def test_a_refused_write_exits_3_and_the_next_plain_run_redoes_it(dataset):
    out, env = dataset["out"], dataset["env"]
    ok = _samples(out).query("status == 'ok'")["source_uri"].tolist()
    # Every alpha is missing, so the build redoes those samples, and the disk refuses them.
    shutil.move(out / "alpha", out / "alpha-aside")
    (out / "alpha").write_text("a file where the alpha folder must be")
    failed = _cli("build", *dataset["args"], env=env)
    assert failed.returncode == 3, failed.stdout[-2000:] + failed.stderr[-2000:]
    line = failed.stderr.strip().splitlines()[-1]
    assert f"{len(ok)} input(s) failed for reasons of the machine" in line
    assert f"write_error {len(ok)}" in line
    rows = _samples(out).set_index("source_uri").loc[ok]
    assert set(zip(rows["status"], rows["reason"], strict=True)) == {("failed", "write_error")}
    (out / "alpha").unlink()
    shutil.move(out / "alpha-aside", out / "alpha")
    rerun = _cli("build", *dataset["args"], env=env)  # no --mode retry-failed needed
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert set(_samples(out).set_index("source_uri").loc[ok]["status"]) == {"ok"}
    assert _cli("verify", str(out), env=env, timeout=300).returncode == 0
