from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as ds

from matteforge.dataset import manifest
from matteforge.dataset.storage import locate


def test_rows_round_trip_with_schema_metadata(tmp_path):
    loc = locate(str(tmp_path))
    rows = [
        {
            "sample_id": "a" * 20,
            "status": "ok",
            "reason": "",
            "width": 4,
            "height": 3,
            "presence": 0.9,
        },
        {
            "sample_id": "b" * 20,
            "status": "failed",
            "reason": "decode_error",
            "detail": "truncated",
        },
    ]
    rel = manifest.write_table(loc, "samples", manifest.shard_name(0), rows)
    assert rel == "manifest/samples/shard-00000.parquet"
    table = manifest.read_table(loc, "samples")
    assert table.num_rows == 2 and table.schema.names == manifest.SAMPLES_SCHEMA.names
    meta = table.schema.metadata
    assert meta[b"matteforge.schema_version"] == manifest.SCHEMA_VERSION.encode()
    assert "presence" in json.loads(meta[b"matteforge.columns"])
    frame = pd.read_parquet(tmp_path / "manifest/samples")
    assert list(frame["status"]) == ["ok", "failed"]
    assert ds.dataset(tmp_path / "manifest/samples").to_table().num_rows == 2


def test_identical_rows_give_identical_bytes(tmp_path):
    rows = [{"composite_id": "x_y", "sample_id": "x", "bg_id": "y", "index": 0}]
    a, b = locate(str(tmp_path / "a")), locate(str(tmp_path / "b"))
    manifest.write_table(a, "composites", "shard-00000.parquet", rows)
    manifest.write_table(b, "composites", "shard-00000.parquet", rows)
    path = "manifest/composites/shard-00000.parquet"
    assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()


def test_missing_table_reads_as_empty(tmp_path):
    table = manifest.read_table(locate(str(tmp_path)), "backgrounds")
    assert table.num_rows == 0 and "bg_id" in table.schema.names


def test_model_alpha_and_license_columns_are_documented():
    docs = {f.name: f.metadata[b"doc"].decode() for f in manifest.SAMPLES_SCHEMA}
    assert "probability map" in docs["alpha_model_uri"]
    assert {"alpha_model_sha256", "alpha_model_bytes", "model_license"} <= set(docs)


def test_shards_written_before_a_column_was_added_read_with_nulls(tmp_path):
    import pyarrow.parquet as pq

    loc = locate(str(tmp_path))
    new = {"sample_id": "a" * 20, "status": "ok", "alpha_model_uri": "alpha_model/a.png",
           "model_license": "Apache-2.0"}
    manifest.write_table(loc, "samples", manifest.shard_name(1), [new])
    old = manifest.to_table([{"sample_id": "b" * 20, "status": "ok"}], "samples")
    old = old.drop_columns(["alpha_model_uri", "alpha_model_sha256", "alpha_model_bytes",
                            "model_license"])
    pq.write_table(old, tmp_path / "manifest/samples" / manifest.shard_name(0))
    rows = {r["sample_id"][0]: r for r in manifest.read_table(loc, "samples").to_pylist()}
    assert rows["a"]["alpha_model_uri"] == "alpha_model/a.png"
    assert rows["b"]["alpha_model_uri"] is None and rows["b"]["model_license"] is None


def test_processes_that_read_shards_exit_cleanly(tmp_path):
    """pyarrow 26's threaded reads from memory aborted about half of all processes at exit."""
    loc = locate(str(tmp_path))
    for i in range(4):
        manifest.write_table(loc, "samples", manifest.shard_name(i),
                             [{"sample_id": f"{i:020d}", "status": "ok", "reason": ""}])
    script = ("from matteforge.dataset import manifest; from matteforge.dataset.storage import "
              f"locate; loc = locate({str(tmp_path)!r}); "
              "assert len(manifest.read_shards(loc, 'samples')) == 4")
    codes = [subprocess.run([sys.executable, "-c", script], capture_output=True).returncode
             for _ in range(6)]
    assert codes == [0] * 6
