"""What the flow and a shard's worker hand each other: the job, and the summary of what it wrote.

Kept apart from :mod:`matteforge.steps.shard` (the work, which imports torch and every stage) so
the process that plans and schedules a build, the CLI's, does not import the stages it never
runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from matteforge.dataset import manifest

# (phash hex, group_id, split) of one input: its near-duplicate group (matteforge/steps/groups.py).
GroupRef = tuple[str, str, str]


@dataclass(frozen=True)
class BackgroundRef:
    bg_id: str
    source_path: str  # path on the backgrounds location
    bg_uri: str  # as recorded in the manifest


@dataclass
class ShardSummary:
    """What one shard holds and how long the task that wrote it took (its stats)."""

    shard: str
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    composites: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    inputs: int = 0  # inputs the writing task processed (rows may since have been replaced)

    @classmethod
    def from_rows(
        cls, shard: str, rows: list[dict[str, Any]], composites: int, seconds: float,
        inputs: int | None = None,
    ) -> ShardSummary:
        """Counts by status and reason, megapixels and stage seconds of a shard's sample rows."""
        summary = cls(shard=shard, composites=composites, seconds=seconds,
                      inputs=len(rows) if inputs is None else inputs)
        for row in rows:
            summary.counts[row["status"]] = summary.counts.get(row["status"], 0) + 1
            if row["reason"]:
                summary.reasons[row["reason"]] = summary.reasons.get(row["reason"], 0) + 1
            if row.get("width") and row.get("height"):
                summary.megapixels += row["width"] * row["height"] / 1e6
            for stage in manifest.STAGES:
                spent = row.get(f"seconds_{stage}") or 0.0
                summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + spent
        return summary

    def stats(self) -> dict[str, Any]:
        """The shard's entry in ``stats.json``."""
        return {
            "samples": sum(self.counts.values()), "by_status": dict(sorted(self.counts.items())),
            "by_reason": dict(sorted(self.reasons.items())), "composites": self.composites,
            "megapixels": round(self.megapixels, 4), "inputs": self.inputs,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.inputs / self.seconds, 4) if self.seconds else None,
        }


@dataclass(frozen=True)
class ShardJob:
    """One shard's work as the flow hands it to a worker.

    Everything travels with the job, so a worker on another machine needs nothing else:
    ``storage`` holds the sealed fsspec options per location (``input``, ``backgrounds``,
    ``output``; :func:`~matteforge.config.seal_storage`), ``groups`` each input's
    near-duplicate group and split, keyed as listed in ``uris`` (:func:`wire_path` form).
    """

    shard: str
    uris: list[str]
    cfg_data: dict[str, Any]
    input_uri: str
    backgrounds_uri: str
    output_uri: str
    backgrounds: list[BackgroundRef] = field(default_factory=list)
    groups: dict[str, GroupRef] = field(default_factory=dict)
    storage: SecretStr | None = None
