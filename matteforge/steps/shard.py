"""The per-sample order of stages, run for a whole shard inside one Prefect task.

A Prefect task per image costs ~145 ms of engine overhead on Dask, so the unit of work is a
shard.  This module is orchestration only: it calls each stage's pure function, times it, turns
any failure into a row, and writes the files and then the shard's manifest (the commit).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matteforge.config import BuildConfig, unseal_storage
from matteforge.dataset import manifest
from matteforge.dataset.codec import encode, to_uint8
from matteforge.dataset.materialize import CompositeRecipe, CompositeWriter
from matteforge.dataset.retry import is_transient
from matteforge.dataset.storage import (
    Location,
    WriteFailed,
    locate,
    printable,
    read_input,
    redact_uri,
    unwire_path,
    write_bytes_atomic,
)
from matteforge.dataset.unreadable import read_failure
from matteforge.steps.duplicates import duplicate_row
from matteforge.steps.jobs import BackgroundRef, GroupRef, ShardJob, ShardSummary
from matteforge.steps.worker_env import configure_threads, heap_reuse
from matteforge.tasks import composite as comp
from matteforge.tasks import trimap
from matteforge.tasks.effects import sample_effects
from matteforge.tasks.ingest import IngestResult, content_hash, decode_image
from matteforge.tasks.recipe import StageClock, make_sample
from matteforge.tasks.segment import (
    PRESENCE_THRESHOLD,
    Segmenter,
    SegmentResult,
    batch_size,
    is_person,
    predict_batch,
    segmenter_for,
)

TRIMAP_DIR = "trimaps"  # Composition-1K's folder name


# Pixels of the portraits one model batch may hold (segment.batch_size): 8 at 4 MP, 2 at 12 MP.
BATCH_PIXELS = 32_000_000

# Fitted backgrounds kept per shard: 256 MB holds ~120 fitted at 0.7 MP, ~10 at 8 MP.
FITTED_BACKGROUND_BYTES = 256 * 2**20


class BackgroundCache:
    """Decoded backgrounds, and fitted ones per size, least-recently-used first out: a shard
    reuses a bounded set."""

    def __init__(self, loc: Location, refs: list[BackgroundRef], capacity: int = 16,
                 follow_links_outside: bool = False,
                 fitted_bytes: int = FITTED_BACKGROUND_BYTES) -> None:
        self._loc = loc
        self._follow = follow_links_outside
        self._refs = {r.bg_id: r for r in refs}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._capacity = capacity
        self._fitted: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._fitted_bytes, self._fitted_budget = 0, fitted_bytes

    @property
    def ids(self) -> list[str]:
        return sorted(self._refs)

    def ref(self, bg_id: str) -> BackgroundRef:
        return self._refs[bg_id]

    def get(self, bg_id: str) -> np.ndarray:
        if bg_id in self._cache:
            self._cache.move_to_end(bg_id)
            return self._cache[bg_id]
        decoded = decode_image(read_input(self._loc, self._refs[bg_id].source_path,
                                          follow_links_outside=self._follow))
        if decoded.image is None:
            raise ValueError(f"background {bg_id} no longer decodes: {decoded.detail}")
        self._cache[bg_id] = decoded.image
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return decoded.image

    def fitted(self, bg_id: str, height: int, width: int) -> np.ndarray:
        """The background scaled and cropped to HxW (``tasks/composite.fit_background``), made
        once per size and shared, read-only, by every composite of that size in the shard."""
        key = (bg_id, height, width)
        if key in self._fitted:
            self._fitted.move_to_end(key)
            return self._fitted[key]
        image = comp.fit_background(self.get(bg_id), height, width)
        image.flags.writeable = False
        self._fitted[key] = image
        self._fitted_bytes += image.nbytes
        while self._fitted_bytes > self._fitted_budget and len(self._fitted) > 1:
            self._fitted_bytes -= self._fitted.popitem(last=False)[1].nbytes
        return image


@dataclass(frozen=True)
class Stored:
    """A file the stages wrote: where (relative to the dataset root), its sha256 and size."""

    uri: str
    sha256: str
    bytes: int


@dataclass
class StageResult:
    """What the stages made of one decoded portrait.  ``detail`` None keeps ingest's."""

    status: str = "ok"
    reason: str = ""
    detail: str | None = None
    presence: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)  # the recipe's manifest figures
    files: dict[str, Stored] = field(default_factory=dict)  # artifact kind → file
    split: str | None = None
    composites: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, reason: str, detail: str) -> None:
        """A stage failed: the row says why and names no file and no composite."""
        self.status, self.reason, self.detail = "failed", reason, detail[:2000]
        self.files, self.composites = {}, []


@dataclass
class SampleOutcome:
    """Everything one input became; :meth:`row` is the one place its manifest row is made."""

    source_uri: str
    ingest: IngestResult | None = None  # None: the input did not read (see ``unread``)
    unread: tuple[str, str, str] = ("", "", "")  # (status, reason, detail) of a failed read
    group: GroupRef | None = None  # its near-duplicate group, found before the shards ran
    stages: StageResult | None = None  # None: not decoded, or a duplicate
    duplicate_of: str | None = None  # source URI of the row holding the same bytes
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def composites(self) -> list[dict[str, Any]]:
        return self.stages.composites if self.stages is not None else []

    def mark_duplicate(self, kept: dict[str, str]) -> None:
        """A decoded copy of bytes that already made an ok row (``kept``: sample_id → its
        source) becomes a ``duplicate`` row, processed no further."""
        if self.ingest is not None and self.ingest.image is not None \
                and self.ingest.sample_id in kept:
            self.duplicate_of = kept[self.ingest.sample_id]

    @property
    def needs_stages(self) -> bool:
        """Decoded, not a duplicate, and the stages have not run yet."""
        return (self.ingest is not None and self.ingest.image is not None
                and self.duplicate_of is None and self.stages is None)

    def row(self, cfg: BuildConfig, seg: Segmenter) -> dict[str, Any]:
        if self.ingest is None:
            status, reason, detail = self.unread
            return {"source_uri": self.source_uri, "status": status, "reason": reason,
                    "detail": detail, "sample_id": "", **_provenance(cfg, seg)}
        ingest = self.ingest
        row: dict[str, Any] = {
            "sample_id": ingest.sample_id if ingest.content_sha256 else "",
            "source_uri": redact_uri(self.source_uri),
            "content_sha256": ingest.content_sha256,
            "source_bytes": ingest.n_bytes,
            "source_format": ingest.source_format,
            "status": ingest.status,
            "reason": ingest.reason,
            "detail": ingest.detail,
            "notes": ",".join(ingest.notes),
            "width": ingest.width or None,
            "height": ingest.height or None,
            **_provenance(cfg, seg),
        }
        if self.group is not None and ingest.image is not None:
            row["phash"], row["group_id"], row["split"] = self.group
        if self.duplicate_of is not None:
            row = duplicate_row(row, self.duplicate_of)
        elif (done := self.stages) is not None:
            row["presence"] = done.presence
            row.update(done.figures)
            for kind, stored in done.files.items():
                row[f"{kind}_uri"], row[f"{kind}_sha256"] = stored.uri, stored.sha256
                row[f"{kind}_bytes"] = stored.bytes
            if done.split is not None:
                row["split"] = done.split
            row["status"], row["reason"] = done.status, done.reason
            if done.detail is not None:
                row["detail"] = done.detail
            row["n_composites"] = len(done.composites)
        for stage, secs in self.seconds.items():
            row[f"seconds_{stage}"] = secs
        return row


def _provenance(cfg: BuildConfig, seg: Segmenter) -> dict[str, Any]:
    """What every sample row records about how it was made, unreadable inputs included."""
    return {"model_id": seg.model_id, "model_sha256": seg.weights_sha256,
            "model_license": seg.license, "config_hash": cfg.config_hash(), "n_composites": 0}


def _put(out: Location, rel: str, data: bytes) -> Stored:
    write_bytes_atomic(out, out.path(rel), data)
    return Stored(rel, content_hash(data), len(data))


def ingest_sample(
    uri: str,
    data: bytes,
    cfg: BuildConfig,
    kept: dict[str, str] | None = None,
    group: GroupRef | None = None,
) -> SampleOutcome:
    """Decode one input: the outcome holds its image until the stages run (or its failure).

    ``kept`` (sample_id → source URI of the ok rows made so far in this shard) turns a second
    copy of the same bytes into a ``duplicate`` row without processing it again.
    """
    timer = StageClock(manifest.STAGES)
    with timer("ingest"):
        ingest = decode_image(data, max_pixels=cfg.ingest.max_pixels,
                              min_side=cfg.ingest.min_side, name=uri)
    outcome = SampleOutcome(uri, ingest, group=group, seconds=timer.seconds)
    if kept is not None:
        outcome.mark_duplicate(kept)
    return outcome


def process_sample(
    uri: str,
    data: bytes,
    cfg: BuildConfig,
    seg: Segmenter,
    backgrounds: BackgroundCache,
    out: Location,
    kept: dict[str, str] | None = None,
    group: GroupRef | None = None,
) -> SampleOutcome:
    """One portrait through every stage; never raises for bad input or a failing stage.

    ``group`` (its near-duplicate group, found before the shards ran) decides the sample's split.
    """
    outcome = ingest_sample(uri, data, cfg, kept, group)
    if outcome.needs_stages:
        finish_sample(outcome, cfg, seg, backgrounds, out)
    return outcome


def finish_sample(outcome: SampleOutcome, cfg: BuildConfig, seg: Segmenter,
                  backgrounds: BackgroundCache, out: Location,
                  segmented: SegmentResult | None = None) -> None:
    """Run the stages on an ingested portrait; ``segmented``: its models' result, already
    made (in a batch), else the models run here."""
    assert outcome.ingest is not None and outcome.ingest.image is not None
    split = outcome.group[2] if outcome.group is not None else None
    timer = StageClock()
    timer.seconds = outcome.seconds  # the row's seconds, ingest's included
    outcome.stages = _run_stages(outcome.ingest.image, outcome.ingest.sample_id, split, cfg,
                                 seg, backgrounds, out, timer, segmented)


def segment_batch(outcomes: list[SampleOutcome], seg: Segmenter, reuse: bool = True
                  ) -> list[SegmentResult | None]:
    """The models on several ingested portraits at once (one forward per model and input
    size: what a GPU is fast at), each charged an equal share of the time.

    If the batch raises, every portrait gets None and runs the models alone, so a portrait
    the models fail on costs its own row only, as in a batch of one.
    """
    images = [o.ingest.image for o in outcomes if o.ingest is not None]
    if len(outcomes) < 2 or len(images) != len(outcomes):
        return [None] * len(outcomes)
    start = time.perf_counter()
    try:
        with heap_reuse(max(i.shape[0] * i.shape[1] for i in images), reuse):
            results: list[SegmentResult | None] = list(predict_batch(seg, images))
    except Exception:
        return [None] * len(outcomes)
    share = (time.perf_counter() - start) / len(outcomes)
    for outcome in outcomes:
        outcome.seconds["segment"] = outcome.seconds.get("segment", 0.0) + share
    return results


def process_samples(
    inputs: Iterable[tuple[str, bytes | Exception, GroupRef | None]],
    cfg: BuildConfig,
    seg: Segmenter,
    backgrounds: BackgroundCache,
    out: Location,
    batch: int = 1,
    pixels: int = BATCH_PIXELS,
) -> Iterator[tuple[SampleOutcome, dict[str, Any]]]:
    """A shard's inputs (source, bytes or the error that kept them unread, group) through
    every stage, in order: each outcome with its manifest row.

    With ``batch`` > 1 up to that many decoded portraits (and at most ``pixels`` pixels, so
    12 MP photos do not pile up) go through the models together (:func:`segment_batch`); the
    rest of the stages run one portrait at a time either way. A second copy of bytes already in
    the batch closes it first, so duplicates are found exactly as one at a time.
    """
    kept: dict[str, str] = {}  # sample_id → source of its ok row (steps/duplicates.py)
    waiting: list[SampleOutcome] = []  # in input order; the decoded ones wait for the models

    def flush() -> Iterator[tuple[SampleOutcome, dict[str, Any]]]:
        todo = [o for o in waiting if o.needs_stages]
        for outcome, result in zip(todo, segment_batch(todo, seg, cfg.run.heap_reuse),
                                   strict=True):
            finish_sample(outcome, cfg, seg, backgrounds, out, result)
        for outcome in waiting:
            row = outcome.row(cfg, seg)
            if row["status"] == "ok":
                kept.setdefault(row["sample_id"], row["source_uri"])
            yield outcome, row
        waiting.clear()

    for source, data, group in inputs:
        if isinstance(data, Exception):  # unreadable: record it, keep going
            waiting.append(SampleOutcome(source, unread=read_failure(data)))
        else:
            outcome = ingest_sample(source, data, cfg, None, group)
            if outcome.needs_stages:
                assert outcome.ingest is not None
                queued = [o for o in waiting if o.needs_stages]
                if (any(o.ingest is not None and o.ingest.sample_id == outcome.ingest.sample_id
                        for o in queued)
                        or sum(map(_pixels, queued)) + _pixels(outcome) > pixels):
                    yield from flush()
                outcome.mark_duplicate(kept)  # against the rows the flush just made, too
            waiting.append(outcome)
        if sum(o.needs_stages for o in waiting) >= batch:
            yield from flush()
    yield from flush()


def _pixels(outcome: SampleOutcome) -> int:
    image = outcome.ingest.image if outcome.ingest is not None else None
    return 0 if image is None else image.shape[0] * image.shape[1]


def _stage_failure(exc: Exception, stage: str) -> str:
    """The reason code of a row a stage failed: the storage's fault, or the stage's."""
    if isinstance(exc, WriteFailed):
        return "write_error"
    if is_transient(exc):  # e.g. a background read that timed out after its retries
        return "storage_error"
    return f"{stage}_error"


def _run_stages(
    image: np.ndarray,
    sid: str,
    split: str | None,
    cfg: BuildConfig,
    seg: Segmenter,
    backgrounds: BackgroundCache,
    out: Location,
    timer: StageClock,
    segmented: SegmentResult | None = None,
) -> StageResult:
    """Segment (unless ``segmented``), the recipe, the files, the composites; a stage that
    raises costs this sample a ``failed`` result, never the shard."""
    done = StageResult()
    try:
        with timer("segment"), heap_reuse(image.shape[0] * image.shape[1],
                                          cfg.run.heap_reuse and segmented is None):
            result = seg.predict(image) if segmented is None else segmented
        done.presence = result.presence
        threshold = cfg.segment.presence_threshold
        if not is_person(result, PRESENCE_THRESHOLD if threshold is None else threshold):
            done.status, done.reason = "rejected", "no_person"
            done.detail = "person-presence " + ", ".join(
                f"{k}={v:.3f}" for k, v in sorted(result.evidence.items()))
            return done
        sample = make_sample(image, result.model_maps(), cfg, timer)
        done.figures = sample.row
        mask = trimap.binarize(sample.probability, cfg.trimap.threshold)
        with timer("write"):
            for kind, folder, array in (("image", "image", image), ("mask", "mask", mask),
                                        ("alpha_model", "alpha_model",
                                         to_uint8(sample.probability)),
                                        ("trimap", TRIMAP_DIR, sample.trimap),
                                        ("alpha", "alpha", sample.alpha),
                                        ("fg", "fg", sample.foreground)):
                done.files[kind] = _put(out, f"{folder}/{sid}.png", encode(array))
        if sample.verdict is not None:  # files kept so the report can show why; no composites
            done.status, (done.reason, done.detail) = "rejected", sample.verdict
            return done
        with timer("composite"):
            done.split = composite_split(sid, split, cfg)
            done.composites = make_composites(
                sid, sample.foreground, sample.alpha, done.split, cfg, backgrounds, out,
                done.files["fg"].uri, done.files["alpha"].uri)
    except Exception as exc:  # a stage bug must cost one row, not the build
        done.fail(_stage_failure(exc, timer.stage), f"{type(exc).__name__}: {exc}")
    return done


def composite_split(sid: str, known: str | None, cfg: BuildConfig) -> str:
    """The sample's split: its near-duplicate group's, else drawn from (seed, sample id)."""
    return known or comp.split_for(sid, cfg.seed, cfg.composite.test_fraction)


def make_composites(
    sid: str, fg: np.ndarray, alpha8: np.ndarray, split: str, cfg: BuildConfig,
    backgrounds: BackgroundCache, out: Location, fg_uri: str, alpha_uri: str,
) -> list[dict[str, Any]]:
    """The sample's composites: their manifest rows, each with the recipe it is made from
    (:class:`~matteforge.dataset.materialize.CompositeRecipe`), and with ``composite.store``
    their files, encoded and written on a background thread while the next one is made.  All
    files are written when this returns; a write error raises (the sample's ``write_error``)."""
    c = cfg.composite
    count = c.per_foreground_test if split == "test" else c.per_foreground_train
    height, width = alpha8.shape
    common = {"sample_id": sid, "split": split, "config_hash": cfg.config_hash()}
    rows: list[dict[str, Any]] = []
    written: list[tuple[dict[str, Any], Future[dict[str, Any]]]] = []
    with CompositeWriter(out) if c.store else nullcontext() as writer:
        for index, bg_id in enumerate(comp.assign_backgrounds(sid, backgrounds.ids, count,
                                                              cfg.seed)):
            recipe = CompositeRecipe(
                f"{sid}_{bg_id}", fg_uri, alpha_uri, backgrounds.ref(bg_id).bg_uri, height,
                width, c.mode, tuple(sample_effects(comp.effects_rng(sid, bg_id, cfg.seed),
                                                    c.effects)),
                c.format, c.jpeg_quality if c.format == "jpg" else None)
            row = {**common, **recipe.columns(), "bg_id": bg_id, "index": index}
            if writer is not None:
                pixels = recipe.render(fg, alpha8, backgrounds.fitted(bg_id, height, width))
                written.append((row, writer.put(recipe, pixels)))
            rows.append(row)
    for row, future in written:
        row.update(future.result())
    return rows


def run_shard(job: ShardJob,
              on_sample: Callable[[dict[str, Any]], None] | None = None) -> ShardSummary:
    """Process every input of one shard, then commit its manifest files (composites first)."""
    start = time.perf_counter()
    cfg = BuildConfig.model_validate(job.cfg_data)
    configure_threads(cfg.run.torch_threads)
    opts = unseal_storage(job.storage)
    src, bgs, out = (locate(uri, opts.get(name), cfg.run.io_retry()) for name, uri in
                     (("input", job.input_uri), ("backgrounds", job.backgrounds_uri),
                      ("output", job.output_uri)))
    seg = segmenter_for(cfg.segment)
    cache = BackgroundCache(bgs, job.backgrounds,
                            follow_links_outside=cfg.ingest.follow_links_outside)

    def read(item: str) -> tuple[str, bytes | Exception, GroupRef | None]:
        path = unwire_path(item)
        try:
            data: bytes | Exception = read_input(src, path, cfg.ingest.max_bytes,
                                                 cfg.ingest.follow_links_outside)
        except Exception as exc:  # unreadable: becomes its row
            data = exc
        return printable(redact_uri(src.url(path))), data, job.groups.get(item)

    samples, composites = [], []
    for outcome, row in process_samples(map(read, job.uris), cfg, seg, cache, out,
                                        batch_size(cfg.segment)):
        samples.append(row)
        composites.extend(outcome.composites)
        if on_sample is not None:
            on_sample(row)
    summary = ShardSummary.from_rows(job.shard, samples, len(composites),
                                     time.perf_counter() - start)
    name = manifest.shard_name(job.shard)
    run = {"seconds": round(summary.seconds, 3), "inputs": summary.inputs}
    manifest.write_table(out, "composites", name, composites)
    manifest.write_table(out, "samples", name, samples,
                         {manifest.SHARD_RUN_KEY: json.dumps(run, sort_keys=True)})
    return summary
