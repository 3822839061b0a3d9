"""Check a built dataset against its own manifest and dataset.json.

A dataset is trusted when every file a manifest row names exists with the recorded size and
hash, no row is duplicated, the manifest files are the ones dataset.json checksummed, and the
counts agree.  ``matteforge verify OUT`` prints every problem found and exits non-zero.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from matteforge.tasks import manifest
from matteforge.tasks.ingest import content_hash
from matteforge.tasks.storage import Location, locate


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_file(
    out: Location, rel: str | None, size: int | None, digest: str | None, hashes: bool,
    report: Report, owner: str,
) -> None:
    if not rel:
        report.problems.append(f"{owner}: no file recorded")
        return
    path = out.path(rel)
    report.files_checked += 1
    if not out.fs.exists(path):
        report.problems.append(f"{owner}: missing file {rel}")
        return
    if size is not None and out.fs.size(path) != size:
        report.problems.append(f"{owner}: {rel} is {out.fs.size(path)} bytes, manifest says {size}")
        return
    if hashes and digest:
        with out.fs.open(path, "rb") as fh:
            if content_hash(fh.read()) != digest:
                report.problems.append(f"{owner}: {rel} does not match its sha256")


def _duplicates(values: list[Any], what: str, report: Report) -> None:
    for value, n in Counter(v for v in values if v).items():
        if n > 1:
            report.problems.append(f"{what} {value} appears {n} times")


def verify_dataset(
    uri: str, *, hashes: bool = True, storage_options: dict[str, Any] | None = None
) -> Report:
    """Every check on the dataset at ``uri``; problems are collected, never raised."""
    out = locate(uri, storage_options)
    report = Report()
    meta_path = out.path("dataset.json")
    if not out.fs.exists(meta_path):
        report.problems.append("dataset.json is missing (the build never finished)")
        meta: dict[str, Any] = {}
    else:
        with out.fs.open(meta_path, "rb") as fh:
            meta = json.loads(fh.read())
    for rel, digest in meta.get("checksums", {}).items():
        _check_file(out, rel, None, digest, True, report, "dataset.json checksum")
    samples = manifest.read_table(out, "samples").to_pylist()
    composites = manifest.read_table(out, "composites").to_pylist()
    _duplicates([r["source_uri"] for r in samples], "sample source", report)
    _duplicates([r["composite_id"] for r in composites], "composite", report)
    for row in samples:
        if row["status"] != "ok":
            continue
        for kind in manifest.ARTIFACTS:
            _check_file(out, row[f"{kind}_uri"], row[f"{kind}_bytes"], row[f"{kind}_sha256"],
                        hashes, report, f"sample {row['sample_id']}")
    ok_samples = {r["sample_id"]: r for r in samples if r["status"] == "ok"}
    per_sample = Counter(r["sample_id"] for r in composites)
    for row in composites:
        owner = f"composite {row['composite_id']}"
        _check_file(out, row["merged_uri"], row["merged_bytes"], row["merged_sha256"], hashes,
                    report, owner)
        if row["sample_id"] not in ok_samples:
            report.problems.append(f"{owner}: its sample is not an ok row of the manifest")
        if "://" not in (row["bg_uri"] or "") and not out.fs.exists(out.path(row["bg_uri"])):
            report.problems.append(f"{owner}: missing background {row['bg_uri']}")
    for sid, row in ok_samples.items():
        if per_sample.get(sid, 0) != row["n_composites"]:
            report.problems.append(f"sample {sid}: {per_sample.get(sid, 0)} composite rows, "
                                   f"n_composites says {row['n_composites']}")
    counts = meta.get("counts", {})
    if counts:
        by_status = dict(sorted(Counter(r["status"] for r in samples).items()))
        if counts.get("by_status") != by_status:
            report.problems.append(f"status counts {by_status} != dataset.json "
                                   f"{counts.get('by_status')}")
        if counts.get("composites") != len(composites):
            report.problems.append(f"{len(composites)} composite rows != dataset.json "
                                   f"{counts.get('composites')}")
    return report
