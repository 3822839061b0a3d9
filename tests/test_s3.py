"""Object storage against a real S3-compatible server (moto's, on loopback), through s3fs.

The server is started by these tests on a free port and stopped after them.  Credentials reach
the build only as storage options, so the build works only if they travel with its tasks to the
Dask workers; a planted secret must then appear in no file the build writes and in no log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from portraits import light_config
from s3server import moto_endpoint

from matteforge.dataset import manifest
from matteforge.dataset.storage import locate, write_bytes_atomic
from matteforge.demo import prepare_demo_data

KEY, SECRET = "AKIDPLANTEDKEY7F3Q", "planted-secret-0b9e2c71d4"
INPUT_BUCKET, OUTPUT_BUCKET = "mf-inputs", "mf-datasets"


def _no_ambient_credentials() -> dict[str, str]:
    """This process's environment without AWS credentials or config files to fall back on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="eu-west-1")
    return env


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture(scope="module")
def options(endpoint) -> dict[str, object]:
    return {"endpoint_url": endpoint, "key": KEY, "secret": SECRET,
            "client_kwargs": {"region_name": "eu-west-1"}}


@pytest.fixture(scope="module")
def s3(options):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    return fs


def _fresh(options: dict[str, object]):
    """Another client, as a second process would have: no shared listing cache."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


def test_atomic_writes_are_single_puts_that_leave_no_temporary_objects(s3, options):
    loc = locate(f"s3://{OUTPUT_BUCKET}/atomic", options)
    write_bytes_atomic(loc, loc.path("image/a.png"), b"first")
    write_bytes_atomic(loc, loc.path("image/a.png"), b"second")
    assert s3.find(f"{OUTPUT_BUCKET}/atomic") == [f"{OUTPUT_BUCKET}/atomic/image/a.png"]
    assert _fresh(options).cat(f"{OUTPUT_BUCKET}/atomic/image/a.png") == b"second"


def test_manifest_listing_sees_shards_committed_by_another_process(s3, options):
    loc = locate(f"s3://{OUTPUT_BUCKET}/listing", options)
    manifest.write_table(loc, "samples", "shard-a.parquet", [{"sample_id": "a", "status": "ok"}])
    assert list(manifest.read_shards(loc, "samples")) == ["shard-a.parquet"]  # listing cached
    worker = locate(f"s3://{OUTPUT_BUCKET}/listing", {**options, "skip_instance_cache": True})
    assert worker.fs is not loc.fs
    manifest.write_table(worker, "samples", "shard-b.parquet", [{"sample_id": "b", "status": "ok"}])
    assert list(manifest.read_shards(loc, "samples")) == ["shard-a.parquet", "shard-b.parquet"]


def test_uncommitted_composites_files_are_found_and_discarded(s3, options):
    loc = locate(f"s3://{OUTPUT_BUCKET}/uncommitted", options)
    rows = [{"composite_id": "a_b", "sample_id": "a", "bg_id": "b"}]
    manifest.write_table(loc, "composites", "shard-done.parquet", rows)
    manifest.write_table(loc, "samples", "shard-done.parquet", [{"sample_id": "a", "status": "ok"}])
    manifest.write_table(loc, "composites", "shard-killed.parquet", rows)
    assert manifest.uncommitted_shards(loc) == ["shard-killed.parquet"]
    assert manifest.discard_uncommitted(loc) == ["shard-killed.parquet"]
    assert sorted(_fresh(options).ls(f"{OUTPUT_BUCKET}/uncommitted/manifest/composites")) == [
        f"{OUTPUT_BUCKET}/uncommitted/manifest/composites/shard-done.parquet"]


def _build(endpoint: str, home: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**_no_ambient_credentials(), "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    config = light_config(home.parent)  # object storage is the subject, not the recipe
    return subprocess.run(
        [sys.executable, "-m", "matteforge.cli", "build", "--config", str(config),
         "--shard-size", "2",
         "--input", f"s3://{INPUT_BUCKET}/portraits",
         "--backgrounds", f"s3://{INPUT_BUCKET}/backgrounds",
         "--output", f"s3://{OUTPUT_BUCKET}/demo", "--workers", "1",
         "--endpoint-url", endpoint, "--storage-option", f"key={KEY}",
         "--storage-option", f"secret={SECRET}",
         "--storage-option", "client_kwargs.region_name=eu-west-1", *extra],
        capture_output=True, text=True, env=env, timeout=900,
    )


@pytest.fixture(scope="module")
def s3_build(s3, endpoint, tmp_path_factory) -> dict[str, object]:
    """The demo build from one bucket into another, run as a user runs it (the CLI)."""
    root = tmp_path_factory.mktemp("s3-build")
    portraits, backgrounds = prepare_demo_data(root / "data")
    s3.put(str(portraits) + "/", f"{INPUT_BUCKET}/portraits/", recursive=True)
    s3.put(str(backgrounds) + "/", f"{INPUT_BUCKET}/backgrounds/", recursive=True)
    home = root / "prefect-home"
    proc = _build(endpoint, home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "home": home, "root": root}


@pytest.mark.slow
def test_build_reads_and_writes_buckets_and_verify_passes(s3_build, options, capsys):
    from matteforge.cli import main
    from matteforge.dataset.verify import verify_dataset

    report = verify_dataset(f"s3://{OUTPUT_BUCKET}/demo", storage_options=options)
    assert report.ok, report.problems
    assert report.files_checked > 10
    flags = ["--endpoint-url", str(options["endpoint_url"]), "--storage-option", f"key={KEY}",
             "--storage-option", f"output:secret={SECRET}"]
    assert main(["verify", f"s3://{OUTPUT_BUCKET}/demo", *flags]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    listed = _fresh(options).find(f"{OUTPUT_BUCKET}/demo")
    assert not [p for p in listed if "/.tmp" in p]  # object stores need no temporary names


@pytest.mark.slow
def test_manifest_reads_back_with_pyarrow_dataset_pandas_and_duckdb_over_s3fs(s3_build, options):
    import duckdb
    import pandas as pd

    fs = _fresh(options)
    samples = ds.dataset(f"{OUTPUT_BUCKET}/demo/manifest/samples", filesystem=fs,
                         format="parquet").to_table()
    assert samples.num_rows == 4
    assert samples.schema.metadata[b"matteforge.schema_version"] == manifest.SCHEMA_VERSION.encode()
    rows = samples.to_pylist()
    assert {r["source_uri"] for r in rows} == {
        f"s3://{INPUT_BUCKET}/portraits/{n}"
        for n in ("astronaut.png", "camera.png", "chelsea.png", "coffee.png")}
    composites = pd.read_parquet(f"s3://{OUTPUT_BUCKET}/demo/manifest/composites",
                                 storage_options=options)
    assert len(composites) == sum(r["n_composites"] for r in rows) > 0
    con = duckdb.connect()
    con.register_filesystem(fs)
    by_status = dict(con.sql(
        f"SELECT status, count(*) FROM read_parquet('s3://{OUTPUT_BUCKET}/demo/manifest/"
        "samples/*.parquet') GROUP BY status").fetchall())
    assert by_status == {"ok": 2, "rejected": 2}


@pytest.mark.slow
def test_stats_json_merges_the_shards(s3_build, options):
    stats = json.loads(_fresh(options).cat(f"{OUTPUT_BUCKET}/demo/stats.json"))
    assert stats["dataset"]["by_status"] == {"ok": 2, "rejected": 2}
    assert stats["dataset"]["by_reason"] == {"no_person": 2}
    shards = stats["shards"].values()
    assert len(shards) == stats["dataset"]["shards"] == 2
    assert sum(s["samples"] for s in shards) == 4
    assert all(s["seconds"] > 0 and s["images_per_second"] > 0 for s in shards)


@pytest.mark.slow
def test_storage_options_appear_in_no_output_file_and_no_log(s3_build, options):
    fs = _fresh(options)
    written = fs.find(f"{OUTPUT_BUCKET}/demo")
    assert any(p.endswith("dataset.json") for p in written)
    proc, home = s3_build["proc"], s3_build["home"]
    logs = (proc.stdout + proc.stderr).encode()
    assert b"shards 2/2" in logs  # the progress lines were captured
    local = [p for p in Path(home).rglob("*") if p.is_file()]  # Prefect's database and logs
    assert any(p.suffix == ".db" for p in local)
    for planted in (SECRET, KEY):
        needle = planted.encode()
        assert needle not in logs
        assert not [p for p in written if needle in fs.cat(p)]
        assert not [p for p in local if needle in p.read_bytes()]
    meta = json.loads(fs.cat(f"{OUTPUT_BUCKET}/demo/dataset.json"))
    assert "storage" not in meta["config"]
    assert str(options["endpoint_url"]) not in json.dumps(meta)


@pytest.mark.slow
def test_incremental_rerun_on_s3_skips_everything(s3_build, options, endpoint):
    fs = _fresh(options)
    before = {p: fs.cat(p) for p in fs.find(f"{OUTPUT_BUCKET}/demo/manifest")}
    again = _build(endpoint, s3_build["root"] / "prefect-home-2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "plan: 4 input(s), 0 to process, 4 already done" in again.stderr
    assert "nothing to do: all 4 input(s)" in again.stderr  # planned on S3, nothing started
    assert {p: fs.cat(p) for p in _fresh(options).find(f"{OUTPUT_BUCKET}/demo/manifest")} == before
