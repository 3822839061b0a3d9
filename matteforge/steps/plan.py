"""Which inputs a build must (re)process, given what the dataset's manifest already holds.

Modes: ``overwrite`` redoes everything; ``incremental`` skips every input that already has a row
made with the same config hash and model from a file of the same name and size; ``retry-failed``
does the same but redoes rows whose status is ``failed``.  Every mode redoes rows that failed for
the machine's reasons (``MACHINE_REASONS``: a full disk, a store that timed out) and rows the
caller found damaged (their files missing or changed).  A redone row's old copy is removed
from its shard only after the new one is committed, so a crash leaves a duplicate (resolved by
:func:`stale_rows` on the next run), never a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from matteforge.dataset.unreadable import MACHINE_REASONS

Mode = Literal["incremental", "overwrite", "retry-failed"]
MODES: tuple[Mode, ...] = ("incremental", "overwrite", "retry-failed")


@dataclass(frozen=True)
class InputFile:
    path: str  # on the input filesystem
    uri: str  # as recorded in the manifest (full, credentials removed)
    size: int | None


@dataclass
class Plan:
    todo: list[InputFile] = field(default_factory=list)
    skipped: int = 0


def _rank(
    row: dict[str, Any], config_hash: str, model_sha256: str, shard: str, fresh: set[str]
) -> tuple[bool, bool, bool, str]:
    current = row["config_hash"] == config_hash and row["model_sha256"] == model_sha256
    return (shard in fresh, current, row["status"] != "failed", shard)


def stale_rows(
    rows_by_shard: dict[str, list[dict[str, Any]]], config_hash: str, model_sha256: str,
    fresh: set[str] | None = None,
) -> set[tuple[str, str]]:
    """(shard, source_uri) of rows that lost to another row of the same source.

    After a run, the rows it just wrote (shards in ``fresh``) win, which retires what they
    replace.  Otherwise (leftovers of a crash) the winner is the row made with the current
    config and model, then the one that did not fail, then the one in the later-named shard: a
    fixed order, so every rerun agrees.
    """
    fresh = fresh or set()
    best: dict[str, tuple[tuple, str]] = {}
    losers: set[tuple[str, str]] = set()
    for shard, rows in sorted(rows_by_shard.items()):
        for row in rows:
            uri = row["source_uri"]
            rank = _rank(row, config_hash, model_sha256, shard, fresh)
            if uri not in best:
                best[uri] = (rank, shard)
            elif rank > best[uri][0]:
                losers.add((best[uri][1], uri))
                best[uri] = (rank, shard)
            else:
                losers.add((shard, uri))
    return losers


def plan_build(
    inputs: list[InputFile], existing: dict[str, dict[str, Any]], mode: Mode,
    config_hash: str, model_sha256: str, redo: set[str] | frozenset[str] = frozenset(),
    redo_reasons: set[str] | frozenset[str] = MACHINE_REASONS,
) -> Plan:
    """Split ``inputs`` into work to do and work already done (``existing``: uri → row).

    ``redo``: source URIs whose rows must be made again whatever they say (damaged files);
    ``redo_reasons``: reason codes whose rows are never final.
    """
    plan = Plan()
    for item in inputs:
        row = existing.get(item.uri)
        reusable = (
            mode != "overwrite"
            and row is not None
            and item.uri not in redo
            and row["config_hash"] == config_hash
            and row["model_sha256"] == model_sha256
            and (item.size is None or row["source_bytes"] in (None, item.size))
            and not (mode == "retry-failed" and row["status"] == "failed")
            and row.get("reason") not in redo_reasons
        )
        if reusable:
            plan.skipped += 1
            continue
        plan.todo.append(item)
    return plan
