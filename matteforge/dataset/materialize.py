"""Composites made from their manifest rows, and ``matteforge materialize``.

A composites row records everything its composite is made of: the sample's ``fg`` and
``alpha`` files, the background (``bg_uri``; fitted to ``width`` x ``height`` by
``tasks/composite.fit_background``), the blend ``mode``, the ``effects`` with their drawn
parameters, and the file format.  :class:`CompositeRecipe` is that record.  Its
:meth:`~CompositeRecipe.render` (the build's ``tasks/composite.make_composite``) and
:meth:`~CompositeRecipe.encode` are the only way a composite is made, by the build when it stores
composites, by ``MattingDataset`` when it makes one on read (``composite.store: false``) and by
:func:`materialize` when it writes the files of such a dataset later: the three are the same
pixels, and the build and ``materialize`` the same bytes, by construction.

:class:`CompositeWriter` encodes, hashes and writes files on one background thread, so the
next composite is made while the last one is written.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fsspec.utils import get_protocol

from matteforge.dataset.codec import decode, encode
from matteforge.dataset.storage import (
    Location,
    locate,
    read_bytes,
    redact_uri,
    write_bytes_atomic,
)
from matteforge.tasks.composite import fit_background, make_composite
from matteforge.tasks.effects import EffectSpec, specs_from_json, specs_to_json
from matteforge.tasks.ingest import content_hash, decode_image

MERGED_DIR = "merged"  # Composition-1K's folder name


@dataclass(frozen=True)
class CompositeRecipe:
    """What one composites row says its composite is made of (see the module docstring)."""

    composite_id: str  # <sample_id>_<bg_id>; names the file
    fg_uri: str
    alpha_uri: str
    bg_uri: str  # relative to the dataset root (bg/...) or the background's own URI
    height: int
    width: int
    mode: Literal["exact", "float"] = "exact"
    effects: tuple[EffectSpec, ...] = ()
    fmt: Literal["png", "jpg"] = "png"
    jpeg_quality: int | None = None  # jpg only

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CompositeRecipe:
        """The recipe of a composites row (rows written before ``merged_format`` existed take
        the format from their file name)."""
        fmt = row.get("merged_format") or (
            "jpg" if (row.get("merged_uri") or "").endswith((".jpg", ".jpeg")) else "png")
        missing = [k for k in ("composite_id", "fg_uri", "alpha_uri", "bg_uri", "height", "width")
                   if not row.get(k)]
        if missing:
            raise ValueError(f"composite {row.get('composite_id')!r}: the row has no "
                             f"{', '.join(missing)}, so it cannot be made again")
        return cls(composite_id=row["composite_id"], fg_uri=row["fg_uri"],
                   alpha_uri=row["alpha_uri"], bg_uri=row["bg_uri"], height=int(row["height"]),
                   width=int(row["width"]), mode=row.get("mode") or "exact",
                   effects=tuple(specs_from_json(row.get("effects") or "[]")), fmt=fmt,
                   jpeg_quality=row.get("jpeg_quality") if fmt == "jpg" else None)

    def columns(self) -> dict[str, Any]:
        """The row's columns this recipe is read back from (:meth:`from_row`)."""
        return {"composite_id": self.composite_id, "fg_uri": self.fg_uri,
                "alpha_uri": self.alpha_uri, "bg_uri": self.bg_uri, "height": self.height,
                "width": self.width, "mode": self.mode, "effects": specs_to_json(self.effects),
                "merged_format": self.fmt, "jpeg_quality": self.jpeg_quality}

    @property
    def file(self) -> str:
        """Where its file goes, relative to the dataset root."""
        return f"{MERGED_DIR}/{self.composite_id}.{self.fmt}"

    def fit(self, background: np.ndarray) -> np.ndarray:
        """The decoded background, scaled up if needed and cropped to the composite's size."""
        return fit_background(background, self.height, self.width)

    def render(self, fg: np.ndarray, alpha: np.ndarray, fitted: np.ndarray) -> np.ndarray:
        """The composite's pixels (HxWx3 uint8) from the sample's fg and alpha (as stored) and
        the fitted background (:meth:`fit`)."""
        return make_composite(fg, alpha, fitted, self.effects, self.mode)

    def encode(self, pixels: np.ndarray) -> bytes:
        """The file's bytes, as the build writes them."""
        return encode(pixels, self.fmt, self.jpeg_quality or 95)

    def as_read(self, pixels: np.ndarray) -> np.ndarray:
        """The pixels a reader of the file gets: PNG is lossless; a JPEG goes through its
        encoder and back, as the stored file would."""
        return pixels if self.fmt == "png" else decode(self.encode(pixels), "rgb")


def stored_columns(rel: str, data: bytes) -> dict[str, Any]:
    """A written composite's file columns."""
    return {"merged_uri": rel, "merged_sha256": content_hash(data), "merged_bytes": len(data)}


class CompositeWriter:
    """Encodes, hashes and writes composite files on one background thread.

    :meth:`put` hands over a composite's pixels and returns at once (unless ``depth`` are
    already waiting: then it waits for the oldest, which bounds the memory held); the future
    gives the row's file columns.  OpenCV's encoder, hashlib and file writes release the GIL, so
    the caller makes the next composite meanwhile.  Leaving the with-block waits for every file,
    so a caller commits its manifest only after them; a write error (``WriteFailed``) is raised
    by the future that met it, or at the latest when the block ends.
    """

    def __init__(self, out: Location, depth: int = 2) -> None:
        self.out, self.depth = out, depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matteforge-write")
        self._pending: deque[Future[dict[str, Any]]] = deque()

    def __enter__(self) -> CompositeWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                for future in self._pending:
                    future.result()
        finally:
            self._pool.shutdown(wait=True)  # never leave a write running behind the caller

    def put(self, recipe: CompositeRecipe, pixels: np.ndarray) -> Future[dict[str, Any]]:
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        future = self._pool.submit(self._write, recipe, pixels)
        self._pending.append(future)
        return future

    def _write(self, recipe: CompositeRecipe, pixels: np.ndarray) -> dict[str, Any]:
        data = recipe.encode(pixels)
        write_bytes_atomic(self.out, self.out.path(recipe.file), data)
        return stored_columns(recipe.file, data)


@dataclass
class CompositeSources:
    """Reads what composites are made of, as the build had them: the dataset's fg and alpha
    files (``codec.decode``) and the backgrounds (``bg/`` copies or their own URIs, any format,
    through ingest's decoder).  ``options`` open backgrounds named by their own remote URI (the
    build's ``backgrounds`` storage options; ``copy_backgrounds`` builds need none)."""

    out: Location
    options: dict[str, Any] | None = None
    capacity: int = 8  # decoded backgrounds kept
    _locations: dict[str, Location] = field(default_factory=dict)
    _layers: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    _backgrounds: OrderedDict[tuple[str, int, int], np.ndarray] = field(
        default_factory=OrderedDict)

    def read(self, uri: str) -> bytes:
        """A file named relative to the dataset root, or by its own path or URI."""
        if "://" not in uri and not uri.startswith("/"):
            return read_bytes(self.out, self.out.path(uri))
        protocol = get_protocol(uri)
        if protocol not in self._locations:
            local = protocol in ("file", "local")
            self._locations[protocol] = locate(uri, None if local else self.options)
        loc = self._locations[protocol]
        return read_bytes(loc, loc.fs._strip_protocol(uri))

    def _layer(self, uri: str, mode: Literal["rgb", "grey"]) -> np.ndarray:
        if uri not in self._layers:
            self._layers[uri] = decode(self.read(uri), mode)
            if len(self._layers) > 4:  # a sample's fg and alpha, and the previous sample's
                self._layers.popitem(last=False)
        return self._layers[uri]

    def fitted(self, recipe: CompositeRecipe) -> np.ndarray:
        key = (recipe.bg_uri, recipe.height, recipe.width)
        if key in self._backgrounds:
            self._backgrounds.move_to_end(key)
            return self._backgrounds[key]
        decoded = decode_image(self.read(recipe.bg_uri), name=recipe.bg_uri)
        if decoded.image is None:
            raise ValueError(f"background {redact_uri(recipe.bg_uri)} does not decode: "
                             f"{decoded.detail}")
        fitted = recipe.fit(decoded.image)
        self._backgrounds[key] = fitted
        if len(self._backgrounds) > self.capacity:
            self._backgrounds.popitem(last=False)
        return fitted

    def pixels(self, recipe: CompositeRecipe) -> np.ndarray:
        """The composite as the build made it."""
        return recipe.render(self._layer(recipe.fg_uri, "rgb"),
                             self._layer(recipe.alpha_uri, "grey"), self.fitted(recipe))


@dataclass
class Materialized:
    """What :func:`materialize` did."""

    written: int = 0  # composite files written
    already: int = 0  # rows of the chosen split(s) that had their file
    shards: int = 0  # composites files rewritten


def materialize(out: Location, split: str | None = None,
                background_options: dict[str, Any] | None = None) -> Materialized:
    """Write the file of every composite the build did not store (``split``: only those of
    ``"train"`` or ``"test"``), then record them.

    Shard by shard: the files first, then the shard's composites file with ``merged_uri``,
    ``merged_sha256`` and ``merged_bytes`` filled in (one atomic write), so a row never names a
    missing file.  Last, dataset.json's checksums and the dataset card (``hf/``) are brought up
    to date, so ``matteforge verify`` passes.  Interrupted, it leaves files no row names (a
    warning in verify) and possibly a stale checksum; running it again finishes the job.  The
    caller holds the output's lock (``matteforge materialize`` does).
    """
    from matteforge.dataset.card import write_card
    from matteforge.dataset.snapshot import Manifest

    if split not in (None, "train", "test"):
        raise ValueError(f"split must be train, test or None, got {split!r}")
    record = _dataset_record(out)
    loaded = Manifest.load(out)
    if loaded.unreadable:
        raise ValueError(f"{', '.join(loaded.unreadable)} cannot be read: run `matteforge "
                         "verify --repair` first")
    sources = CompositeSources(out, background_options)
    done = Materialized()
    for name, rows in loaded.shards("composites").items():
        chosen = [i for i, row in enumerate(rows) if split in (None, row["split"])]
        todo = [i for i in chosen if not rows[i]["merged_uri"]]
        done.already += len(chosen) - len(todo)
        if not todo:
            continue
        new = [dict(row) for row in rows]
        with CompositeWriter(out) as writer:
            futures = [(i, writer.put(recipe, sources.pixels(recipe)))
                       for i, recipe in ((i, CompositeRecipe.from_row(rows[i])) for i in todo)]
        for i, future in futures:
            new[i].update(future.result())
        loaded.write("composites", name, new)
        done.written += len(todo)
        done.shards += 1
    if done.shards:
        checksums = {k: v for k, v in record.get("checksums", {}).items()
                     if not k.startswith("manifest/")}
        record["checksums"] = dict(sorted({**checksums, **loaded.checksums()}.items()))
        write_card(out, loaded.table("samples"), loaded.table("composites"), record)
        write_bytes_atomic(out, out.path("dataset.json"),
                           json.dumps(record, indent=2, sort_keys=True).encode())
    return done


def _dataset_record(out: Location) -> dict[str, Any]:
    path = out.path("dataset.json")
    if not out.fs.exists(path):
        raise ValueError(f"{redact_uri(out.uri)} has no dataset.json: not a finished matteforge "
                         "dataset")
    return json.loads(read_bytes(out, path))
