"""One sample per content: the same bytes under two names give one ok row and duplicate rows.

``sample_id`` is the hash of a file's bytes, so two names for the same bytes would write the
same files and the same composites twice, and the manifest would count the sample twice.  The
rule: among the rows of one ``sample_id`` that would be ``ok``, the one with the smallest
``source_uri`` keeps the sample; every other source gets its own row with status and reason
``duplicate``, a detail naming the kept source, and no files or composites.

Every source keeps exactly one row keyed on its ``source_uri``, which is what incremental
planning (:mod:`matteforge.steps.plan`) and ``matteforge verify`` key on: a rerun skips both
names, and a later name that duplicates an earlier one is recorded, not lost.  Inside a shard the
rule is applied as rows are made (:func:`~matteforge.steps.shard.run_shard` does not process a
second copy at all); across shards and runs, :func:`resolve_duplicates` applies it to the
committed manifest at the end of every build.  The rule depends only on the set of rows, so any
sharding and any order of runs ends in the same verdicts.
"""

from __future__ import annotations

from typing import Any

from matteforge.dataset import manifest
from matteforge.dataset.snapshot import Manifest

DUPLICATE = "duplicate"
# What a duplicate row keeps of the row it would have been: its source, not the sample's outputs.
_SOURCE_COLUMNS = ("sample_id", "source_uri", "content_sha256", "source_bytes", "source_format",
                   "notes", "width", "height", "phash", "group_id", "model_id", "model_sha256",
                   "model_license", "config_hash",
                   *(f"seconds_{s}" for s in manifest.STAGES))


def duplicate_row(row: dict[str, Any], kept_uri: str) -> dict[str, Any]:
    """``row``'s source columns, marked as a duplicate of the sample kept from ``kept_uri``."""
    new = {k: row.get(k) for k in _SOURCE_COLUMNS}
    new.update(status=DUPLICATE, reason=DUPLICATE, n_composites=0,
               detail=f"same bytes as {kept_uri}; that row holds the sample")
    return new


def keepers(rows_by_shard: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[str, str]]:
    """sample_id → (source_uri, shard) of the row that holds the sample."""
    best: dict[str, tuple[str, str]] = {}
    for shard, rows in rows_by_shard.items():
        for row in rows:
            if row["status"] in ("ok", DUPLICATE) and row["sample_id"]:
                here = (row["source_uri"], shard)
                if row["status"] == "ok" and (row["sample_id"] not in best
                                              or here < best[row["sample_id"]]):
                    best[row["sample_id"]] = here
    return best


def _verdict(row: dict[str, Any], shard: str, keep: dict[str, tuple[str, str]]) -> dict[str, Any]:
    kept = keep.get(row["sample_id"])
    if row["status"] not in ("ok", DUPLICATE) or kept is None or kept == (row["source_uri"], shard):
        return row
    dup = duplicate_row(row, kept[0])
    return row if (row["status"], row["detail"]) == (dup["status"], dup["detail"]) else dup


def _own_composites(rows: list[dict[str, Any]], shard: str, losing: set[str],
                    keep: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """A shard's composite rows less those of samples kept elsewhere, each composite once."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        sid = row["sample_id"]
        if (sid in losing and keep[sid][1] != shard) or row["composite_id"] in seen:
            continue
        seen.add(row["composite_id"])
        kept.append(row)
    return kept


def resolve_duplicates(loaded: Manifest) -> int:
    """Apply the rule to the committed manifest; returns how many rows became duplicates.

    Composites files are rewritten before their samples files (the commit order), so a crash in
    here leaves an ok row without its composites, which the next build's pass fixes.
    """
    rows = loaded.shards("samples")
    keep = keepers(rows)
    changed = 0
    for shard, shard_rows in rows.items():
        new = [_verdict(r, shard, keep) for r in shard_rows]
        if new == shard_rows:
            continue
        losing = {r["sample_id"] for r, n in zip(shard_rows, new, strict=True)
                  if r["status"] == "ok" and n["status"] == DUPLICATE}
        changed += len([r for r in shard_rows if r["status"] == "ok"]) - len(
            [r for r in new if r["status"] == "ok"])
        if shard in loaded.tables("composites"):
            old = loaded.shard("composites", shard)
            mine = _own_composites(old, shard, losing, keep)
            if mine != old:
                loaded.write("composites", shard, mine)
        loaded.rewrite_samples(shard, new)
    return changed
