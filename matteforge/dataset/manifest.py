"""Manifest tables: their schemas, and how a shard's rows are committed.

One Parquet file per shard and table.  A shard's composites file is written before its samples
file and both only after every image they name is in place, so the presence of
``manifest/samples/shard-<key>.parquet`` means "this shard is complete" (the commit) and no row
ever points at a missing file.  A composites file without its samples file is what a killed
build left between the two writes: not part of the dataset, removed by the next build
(:func:`discard_uncommitted`).  Schemas carry a version and a column description in their
metadata; a samples file also carries the timing of the task that wrote it.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from matteforge.dataset.storage import (
    Location,
    printable,
    read_bytes,
    refresh,
    write_bytes_atomic,
)

SCHEMA_VERSION = "1"
# alpha_model: the segmenter's probability map as 8-bit, kept so a better matting stage can
# start again from the model without rerunning it.
ARTIFACTS = ("image", "mask", "alpha_model", "trimap", "alpha", "fg")
STAGES = ("ingest", "segment", "trimap", "alpha", "foreground", "quality", "composite", "write")
# Samples-file metadata: {"seconds": wall time of the task that wrote it, "inputs": its inputs}.
SHARD_RUN_KEY = "matteforge.shard_run"
STATS_FILE = "stats.json"  # at the dataset root: per-shard and merged counts and timings


def _field(name: str, type_: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, type_, metadata={"doc": doc})


_ARTIFACT_DOCS = {"alpha_model": "alpha_model (segmenter probability map, 8-bit)"}


def _artifact_fields() -> list[pa.Field]:
    fields = []
    for kind in ARTIFACTS:
        fields += [
            _field(f"{kind}_uri", pa.string(), f"{_ARTIFACT_DOCS.get(kind, kind)} PNG, "
                   "relative to the dataset root"),
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
        _field("status", pa.string(), "ok | rejected | failed | duplicate"),
        _field("reason", pa.string(), "machine-readable reason code when status != ok"),
        _field("detail", pa.string(), "human-readable explanation"),
        _field("notes", pa.string(), "comma-separated ingest notes (conversions, frames)"),
        _field("split", pa.string(), "train | test (stable per near-duplicate group and seed)"),
        _field("phash", pa.string(), "64-bit DCT perceptual hash, 16 hex digits "
               "(tasks/near_duplicates.py)"),
        _field("group_id", pa.string(), "near-duplicate group: the sample_id that founded it; "
               "a group shares one split"),
        _field("width", pa.int32(), "image width after EXIF orientation"),
        _field("height", pa.int32(), "image height after EXIF orientation"),
        *_artifact_fields(),
        _field("presence", pa.float32(), "person-presence score in [0, 1]"),
        _field("unknown_fraction", pa.float32(), "share of pixels in the trimap's unknown band"),
        _field("trimap_half_width", pa.int32(), "band half-width used, px"),
        _field("alpha_iterations", pa.int32(), "iterative solver iterations"),
        _field("alpha_residual", pa.float32(), "relative residual of the alpha solve"),
        _field("mask_alpha_disagreement", pa.float32(),
               "1 - IoU of alpha >= 0.5 and model probability >= 0.5 (tasks/quality.py)"),
        _field("composite_residual", pa.float32(),
               "mean |I - (aF + (1-a)B)| over the unknown band, 0..1 scale"),
        _field("edge_support", pa.float32(),
               "image gradient on the alpha contour / around it; low = edge not on an image edge"),
        _field("fg_components", pa.int32(), "regions of alpha >= 0.5 over 0.1 % of the image"),
        _field("model_disagreement", pa.float32(),
               "ensembles: pixels where the models' maps differ by > 0.5 / person area"),
        _field("model_disagreement_box", pa.string(),
               "bounding box of those pixels, 'x0,y0,x1,y1' as fractions of width and height"),
        _field("n_composites", pa.int32(), "composites made from this sample"),
        _field("model_id", pa.string(), "segmentation model id"),
        _field("model_sha256", pa.string(), "sha256 of the segmentation weights"),
        _field("model_license", pa.string(), "license of the segmentation weights"),
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
        _field("merged_uri", pa.string(), "composite image, relative to the dataset root; null "
               "when not stored (composite.store: false): made from this row on read, "
               "`matteforge materialize` writes it"),
        _field("merged_sha256", pa.string(), "sha256 of the composite file (null: not stored)"),
        _field("merged_bytes", pa.int64(), "size of the composite file (null: not stored)"),
        _field("bg_uri", pa.string(), "background as used (relative, or its source URI)"),
        _field("fg_uri", pa.string(), "foreground, relative to the dataset root"),
        _field("alpha_uri", pa.string(), "alpha, relative to the dataset root"),
        _field("mode", pa.string(), "exact (8-bit truncating, Comp-1K) | float"),
        _field("width", pa.int32(), "composite width"),
        _field("height", pa.int32(), "composite height"),
        _field("config_hash", pa.string(), "hash of the output-shaping configuration"),
        _field("effects", pa.string(), "JSON list of effects applied ({name, params}); "
               "tasks/effects.py re-applies them exactly"),
        _field("merged_format", pa.string(), "png | jpg: the composite file's format, stored "
               "or not"),
        _field("jpeg_quality", pa.int32(), "JPEG quality of a jpg composite; null for png"),
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


def _with_metadata(schema: pa.Schema, table: str, extra: dict[str, str] | None) -> pa.Schema:
    meta = {
        "matteforge.schema_version": SCHEMA_VERSION,
        "matteforge.table": table,
        "matteforge.columns": json.dumps(
            {f.name: f.metadata[b"doc"].decode() for f in schema}, sort_keys=True
        ),
        **(extra or {}),
    }
    return schema.with_metadata(meta)


def to_table(
    rows: list[dict[str, Any]], table: str, metadata: dict[str, str] | None = None
) -> pa.Table:
    """Rows → Arrow table with the table's schema; missing keys become nulls.

    Text is made valid UTF-8 (:func:`~matteforge.dataset.storage.printable`): a file name's
    undecodable bytes reach rows through paths and error messages.
    """
    schema = TABLES[table]
    columns = {f.name: [_text(row.get(f.name)) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=_with_metadata(schema, table, metadata))


def _text(value: Any) -> Any:
    return printable(value) if isinstance(value, str) else value


def shard_key(paths: list[str], config_hash: str) -> str:
    """A shard's name from what it holds, so reruns of the same work write the same file."""
    return hashlib.sha256("\n".join([config_hash, *paths]).encode()).hexdigest()[:16]


def shard_name(key: str | int) -> str:
    return f"shard-{key:05d}.parquet" if isinstance(key, int) else f"shard-{key}.parquet"


def write_table(
    loc: Location, table: str, name: str, rows: list[dict[str, Any]],
    metadata: dict[str, str] | None = None,
) -> str:
    """Write ``manifest/<table>/<name>`` atomically; returns its path relative to the root."""
    rel = f"manifest/{table}/{name}"
    write_bytes_atomic(loc, loc.path(rel), encode_table(to_table(rows, table, metadata)))
    return rel


def encode_table(table: pa.Table) -> bytes:
    """A manifest file's bytes: the same rows always give the same bytes."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy", row_group_size=1024)
    return buf.getvalue()


def shard_files(loc: Location, table: str) -> dict[str, str]:
    """Committed-name shard files of one table (file name → path), freshly listed."""
    folder = loc.path("manifest", table)
    refresh(loc, folder)
    if not loc.fs.exists(folder):
        return {}
    paths = (p.rstrip("/") for p in loc.fs.ls(folder, detail=False))
    found = {p.rsplit("/", 1)[-1]: p for p in paths}
    return {n: found[n] for n in sorted(found) if n.startswith("shard-") and n.endswith(".parquet")}


class CorruptShard(ValueError):
    """A committed manifest file that is not readable Parquet (truncated, overwritten)."""


def read_shards(loc: Location, table: str) -> dict[str, pa.Table]:
    """Committed shard files of one table by file name (temporary files are skipped).

    Read whole through :func:`read_bytes`, so a transient error is retried like any other read.
    Single-threaded, through `ParquetFile` rather than `read_table`: with pyarrow 26.0.1, a
    threaded read from an in-memory buffer made about half of all processes abort at exit
    ("terminate called without an active exception", exit 134), ``matteforge verify``
    included, and `read_table(use_threads=False)` still did, rarely, under load (its dataset
    scanner leaves work on arrow's pools, apache/arrow#33975). A shard is a few KB, so threads
    gain nothing.  A file that is not Parquet raises :class:`CorruptShard` naming it.
    """
    return {name: read_shard(loc, path) for name, path in shard_files(loc, table).items()}


def read_shard(loc: Location, path: str) -> pa.Table:
    return decode_table(read_bytes(loc, path), path)


def decode_table(data: bytes, path: str) -> pa.Table:
    """A manifest file's rows from its bytes; :class:`CorruptShard` names ``path`` when they
    are not Parquet."""
    try:
        return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise CorruptShard(f"{path} is not a readable manifest file ({len(data)} bytes: "
                           f"{exc}); `matteforge verify --repair` moves it aside and redoes "
                           "its samples") from exc


QUARANTINE_DIR = "quarantine"


def quarantine(loc: Location, rel: str) -> str:
    """Move a damaged dataset file to ``quarantine/<rel>.<n>``, out of every reader's way."""
    target = f"{QUARANTINE_DIR}/{rel}"
    n = 0
    while loc.fs.exists(loc.path(f"{target}.{n}")):
        n += 1
    loc.fs.makedirs(loc.path(posixpath.dirname(target)), exist_ok=True)
    loc.fs.mv(loc.path(rel), loc.path(f"{target}.{n}"))
    return f"{target}.{n}"


def read_table(loc: Location, table: str) -> pa.Table:
    """All committed shards of one table, concatenated.

    Shards written before a column was added (same schema version) get nulls in it, so a build
    into an older dataset still reads it.
    """
    return concat_shards(list(read_shards(loc, table).values()), table)


def concat_shards(tables: list[pa.Table], table: str) -> pa.Table:
    """Shard tables as one; an empty list gives an empty table of ``table``'s schema."""
    return pa.concat_tables(tables, promote_options="default") if tables else to_table([], table)


def shard_run(table: pa.Table) -> dict[str, Any]:
    """The writing task's timing stored in a samples file ({} for files without it)."""
    raw = (table.schema.metadata or {}).get(SHARD_RUN_KEY.encode())
    return json.loads(raw) if raw else {}


def uncommitted_shards(loc: Location) -> list[str]:
    """Composites files whose samples file was never written (a build killed in between)."""
    samples = shard_files(loc, "samples")
    return [name for name in shard_files(loc, "composites") if name not in samples]


def discard_uncommitted(loc: Location) -> list[str]:
    """Delete :func:`uncommitted_shards`; their rows were never part of the dataset."""
    names = uncommitted_shards(loc)
    for name in names:
        loc.fs.rm(loc.path("manifest", "composites", name))
    return names
