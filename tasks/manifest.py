"""Manifest tables: their schemas, and how a shard's rows are committed.

One Parquet file per shard and table.  A shard's composites file is written before its samples
file and both only after every image they name is in place, so the presence of
``manifest/samples/shard-NNNNN.parquet`` means "this shard is complete" and no row ever points
at a missing file.  Schemas carry a version and a column description in their metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from matteforge.tasks.storage import Location, write_bytes_atomic

SCHEMA_VERSION = "1"
ARTIFACTS = ("image", "mask", "trimap", "alpha", "fg")
STAGES = ("ingest", "segment", "trimap", "alpha", "foreground", "composite", "write")


def _field(name: str, type_: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, type_, metadata={"doc": doc})


def _artifact_fields() -> list[pa.Field]:
    fields = []
    for kind in ARTIFACTS:
        fields += [
            _field(f"{kind}_uri", pa.string(), f"{kind} PNG, relative to the dataset root"),
            _field(f"{kind}_sha256", pa.string(), f"sha256 of the {kind} file"),
            _field(f"{kind}_bytes", pa.int64(), f"size of the {kind} file in bytes"),
        ]
    return fields


SAMPLES_SCHEMA = pa.schema(
    [
        _field("sample_id", pa.string(), "first 20 hex chars of content_sha256; names all files"),
        _field("source_uri", pa.string(), "where the input came from (credentials removed)"),
        _field("content_sha256", pa.string(), "sha256 of the source file's bytes"),
        _field("source_bytes", pa.int64(), "size of the source file"),
        _field("source_format", pa.string(), "format Pillow recognised (JPEG, PNG, ...)"),
        _field("status", pa.string(), "ok | rejected | failed"),
        _field("reason", pa.string(), "machine-readable reason code when status != ok"),
        _field("detail", pa.string(), "human-readable explanation"),
        _field("notes", pa.string(), "comma-separated ingest notes (conversions, frames)"),
        _field("split", pa.string(), "train | test (stable per sample and seed)"),
        _field("width", pa.int32(), "image width after EXIF orientation"),
        _field("height", pa.int32(), "image height after EXIF orientation"),
        *_artifact_fields(),
        _field("presence", pa.float32(), "person-presence score in [0, 1]"),
        _field("unknown_fraction", pa.float32(), "share of pixels in the trimap's unknown band"),
        _field("trimap_half_width", pa.int32(), "band half-width used, px"),
        _field("alpha_iterations", pa.int32(), "iterative solver iterations"),
        _field("alpha_residual", pa.float32(), "relative residual of the alpha solve"),
        _field("n_composites", pa.int32(), "composites made from this sample"),
        _field("model_id", pa.string(), "segmentation model id"),
        _field("model_sha256", pa.string(), "sha256 of the segmentation weights"),
        _field("config_hash", pa.string(), "hash of the output-shaping configuration"),
        *[_field(f"seconds_{s}", pa.float32(), f"wall seconds in {s}") for s in STAGES],
    ]
)

COMPOSITES_SCHEMA = pa.schema(
    [
        _field("composite_id", pa.string(), "<sample_id>_<bg_id>; names the merged file"),
        _field("sample_id", pa.string(), "foreground sample"),
        _field("bg_id", pa.string(), "background id (hash of its bytes)"),
        _field("index", pa.int32(), "position of this background among the sample's"),
        _field("split", pa.string(), "train | test (the sample's split)"),
        _field("merged_uri", pa.string(), "composite image, relative to the dataset root"),
        _field("merged_sha256", pa.string(), "sha256 of the composite file"),
        _field("merged_bytes", pa.int64(), "size of the composite file"),
        _field("bg_uri", pa.string(), "background as used (relative, or its source URI)"),
        _field("fg_uri", pa.string(), "foreground, relative to the dataset root"),
        _field("alpha_uri", pa.string(), "alpha, relative to the dataset root"),
        _field("mode", pa.string(), "exact (8-bit truncating, Comp-1K) | float"),
        _field("width", pa.int32(), "composite width"),
        _field("height", pa.int32(), "composite height"),
        _field("config_hash", pa.string(), "hash of the output-shaping configuration"),
    ]
)

BACKGROUNDS_SCHEMA = pa.schema(
    [
        _field("bg_id", pa.string(), "first 20 hex chars of content_sha256"),
        _field("source_uri", pa.string(), "where the background came from (credentials removed)"),
        _field("content_sha256", pa.string(), "sha256 of the background's bytes"),
        _field("source_bytes", pa.int64(), "size of the background file"),
        _field("status", pa.string(), "ok | failed | rejected | duplicate"),
        _field("reason", pa.string(), "machine-readable reason code when status != ok"),
        _field("detail", pa.string(), "human-readable explanation"),
        _field("width", pa.int32(), "width after EXIF orientation"),
        _field("height", pa.int32(), "height after EXIF orientation"),
        _field("bg_uri", pa.string(), "copy in bg/ (relative) or the source URI"),
    ]
)

TABLES = {"samples": SAMPLES_SCHEMA, "composites": COMPOSITES_SCHEMA,
          "backgrounds": BACKGROUNDS_SCHEMA}


def _with_metadata(schema: pa.Schema, table: str) -> pa.Schema:
    meta = {
        "matteforge.schema_version": SCHEMA_VERSION,
        "matteforge.table": table,
        "matteforge.columns": json.dumps(
            {f.name: f.metadata[b"doc"].decode() for f in schema}, sort_keys=True
        ),
    }
    return schema.with_metadata(meta)


def to_table(rows: list[dict[str, Any]], table: str) -> pa.Table:
    """Rows → Arrow table with the table's schema; missing keys become nulls."""
    schema = TABLES[table]
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=_with_metadata(schema, table))


def shard_key(paths: list[str], config_hash: str) -> str:
    """A shard's name from what it holds, so reruns of the same work write the same file."""
    return hashlib.sha256("\n".join([config_hash, *paths]).encode()).hexdigest()[:16]


def shard_name(key: str | int) -> str:
    return f"shard-{key:05d}.parquet" if isinstance(key, int) else f"shard-{key}.parquet"


def write_table(loc: Location, table: str, name: str, rows: list[dict[str, Any]]) -> str:
    """Write ``manifest/<table>/<name>`` atomically; returns its path relative to the root."""
    buf = io.BytesIO()
    pq.write_table(to_table(rows, table), buf, compression="snappy", row_group_size=1024)
    rel = f"manifest/{table}/{name}"
    write_bytes_atomic(loc, loc.path(rel), buf.getvalue())
    return rel


def read_shards(loc: Location, table: str) -> dict[str, pa.Table]:
    """Committed shard files of one table by file name (temporary files are skipped)."""
    folder = loc.path("manifest", table)
    if not loc.fs.exists(folder):
        return {}
    found = {}
    for path in sorted(loc.fs.ls(folder, detail=False)):
        name = path.rsplit("/", 1)[-1]
        if name.startswith("shard-") and name.endswith(".parquet"):
            with loc.fs.open(path, "rb") as fh:
                found[name] = pq.read_table(fh)
    return found


def read_table(loc: Location, table: str) -> pa.Table:
    """All committed shards of one table, concatenated."""
    tables = list(read_shards(loc, table).values())
    return pa.concat_tables(tables) if tables else to_table([], table)


def rewrite_shard(loc: Location, table: str, name: str, rows: list[dict[str, Any]]) -> None:
    """Replace a shard file with ``rows``, or delete it when no row is left."""
    if rows:
        write_table(loc, table, name, rows)
    elif loc.fs.exists(loc.path("manifest", table, name)):
        loc.fs.rm(loc.path("manifest", table, name))
