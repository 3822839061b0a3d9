"""The whole build, end to end, as a user runs it: the CLI, Prefect local mode, a LocalCluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import loopback
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from PIL import Image

from matteforge.config import BuildConfig
from matteforge.demo import prepare_demo_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    portraits, backgrounds = prepare_demo_data(root / "data")
    (portraits / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    out = root / "out"
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "matteforge.cli",
            "build",
            "--config",
            "demo",
            "--input",
            str(portraits),
            "--backgrounds",
            str(backgrounds),
            "--output",
            str(out),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shards 3/3" in proc.stdout + proc.stderr  # progress was reported
    return out


def test_manifest_reads_with_pandas_and_pyarrow(demo_build):
    samples = pd.read_parquet(demo_build / "manifest/samples")
    composites = ds.dataset(demo_build / "manifest/composites").to_table().to_pandas()
    assert len(samples) == 5  # 2 portraits, 2 negatives, 1 broken file
    assert samples["sample_id"].str.len().eq(20).sum() == 5
    assert len(composites) == samples["n_composites"].sum() > 0


def test_every_uri_in_the_manifest_exists(demo_build):
    samples = pd.read_parquet(demo_build / "manifest/samples")
    composites = pd.read_parquet(demo_build / "manifest/composites")
    uris = [
        u
        for col in samples.columns
        if col.endswith("_uri") and col != "source_uri"
        for u in samples[col].dropna()
    ]
    uris += list(composites["merged_uri"]) + list(composites["bg_uri"])
    assert uris
    missing = [u for u in uris if not (demo_build / u).is_file()]
    assert missing == []


def test_portraits_accepted_negatives_and_broken_files_not(demo_build):
    samples = pd.read_parquet(demo_build / "manifest/samples")
    by_name = {
        Path(u).name: row
        for u, row in zip(samples["source_uri"], samples.to_dict("records"), strict=True)
    }
    assert by_name["astronaut.png"]["status"] == "ok"
    assert by_name["camera.png"]["status"] == "ok"
    for negative in ("chelsea.png", "coffee.png"):
        assert by_name[negative]["status"] == "rejected"
        assert by_name[negative]["reason"] == "no_person"
    assert by_name["broken.jpg"]["status"] == "failed"
    assert by_name["broken.jpg"]["reason"] in {"decode_error", "not_an_image"}


def test_trimaps_alphas_and_composites_are_well_formed(demo_build):
    samples = pd.read_parquet(demo_build / "manifest/samples")
    ok = samples[samples["status"] == "ok"]
    cfg = json.loads((demo_build / "dataset.json").read_text())["config"]["composite"]
    for row in ok.to_dict("records"):
        trimap = np.asarray(Image.open(demo_build / row["trimap_uri"]))
        assert set(np.unique(trimap)) <= {0, 128, 255}
        alpha = np.asarray(Image.open(demo_build / row["alpha_uri"]))
        assert alpha.shape == trimap.shape
        assert (alpha[trimap == 255] == 255).all() and (alpha[trimap == 0] == 0).all()
        # the model's own probability map is kept, and the mask is it cut at 0.5
        model = np.asarray(Image.open(demo_build / row["alpha_model_uri"]))
        mask = np.asarray(Image.open(demo_build / row["mask_uri"]))
        assert model.dtype == np.uint8 and model.shape == trimap.shape
        assert ((model >= 128) == (mask == 255)).all()
        assert 0 < ((model > 0) & (model < 255)).mean() < 0.5  # soft, not a copy of the mask
        want = cfg["per_foreground_test"] if row["split"] == "test" else cfg["per_foreground_train"]
        assert row["n_composites"] == want


def test_dataset_json_records_model_counts_and_checksums(demo_build):
    meta = json.loads((demo_build / "dataset.json").read_text())
    # the demo runs the default recipe: two models, each with its own sha256 and license
    assert [len(sha) for sha in meta["model"]["sha256"].split("+")] == [64, 64]
    assert "GPL-3.0" in meta["model"]["license"] and "Apache-2.0" in meta["model"]["license"]
    default = BuildConfig().model_dump(mode="json")
    for section in ("segment", "trimap", "alpha", "quality"):
        assert meta["config"][section] == default[section], section
    samples = pd.read_parquet(demo_build / "manifest/samples")
    assert set(samples["model_license"]) == {meta["model"]["license"]}
    assert meta["counts"]["by_status"] == {"failed": 1, "ok": 2, "rejected": 2}
    assert meta["counts"]["composites"] > 0
    for rel in meta["checksums"]:
        assert (demo_build / rel).is_file()
    assert "prefect" in meta["versions"] and "torch" in meta["versions"]


def test_rebuild_from_python_gives_identical_manifests(demo_build, tmp_path, monkeypatch):
    """The importable flow, same inputs + config + seed: same rows and files (timings aside)."""
    from matteforge.flows.build import build_dataset
    from matteforge.prefect_env import prefect_api

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    portraits, backgrounds = prepare_demo_data(demo_build.parent / "data")
    out = tmp_path / "again"
    with prefect_api():
        summary = build_dataset(config="demo", input=str(portraits),
                                backgrounds=str(backgrounds), output=str(out), n_workers=1)
    assert summary["by_status"] == {"failed": 1, "ok": 2, "rejected": 2}
    for table in ("samples", "composites", "backgrounds"):
        first = pd.read_parquet(demo_build / "manifest" / table)
        second = pd.read_parquet(out / "manifest" / table)
        timing = [c for c in first.columns if c.startswith("seconds_")]
        keep = [c for c in first.columns if c not in timing]
        pd.testing.assert_frame_equal(first[keep], second[keep])
    def images(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*")
                      if p.is_file()
                      and p.parts[len(root.parts)] not in ("manifest", "report", "hf")
                      and p.name not in ("dataset.json", "stats.json"))  # timings

    first_files = images(demo_build)
    assert first_files and first_files == images(out)
    for rel in first_files:
        assert (demo_build / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_the_build_writes_its_report_and_a_prefect_artifact_pointing_at_it(demo_build):
    html = (demo_build / "report/index.html").read_text(encoding="utf-8")
    assert "astronaut.png" in html and "no_person" in html
    thumbs = list((demo_build / "report/thumbs").iterdir())
    assert thumbs and all(t.stat().st_size > 0 for t in thumbs)
    # the artifact lives in the build's own (ephemeral) Prefect database
    script = (
        "import asyncio\n"
        "from matteforge.prefect_env import prefect_api\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey\n"
        "async def main():\n"
        "    async with get_client() as client:\n"
        "        found = await client.read_artifacts(artifact_filter=ArtifactFilter(\n"
        "            key=ArtifactFilterKey(any_=['build-report'])))\n"
        "        print(found[0].data)\n"
        "with prefect_api():\n"
        "    asyncio.run(main())\n"
    )
    env = {**os.environ, "PREFECT_HOME": str(demo_build.parent / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report/index.html" in proc.stdout and "| ok |" in proc.stdout.replace("  ", " ")


def test_build_runs_on_an_existing_scheduler_by_address(tmp_path, monkeypatch):
    """--dask-address: the shards go to a cluster the build did not start."""
    from distributed import LocalCluster

    from matteforge.flows.build import build_dataset
    from matteforge.prefect_env import prefect_api

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    portraits, backgrounds = prepare_demo_data(tmp_path / "data")
    for negative in ("chelsea.png", "coffee.png", "camera.png"):
        (portraits / negative).unlink()
    with prefect_api(), LocalCluster(n_workers=1, threads_per_worker=1,
                                     dashboard_address=None) as cluster:
        summary = build_dataset(config="demo", input=str(portraits),
                                backgrounds=str(backgrounds), output=str(tmp_path / "out"),
                                dask_address=cluster.scheduler_address)
        prefixes = set(cluster.scheduler.task_prefixes)
    assert summary["by_status"] == {"ok": 1}
    assert any(p.startswith("process") for p in prefixes), prefixes  # ran on that scheduler
    assert (tmp_path / "out" / "dataset.json").is_file()


def test_verify_passes_on_the_build_and_lists_damage(demo_build, tmp_path, capsys):
    import shutil

    from matteforge.cli import main
    from matteforge.dataset.verify import verify_dataset

    report = verify_dataset(str(demo_build))
    assert report.ok, report.problems
    assert report.files_checked > 10
    assert main(["verify", str(demo_build)]) == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(demo_build, damaged)
    samples = pd.read_parquet(damaged / "manifest/samples")
    ok = samples[samples["status"] == "ok"].iloc[0]
    (damaged / ok["alpha_uri"]).unlink()
    fg = damaged / ok["fg_uri"]
    fg.write_bytes(fg.read_bytes()[:-1] + b"\x00")
    problems = verify_dataset(str(damaged)).problems
    assert any("missing file" in p and ok["alpha_uri"] in p for p in problems)
    assert any(ok["fg_uri"] in p and "sha256" in p for p in problems)
    capsys.readouterr()
    assert main(["verify", str(damaged)]) == 1
    assert "missing file" in capsys.readouterr().out


def _run_cli(*args: str, home: Path, api_url: str) -> subprocess.CompletedProcess:
    env = loopback.prefect_env(home, api_url)
    return subprocess.run([sys.executable, "-m", "matteforge.cli", *args],
                          capture_output=True, text=True, env=env, timeout=900)


def test_incremental_rerun_does_no_work_and_retry_failed_redoes_failures(demo_build, tmp_path,
                                                                          prefect_server):
    import shutil

    from matteforge.dataset.verify import verify_dataset

    copy = tmp_path / "copy"
    shutil.copytree(demo_build, copy)
    portraits = demo_build.parent / "data" / "portraits"
    backgrounds = demo_build.parent / "data" / "backgrounds"
    before = {p.relative_to(copy): p.read_bytes() for p in (copy / "manifest").rglob("*.parquet")}
    common = ["build", "--config", "demo", "--input", str(portraits), "--backgrounds",
              str(backgrounds), "--output", str(copy), "--workers", "1"]
    again = _run_cli(*common, home=tmp_path / "h1",
                    api_url=prefect_server[0])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "plan: 5 input(s), 0 to process, 5 already done" in again.stderr
    assert "nothing to do: all 5 input(s)" in again.stderr  # no server, no cluster started
    assert not (tmp_path / "h1").exists()
    after = {p.relative_to(copy): p.read_bytes() for p in (copy / "manifest").rglob("*.parquet")}
    assert after == before  # no image work, byte-identical manifest

    retry = _run_cli(*common, "--mode", "retry-failed", home=tmp_path / "h2",
                    api_url=prefect_server[0])
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert '"skipped": 4' in retry.stdout and '"rows_replaced": 1' in retry.stdout
    samples = pd.read_parquet(copy / "manifest/samples")
    assert len(samples) == 5 and samples["source_uri"].is_unique
    assert verify_dataset(str(copy)).ok

    # Overwrite redoes every input; the rows it replaces, and those of inputs that are gone,
    # leave only after the new shards are committed.
    gone = tmp_path / "gone-portraits"
    shutil.copytree(portraits, gone)
    (gone / "broken.jpg").unlink()
    common[common.index(str(portraits))] = str(gone)
    over = _run_cli(*common, "--mode", "overwrite", home=tmp_path / "h3",
                    api_url=prefect_server[0])
    assert over.returncode == 0, over.stderr[-2000:]
    assert '"skipped": 0' in over.stdout and '"samples": 4' in over.stdout
    samples = pd.read_parquet(copy / "manifest/samples")
    assert len(samples) == 4 and samples["source_uri"].is_unique
    assert all(uri.startswith(str(gone)) for uri in samples["source_uri"])
    assert verify_dataset(str(copy)).ok


def test_build_without_config_runs_and_records_the_default_recipe(demo_build, tmp_path,
                                                                  prefect_server):
    """No --config: BuildConfig() itself, said once on stderr (GPL weights) and in dataset.json."""
    import shutil

    photos, backgrounds = tmp_path / "photos", tmp_path / "bgs"
    photos.mkdir()
    backgrounds.mkdir()
    shutil.copy(demo_build.parent / "data" / "portraits" / "astronaut.png", photos)
    shutil.copy(demo_build.parent / "data" / "backgrounds" / "brick.png", backgrounds)
    out = tmp_path / "out"
    done = _run_cli("build", "--input", str(photos), "--backgrounds", str(backgrounds),
                    "--output", str(out), "--workers", "1", home=tmp_path / "home",
                    api_url=prefect_server[0])
    assert done.returncode == 0, done.stderr[-2000:]
    notices = [line for line in done.stderr.splitlines() if "--config permissive" in line]
    assert len(notices) == 1 and "GPL-3.0" in notices[0]
    meta = json.loads((out / "dataset.json").read_text())
    default = BuildConfig().model_dump(mode="json")
    for section in ("segment", "trimap", "alpha", "quality", "composite", "ingest"):
        assert meta["config"][section] == default[section], section  # run: --workers 1
    assert meta["config"]["segment"]["model"] == ["rvm", "modnet@384"]
    assert "GPL-3.0" in meta["model"]["license"]
    samples = pd.read_parquet(out / "manifest/samples")
    (row,) = samples.to_dict("records")
    assert row["status"] == "ok", row
    assert 0 <= row["model_disagreement"] < 0.35 and row["model_disagreement_box"]
    assert row["n_composites"] == 1  # 100 wanted per foreground, one background there
