"""What a build would do, worked out without starting anything: the plan the flow runs, and
the answers the CLI gives before a Prefect server or a Dask cluster starts.

The flow plans with :func:`plan_inputs` too, so ``--dry-run``, the empty-input check and the
no-op shortcut say exactly what the build would do.  Everything here reads; nothing writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from matteforge.config import BuildConfig
from matteforge.dataset.snapshot import Manifest
from matteforge.dataset.storage import Location, list_file_sizes, printable, redact_uri
from matteforge.dataset.unreadable import MACHINE_REASONS
from matteforge.dataset.verify import Damage, find_damage
from matteforge.steps.plan import InputFile, Plan, plan_build, stale_rows


class NothingToBuild(ValueError):
    """The input lists no image (and ``--allow-empty`` was not given), or no background does
    while composites are asked for."""


def list_inputs(cfg: BuildConfig, src: Location, limit: int | None = None) -> list[InputFile]:
    """The inputs in their stable (sorted) order, the first ``limit`` of them if given."""
    listing = [InputFile(path, printable(redact_uri(src.url(path))), size)
               for path, size in list_file_sizes(src, cfg.ingest.extensions)]
    return listing if limit is None else listing[:limit]


def check_not_empty(cfg: BuildConfig, listing: list[InputFile], backgrounds: int,
                    allow_empty: bool) -> None:
    if not listing and not allow_empty:
        raise NothingToBuild(
            f"--input {redact_uri(cfg.input or '')} holds no image (extensions "
            f"{', '.join(cfg.ingest.extensions)}): nothing to build; --allow-empty builds an "
            "empty dataset anyway")
    wanted = cfg.composite.per_foreground_train or cfg.composite.per_foreground_test
    if wanted and not backgrounds and listing:
        raise NothingToBuild(
            f"--backgrounds {redact_uri(cfg.backgrounds or '')} holds no image: no composite "
            "could be made; give a folder of background photos (or set "
            "composite.per_foreground_train and _test to 0)")


def redo_reasons(cfg: BuildConfig) -> frozenset[str]:
    """Reasons whose rows are never final for this config."""
    follow = {"outside_input"} if cfg.ingest.follow_links_outside else set()
    return MACHINE_REASONS | follow


def plan_inputs(cfg: BuildConfig, listing: list[InputFile],
                rows_by_shard: dict[str, list[dict[str, Any]]], model_sha256: str,
                damage: Damage) -> Plan:
    config_hash = cfg.config_hash()
    stale = stale_rows(rows_by_shard, config_hash, model_sha256)
    existing = {r["source_uri"]: r for name, rows in rows_by_shard.items() for r in rows
                if (name, r["source_uri"]) not in stale}
    return plan_build(listing, existing, cfg.run.mode, config_hash, model_sha256,
                      redo=damage.sources, redo_reasons=redo_reasons(cfg))


@dataclass
class Preview:
    listing: list[InputFile]
    backgrounds: list[tuple[str, int | None]]
    plan: Plan | None  # None: the model's weights are not known without loading it
    damage: Damage = field(default_factory=Damage)
    complete: bool = False  # nothing to do at all: the dataset is this build's result already
    meta: dict[str, Any] = field(default_factory=dict)


def preview(cfg: BuildConfig, src: Location, bgs: Location, out: Location,
            limit: int | None = None) -> Preview:
    """The plan as the CLI can make it: with the model sha the dataset recorded, when the
    config names the same built-in models; else listing only (``plan`` None)."""
    listing = list_inputs(cfg, src, limit)
    backgrounds = list_file_sizes(bgs, cfg.ingest.extensions)
    meta = _dataset_json(out)
    result = Preview(listing, backgrounds, None, meta=meta)
    sha = _recorded_model_sha(cfg, meta)
    if sha is None:
        return result
    loaded = Manifest.load(out)
    result.damage = find_damage(out, loaded=loaded)
    result.plan = plan_inputs(cfg, listing, loaded.shards("samples"), sha, result.damage)
    result.complete = (not result.plan.todo and not result.damage.unreadable
                       and not result.damage.backgrounds and cfg.run.mode != "overwrite"
                       and _backgrounds_known(loaded.rows("backgrounds"), bgs, backgrounds))
    return result


def _dataset_json(out: Location) -> dict[str, Any]:
    path = out.path("dataset.json")
    try:
        with out.fs.open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):
        return {}


def _recorded_model_sha(cfg: BuildConfig, meta: dict[str, Any]) -> str | None:
    """dataset.json's model sha256 when this config would make the same dataset with it."""
    names = cfg.segment.model_names()
    if (not meta or meta.get("config_hash") != cfg.config_hash() or cfg.segment.weights_path
            or not all(isinstance(n, str) for n in names)):
        return None
    return (meta.get("model") or {}).get("sha256")


def _backgrounds_known(recorded: list[dict[str, Any]], bgs: Location,
                       listed: list[tuple[str, int | None]]) -> bool:
    """Every listed background has a row, an ok one of the same size: indexing them again
    would change nothing."""
    rows = {r["source_uri"]: r for r in recorded}
    for path, size in listed:
        row = rows.get(printable(redact_uri(bgs.url(path))))
        if row is None or (row["status"] == "ok" and size is not None
                           and row["source_bytes"] != size):
            return False
    return True
