"""Build statistics: per shard and merged, for progress lines, ``dataset.json`` and ``stats.json``.

Counts always come from the manifest rows themselves, so ``stats.json`` cannot disagree with the
manifest; timings come from the metadata each samples file carries (the wall time of the task
that wrote it), so they survive later runs that skip the shard.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from matteforge.dataset import manifest
from matteforge.steps.jobs import ShardSummary

STATS_FILE = manifest.STATS_FILE


def summarize(summaries: list[ShardSummary], seconds: float) -> dict[str, Any]:
    """Counts, reasons and per-stage seconds per megapixel over all shards."""
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    stage: dict[str, float] = {}
    for s in summaries:
        for src, dst in ((s.counts, counts), (s.reasons, reasons)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        for k, v in s.stage_seconds.items():
            stage[k] = stage.get(k, 0.0) + v
    megapixels = sum(s.megapixels for s in summaries)
    images = sum(counts.values())
    return {
        "samples": images, "by_status": dict(sorted(counts.items())),
        "by_reason": dict(sorted(reasons.items())),
        "composites": sum(s.composites for s in summaries),
        "megapixels": round(megapixels, 4), "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 4) if seconds > 0 else None,
        "stage_seconds_per_megapixel": {
            k: round(v / megapixels, 4) for k, v in sorted(stage.items()) if megapixels > 0
        },
    }


def shard_summaries(tables: dict[str, pa.Table]) -> dict[str, ShardSummary]:
    """Each committed samples file's summary (task seconds fall back to its rows' stage sum)."""
    found = {}
    for name, table in tables.items():
        rows = table.to_pylist()
        run = manifest.shard_run(table)
        composites = sum(r["n_composites"] or 0 for r in rows if r["status"] == "ok")
        summary = ShardSummary.from_rows(name, rows, composites, 0.0, run.get("inputs"))
        summary.seconds = run.get("seconds", sum(summary.stage_seconds.values()))
        found[name] = summary
    return found


def dataset_stats(tables: dict[str, pa.Table], last_run: dict[str, Any]) -> dict[str, Any]:
    """The content of ``stats.json``: the whole dataset, the last run, and every shard."""
    shards = shard_summaries(tables)
    task_seconds = sum(s.seconds for s in shards.values())
    inputs = sum(s.inputs for s in shards.values())
    merged = summarize(list(shards.values()), task_seconds)
    del merged["seconds"], merged["images_per_second"]
    merged.update(
        shards=len(shards), task_seconds=round(task_seconds, 3),
        images_per_task_second=round(inputs / task_seconds, 4) if task_seconds > 0 else None,
    )
    return {
        "schema_version": manifest.SCHEMA_VERSION,
        "dataset": merged,
        "last_run": last_run,
        "shards": {name: s.stats() for name, s in sorted(shards.items())},
    }
