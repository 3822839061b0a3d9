"""The manifest as other tools read it: pandas, pyarrow.dataset and DuckDB, straight off disk."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from matteforge.dataset import manifest
from matteforge.dataset.storage import locate


def _sample(i: int, status: str) -> dict[str, object]:
    sid = f"{i:020d}"
    row: dict[str, object] = {
        "sample_id": sid, "source_uri": f"s3://in/p{i}.jpg", "content_sha256": sid * 3,
        "source_bytes": 5_000_000_000 + i, "status": status, "config_hash": "c" * 16,
        "reason": "" if status == "ok" else "decode_error", "n_composites": 0,
    }
    if status == "ok":
        row.update(split="train", width=640, height=480, presence=0.93, n_composites=2,
                   alpha_uri=f"alpha/{sid}.png", alpha_bytes=1234, seconds_alpha=0.5)
    return row


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two shards as the build writes them (one with a failed row full of nulls)."""
    root = tmp_path_factory.mktemp("readers")
    loc = locate(str(root))
    for shard, rows in (("shard-a.parquet", [_sample(0, "ok"), _sample(1, "failed")]),
                        ("shard-b.parquet", [_sample(2, "ok")])):
        ok = [r for r in rows if r["status"] == "ok"]
        composites = [{"composite_id": f"{r['sample_id']}_bg{j}", "sample_id": r["sample_id"],
                       "bg_id": f"bg{j}", "index": j, "split": "train",
                       "merged_uri": f"merged/{r['sample_id']}_bg{j}.png"}
                      for r in ok for j in range(2)]
        manifest.write_table(loc, "composites", shard, composites)
        manifest.write_table(loc, "samples", shard, rows,
                             {manifest.SHARD_RUN_KEY: json.dumps({"seconds": 1.5, "inputs": 2})})
    return root


def test_pandas_and_pyarrow_dataset_read_every_shard_with_the_declared_types(dataset):
    frame = pd.read_parquet(dataset / "manifest/samples")
    table = ds.dataset(dataset / "manifest/samples", format="parquet").to_table()
    assert len(frame) == table.num_rows == 3
    assert list(frame.columns) == table.schema.names == manifest.SAMPLES_SCHEMA.names
    assert table.schema.field("source_bytes").type == pa.int64()
    assert frame.loc[frame["status"] == "failed", "width"].isna().all()
    columns = json.loads(table.schema.metadata[b"matteforge.columns"])
    assert columns["status"].startswith("ok | rejected | failed")


def test_duckdb_queries_and_joins_the_tables(dataset):
    con = duckdb.connect()
    samples = f"read_parquet('{dataset}/manifest/samples/*.parquet')"
    composites = f"read_parquet('{dataset}/manifest/composites/*.parquet')"
    by_status = dict(con.sql(f"SELECT status, count(*) FROM {samples} GROUP BY status").fetchall())
    assert by_status == {"ok": 2, "failed": 1}
    joined = con.sql(
        f"SELECT s.sample_id, count(c.composite_id), max(s.n_composites) FROM {samples} s "
        f"JOIN {composites} c USING (sample_id) GROUP BY s.sample_id ORDER BY 1").fetchall()
    assert [(sid, n) for sid, n, _ in joined] == [(f"{0:020d}", 2), (f"{2:020d}", 2)]
    assert all(n == declared for _, n, declared in joined)
    described = con.sql(f"DESCRIBE SELECT source_bytes, width, presence FROM {samples}")
    types = {name: type_ for name, type_, *_ in described.fetchall()}
    assert types == {"source_bytes": "BIGINT", "width": "INTEGER", "presence": "FLOAT"}


def test_duckdb_reads_the_schema_version_and_shard_timing_from_file_metadata(dataset):
    rows = duckdb.connect().sql(
        f"SELECT file_name, decode(key), decode(value) FROM "
        f"parquet_kv_metadata('{dataset}/manifest/samples/*.parquet')").fetchall()
    meta = {(Path(f).name, k): v for f, k, v in rows}
    for shard in ("shard-a.parquet", "shard-b.parquet"):
        assert meta[(shard, "matteforge.schema_version")] == manifest.SCHEMA_VERSION
        assert meta[(shard, "matteforge.table")] == "samples"
        assert json.loads(meta[(shard, manifest.SHARD_RUN_KEY)])["seconds"] == 1.5
