"""The committed manifest of one output, read once and kept in step with every write.

A build used to read the samples manifest seven to nine times (planning, fingerprint groups,
stale rows, drops, duplicates, recounting, counts, stats, the card, the report) and every
manifest file once more for its checksum.  :class:`Manifest` reads each file once, remembers
the sha256 of the bytes it read or wrote, and offers what the flows ask of the manifest.  Only
files other processes commit meanwhile (the shards the workers write) are read again, by name
(:meth:`Manifest.reload`).

Writes go through the same commit rules as before (:mod:`matteforge.dataset.manifest`): a
shard's composites file before its samples file, a file with no rows left deleted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa

from matteforge.dataset import manifest
from matteforge.dataset.storage import Location, read_bytes, write_bytes_atomic
from matteforge.tasks.ingest import content_hash

Rows = list[dict[str, Any]]


class Manifest:
    """Every table's committed shard files: file name → Arrow table, rows on demand."""

    def __init__(self, out: Location) -> None:
        self.out = out
        self._tables: dict[str, dict[str, pa.Table]] = {t: {} for t in manifest.TABLES}
        self._rows: dict[tuple[str, str], Rows] = {}
        self._digests: dict[str, str] = {}  # path relative to the root → sha256 of its bytes
        self.unreadable: list[str] = []  # paths, relative to the root, of files that do not read

    @classmethod
    def load(cls, out: Location) -> Manifest:
        """Read every committed manifest file once; those that do not read are listed in
        :attr:`unreadable`, not raised."""
        loaded = cls(out)
        for table in manifest.TABLES:
            loaded.reload(table)
        return loaded

    def reload(self, table: str, names: set[str] | None = None) -> None:
        """Read ``names`` (default: every committed file) of ``table`` again, as they are now
        on the store; a name no longer there is forgotten."""
        files = manifest.shard_files(self.out, table)
        for name in sorted(names if names is not None else set(files) | set(self._tables[table])):
            self._forget(table, name)
            if name not in files:
                continue
            rel = f"manifest/{table}/{name}"
            data = read_bytes(self.out, files[name])
            try:
                self._tables[table][name] = manifest.decode_table(data, files[name])
            except manifest.CorruptShard:
                self.unreadable.append(rel)
                continue
            self._digests[rel] = content_hash(data)

    def _forget(self, table: str, name: str) -> None:
        self._tables[table].pop(name, None)
        self._rows.pop((table, name), None)
        self._digests.pop(f"manifest/{table}/{name}", None)

    # -- reading ------------------------------------------------------------------------------

    def tables(self, table: str) -> dict[str, pa.Table]:
        """File name → Arrow table, sorted by name (the shard files' metadata included)."""
        return dict(sorted(self._tables[table].items()))

    def shards(self, table: str) -> dict[str, Rows]:
        """File name → rows, sorted by name."""
        return {name: self.shard(table, name) for name in sorted(self._tables[table])}

    def shard(self, table: str, name: str) -> Rows:
        key = (table, name)
        if key not in self._rows:
            self._rows[key] = self._tables[table][name].to_pylist()
        return self._rows[key]

    def rows(self, table: str) -> Rows:
        """Every row of ``table``, shard by shard."""
        return [row for rows in self.shards(table).values() for row in rows]

    def table(self, table: str) -> pa.Table:
        """The whole table, as :func:`manifest.read_table` gives it."""
        return manifest.concat_shards(list(self.tables(table).values()), table)

    def checksums(self) -> dict[str, str]:
        """sha256 of every manifest file as committed, for dataset.json."""
        return dict(sorted(self._digests.items()))

    def counts(self) -> dict[str, Any]:
        """Counts over the whole manifest (every run's rows), as verify recomputes them."""
        samples, composites = self.rows("samples"), self.rows("composites")
        by_status = Counter(r["status"] for r in samples)
        by_reason = Counter(r["reason"] for r in samples if r["reason"])
        by_split = Counter(r["split"] for r in composites)
        return {"samples": len(samples), "by_status": dict(sorted(by_status.items())),
                "by_reason": dict(sorted(by_reason.items())), "composites": len(composites),
                "composites_by_split": dict(sorted(by_split.items()))}

    # -- writing ------------------------------------------------------------------------------

    def write(self, table: str, name: str, rows: Rows,
              metadata: dict[str, str] | None = None) -> None:
        """Commit ``rows`` as ``manifest/<table>/<name>``; no rows deletes the file."""
        rel = f"manifest/{table}/{name}"
        self._forget(table, name)
        if not rows:
            if self.out.fs.exists(self.out.path(rel)):
                self.out.fs.rm(self.out.path(rel))
            return
        arrow = manifest.to_table(rows, table, metadata)
        data = manifest.encode_table(arrow)
        write_bytes_atomic(self.out, self.out.path(rel), data)
        self._tables[table][name] = arrow
        self._digests[rel] = content_hash(data)

    def rewrite_samples(self, name: str, rows: Rows) -> None:
        """Replace a samples file's rows, keeping the writing task's timing it carries."""
        run = (self._tables["samples"][name].schema.metadata or {}).get(
            manifest.SHARD_RUN_KEY.encode())
        self.write("samples", name, rows, {manifest.SHARD_RUN_KEY: run.decode()} if run else None)

    def drop(self, drop: set[tuple[str, str]]) -> int:
        """Remove (shard, source_uri) sample rows and their composites; composites go first.

        Called only after the rows replacing them are committed, so a crash in here leaves a
        duplicate that the next run's planning removes, never a missing row.
        """
        by_shard: dict[str, set[str]] = {}
        for shard, uri in drop:
            by_shard.setdefault(shard, set()).add(uri)
        for shard, uris in sorted(by_shard.items()):
            samples = self.shard("samples", shard)
            keep = [r for r in samples if r["source_uri"] not in uris]
            kept_ids = {r["sample_id"] for r in keep}
            gone_ids = {r["sample_id"] for r in samples if r["source_uri"] in uris} - kept_ids
            if shard in self._tables["composites"]:
                rows = [r for r in self.shard("composites", shard)
                        if r["sample_id"] not in gone_ids]
                self.write("composites", shard, rows)
            self.rewrite_samples(shard, keep)
        return sum(len(u) for u in by_shard.values())

    def quarantine_unreadable(self) -> list[str]:
        """Move the files that did not read to ``quarantine/``, and with them the composites
        files whose samples file went; their inputs get no row, so the build does them again.
        Returns where each went."""
        moved = [manifest.quarantine(self.out, rel) for rel in self.unreadable]
        self.unreadable = []
        if moved:
            for name in manifest.discard_uncommitted(self.out):
                self._forget("composites", name)
        return moved
