"""Near-duplicate groups and their splits, decided before any shard runs.

A sample's split decides how many composites it gets, so it must be known when the sample is
processed; near-identical photos may sit in different shards.  So the build fingerprints every
input to do first (:func:`fingerprint_inputs`, in tasks of 512 inputs), groups the new
fingerprints with those already in the manifest (:func:`group_inputs`), and hands each shard
the group and split of each of its inputs.  A group that already has a split keeps it, so a
photo added later joins the side its twins are on.
"""

from __future__ import annotations

from typing import Any

from matteforge.dataset.storage import Location, read_input, unwire_path
from matteforge.steps.jobs import GroupRef
from matteforge.tasks.composite import split_for
from matteforge.tasks.fingerprint import fingerprint
from matteforge.tasks.near_duplicates import assign_groups, parse_hash_hex


def fingerprint_inputs(
    src: Location, items: list[str], max_bytes: int, max_pixels: int, follow_outside: bool
) -> dict[str, tuple[str, str]]:
    """item → (sample_id, phash hex) for every item that reads and decodes; the rest are
    left out (the shard makes their rows)."""
    found = {}
    for item in items:
        try:
            data = read_input(src, unwire_path(item), max_bytes, follow_outside)
        except Exception:  # refused or unreadable: no group, the shard records why
            continue
        if (prints := fingerprint(data, max_pixels)) is not None:
            found[item] = prints
    return found


# From the manifest: sample_id → (hash, group_id), and group_id → split of its ok rows.
KnownGroups = tuple[dict[str, tuple[int, str]], dict[str, str]]


def known_groups(rows: list[dict[str, Any]]) -> KnownGroups:
    """The groups the manifest's rows hold (:data:`KnownGroups`)."""
    members: dict[str, tuple[int, str]] = {}
    splits: dict[str, str] = {}
    for row in rows:
        if row.get("phash") and row.get("group_id"):
            members.setdefault(row["sample_id"], (parse_hash_hex(row["phash"]),
                                                  row["group_id"]))
            if row["status"] == "ok" and row.get("split"):
                splits.setdefault(row["group_id"], row["split"])
    return members, splits


def group_inputs(
    prints: dict[str, tuple[str, str]], known: KnownGroups, bits: int | None,
    seed: int, test_fraction: float,
) -> dict[str, GroupRef]:
    """item → (phash, group_id, split) for every fingerprinted item.

    ``bits`` None groups identical pictures only (a group per sample_id, which is the old
    per-sample split).  A group with members in the manifest keeps their split.
    """
    members, splits = known
    new = {sid: parse_hash_hex(h) for sid, h in prints.values() if sid not in members}
    if bits is None:
        group = {sid: members[sid][1] if sid in members else sid
                 for sid, _ in prints.values()}
    else:
        group = {**{sid: gid for sid, (_, gid) in members.items()},
                 **assign_groups(new, members, bits)}
    return {item: (phash, group[sid],
                   splits.get(group[sid]) or split_for(group[sid], seed, test_fraction))
            for item, (sid, phash) in prints.items()}
