"""Check a built dataset against its own manifest, dataset.json and stats.json.

A dataset is trusted when every file a manifest row names exists with the recorded size and
hash (a composite the build did not store, ``composite.store: false``, names no file: its row
must hold the recipe it is made from on read), no row is duplicated, every manifest file is
committed and is one dataset.json checksummed, and the counts agree.  ``matteforge verify
OUT`` prints every problem found and exits non-zero.  Files no row names (left by a build
killed between writing a sample's files and committing its shard; the next build names or
rewrites them) are warnings, not problems: they cost space but no reader of the manifest ever
sees them.  Sizes come from one recursive listing, so an object store answers a few LIST
requests instead of one HEAD per file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from matteforge.dataset import manifest
from matteforge.dataset.materialize import CompositeRecipe
from matteforge.dataset.snapshot import Manifest
from matteforge.dataset.storage import Location, locate, redact_uri, refresh
from matteforge.tasks.ingest import content_hash

STATS_FILE = manifest.STATS_FILE


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Checker:
    out: Location
    sizes: dict[str, int]  # relative path → size, from one listing
    hashes: bool
    report: Report

    def file(self, rel: str | None, size: int | None, digest: str | None, owner: str,
             hashed: bool | None = None) -> None:
        if not rel:
            self.report.problems.append(f"{owner}: no file recorded")
            return
        self.report.files_checked += 1
        if rel not in self.sizes:
            self.report.problems.append(f"{owner}: missing file {rel}")
            return
        if size is not None and self.sizes[rel] != size:
            self.report.problems.append(
                f"{owner}: {rel} is {self.sizes[rel]} bytes, manifest says {size}")
            return
        if (self.hashes if hashed is None else hashed) and digest:
            with self.out.fs.open(self.out.path(rel), "rb") as fh:
                if content_hash(fh.read()) != digest:
                    self.report.problems.append(f"{owner}: {rel} does not match its sha256")


def _listing(out: Location) -> dict[str, int]:
    refresh(out)
    if not out.fs.exists(out.root):
        return {}
    prefix = out.root.rstrip("/") + "/"
    return {path.removeprefix(prefix): info.get("size")
            for path, info in out.fs.find(out.root, detail=True).items()
            if info.get("type") == "file"}


def _read_json(out: Location, rel: str, report: Report, absent: str | None) -> dict[str, Any]:
    path = out.path(rel)
    if not out.fs.exists(path):
        if absent:
            report.problems.append(absent)
        return {}
    with out.fs.open(path, "rb") as fh:
        return json.loads(fh.read())


def _duplicates(values: list[Any], what: str, report: Report) -> None:
    for value, n in Counter(v for v in values if v).items():
        if n > 1:
            report.problems.append(f"{what} {value} appears {n} times")


def _check_commits(meta: dict[str, Any], check: _Checker) -> None:
    """dataset.json's checksums match, and every shard file is committed and checksummed."""
    listed = meta.get("checksums", {})
    for rel, digest in listed.items():
        check.file(rel, None, digest, "dataset.json checksum", hashed=True)
    for name in manifest.uncommitted_shards(check.out):
        check.report.problems.append(f"manifest/composites/{name} has no samples file: a build "
                                     "was killed while committing it (the next build removes it)")
    if not meta:
        return
    for table in manifest.TABLES:
        for name in manifest.shard_files(check.out, table):
            if f"manifest/{table}/{name}" not in listed:
                check.report.problems.append(f"manifest/{table}/{name} is not in dataset.json: "
                                             "written by a build that has not finished")


def _check_counts(meta: dict[str, Any], stats: dict[str, Any], samples: list[dict[str, Any]],
                  n_composites: int, shard_names: set[str], report: Report) -> None:
    by_status = dict(sorted(Counter(r["status"] for r in samples).items()))
    for source, counts in (("dataset.json", meta.get("counts")),
                           (STATS_FILE, stats.get("dataset"))):
        if not counts:
            continue
        if counts.get("by_status") != by_status:
            report.problems.append(f"status counts {by_status} != {source} "
                                   f"{counts.get('by_status')}")
        if counts.get("composites") != n_composites:
            report.problems.append(f"{n_composites} composite rows != {source} "
                                   f"{counts.get('composites')}")
    if stats and set(stats.get("shards", {})) != shard_names:
        report.problems.append(f"{STATS_FILE} lists other shards than manifest/samples holds")


# Not data files: the manifest and records, the HTML report, evaluation results.
_BOOKKEEPING = ("manifest/", "dataset.json", STATS_FILE, "report/", "evaluation/",
                f"{manifest.QUARANTINE_DIR}/", ".matteforge.lock", "hf/", "README.md")


def _unreferenced(sizes: dict[str, int], named: set[str], report: Report, shown: int = 5) -> None:
    """Warn about data files that no manifest row names (orphans of an interrupted build)."""
    orphans = sorted(rel for rel in sizes
                     if rel not in named and not rel.startswith(_BOOKKEEPING))
    if orphans:
        more = f" (and {len(orphans) - shown} more)" if len(orphans) > shown else ""
        report.warnings.append(f"{len(orphans)} file(s) no manifest row names, e.g. "
                               f"{', '.join(orphans[:shown])}{more}: an interrupted build left "
                               "them; the next build of those inputs reuses them")


def _check_duplicate_rows(samples: list[dict[str, Any]], report: Report) -> None:
    """One ok row per sample, and every ``duplicate`` row names a sample another row holds."""
    _duplicates([r["sample_id"] for r in samples if r["status"] == "ok"], "ok sample", report)
    held = {r["sample_id"] for r in samples if r["status"] != "duplicate"}
    for row in samples:
        if row["status"] == "duplicate" and row["sample_id"] not in held:
            report.problems.append(f"{row['source_uri']}: duplicate of sample {row['sample_id']}, "
                                   "which no other row holds")


def _check_recipe(row: dict[str, Any], owner: str, report: Report) -> None:
    """A composite without a file is made on read from its row: the row must hold its recipe
    (its fg, alpha and background are checked as files of their own)."""
    try:
        CompositeRecipe.from_row(row)
    except (ValueError, TypeError, KeyError) as exc:
        report.problems.append(f"{owner}: no file and no usable recipe: {exc}")


@dataclass
class Damage:
    """What an incremental build or ``verify --repair`` must redo to make the dataset whole."""

    sources: set[str] = field(default_factory=set)  # source_uri of sample rows to redo
    backgrounds: set[str] = field(default_factory=set)  # source_uri of background rows to redo
    unreadable: list[str] = field(default_factory=list)  # manifest files that do not read


def find_damage(out: Location, *, hashes: bool = False, loaded: Manifest | None = None) -> Damage:
    """Rows whose files are missing, of another size or (``hashes``) of other bytes.

    A sample is redone whole when any of its files or composites is damaged, or when it has
    another number of composite rows than it says (its composites file was lost).  Without
    ``hashes`` this costs one listing, cheap enough for every incremental build; ``verify
    --repair`` reads every file.  ``loaded``: the manifest as the caller already read it
    (else it is read here); the files that do not read are listed.
    """
    loaded = loaded or Manifest.load(out)
    damage = Damage(unreadable=list(loaded.unreadable))
    rows = {table: loaded.rows(table) for table in manifest.TABLES}
    sizes = _listing(out)

    def bad(rel: str | None, size: int | None, digest: str | None) -> bool:
        if not rel or "://" in rel:
            return False
        if rel not in sizes or (size is not None and sizes[rel] != size):
            return True
        if hashes and digest:
            with out.fs.open(out.path(rel), "rb") as fh:
                return content_hash(fh.read()) != digest
        return False

    samples, composites = rows["samples"], rows["composites"]
    holder = {r["sample_id"]: r for r in samples if r["status"] == "ok"}
    for row in samples:
        if any(bad(row.get(f"{k}_uri"), row.get(f"{k}_bytes"), row.get(f"{k}_sha256"))
               for k in manifest.ARTIFACTS):
            damage.sources.add(row["source_uri"])
    per_sample = Counter(r["sample_id"] for r in composites)
    for row in composites:
        if bad(row["merged_uri"], row["merged_bytes"], row["merged_sha256"]) \
                and row["sample_id"] in holder:
            damage.sources.add(holder[row["sample_id"]]["source_uri"])
    for sid, row in holder.items():
        if per_sample.get(sid, 0) != (row["n_composites"] or 0):
            damage.sources.add(row["source_uri"])
    for row in rows["backgrounds"]:
        if row["status"] == "ok" and bad(row["bg_uri"], row["source_bytes"],
                                         row["content_sha256"]):
            damage.backgrounds.add(row["source_uri"])
    return damage


def verify_dataset(
    uri: str, *, hashes: bool = True, storage_options: dict[str, Any] | None = None
) -> Report:
    """Every check on the dataset at ``uri``; problems are collected, never raised."""
    out = locate(uri, storage_options)
    report = Report()
    listing = _listing(out)
    if not listing:  # not a dataset that failed to finish: nothing is there at all
        report.problems.append(f"no dataset at {redact_uri(uri)}: the location does not exist "
                               "or holds no files")
        return report
    check = _Checker(out, listing, hashes, report)
    meta = _read_json(out, "dataset.json", report,
                      "dataset.json is missing (the build never finished)")
    stats = _read_json(out, STATS_FILE, report, None)
    _check_commits(meta, check)
    loaded = Manifest.load(out)
    for rel in loaded.unreadable:
        report.problems.append(f"{rel} cannot be read (not Parquet: truncated or overwritten); "
                               "`matteforge verify --repair` moves it aside and redoes its "
                               "samples")
    samples, composites = loaded.rows("samples"), loaded.rows("composites")
    _duplicates([r["source_uri"] for r in samples], "sample source", report)
    _duplicates([r["composite_id"] for r in composites], "composite", report)
    _check_duplicate_rows(samples, report)
    for row in samples:
        for kind in manifest.ARTIFACTS:
            if f"{kind}_uri" not in row:  # a shard written before this artifact existed
                continue
            if row["status"] != "ok" and not row[f"{kind}_uri"]:
                continue  # only ok rows must have every file; low_quality rows keep theirs
            check.file(row[f"{kind}_uri"], row[f"{kind}_bytes"], row[f"{kind}_sha256"],
                       f"sample {row['sample_id']}")
    ok_samples = {r["sample_id"]: r for r in samples if r["status"] == "ok"}
    per_sample = Counter(r["sample_id"] for r in composites)
    for row in composites:
        owner = f"composite {row['composite_id']}"
        if row["merged_uri"]:
            check.file(row["merged_uri"], row["merged_bytes"], row["merged_sha256"], owner)
        else:  # not stored (composite.store: false): its row must say how to make it
            _check_recipe(row, owner, report)
        if row["sample_id"] not in ok_samples:
            report.problems.append(f"{owner}: its sample is not an ok row of the manifest")
        if "://" not in (row["bg_uri"] or "") and row["bg_uri"] not in check.sizes:
            report.problems.append(f"{owner}: missing background {row['bg_uri']}")
    for sid, row in ok_samples.items():
        if per_sample.get(sid, 0) != row["n_composites"]:
            report.problems.append(f"sample {sid}: {per_sample.get(sid, 0)} composite rows, "
                                   f"n_composites says {row['n_composites']}")
    _check_counts(meta, stats, samples, len(composites), set(loaded.tables("samples")), report)
    backgrounds = loaded.rows("backgrounds")
    named = {row.get(f"{kind}_uri") for row in samples for kind in manifest.ARTIFACTS}
    named |= {row.get(key) for row in composites for key in ("merged_uri", "bg_uri")}
    named |= {row.get("bg_uri") for row in backgrounds}
    _unreferenced(check.sizes, {n for n in named if n}, report)
    return report



def recorded_build(uri: str, storage: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """(config, sources) that dataset.json records, to build the dataset again; (None, {})
    without one.  The config comes back without locations, as it was recorded."""
    from matteforge.config import StorageConfig

    options = StorageConfig.model_validate(storage or {}).for_location("output", uri)
    out = locate(uri, options)
    meta = _read_json(out, "dataset.json", Report(), None)
    if not meta:
        return None, {}
    return meta.get("config"), dict(meta.get("sources") or {})
