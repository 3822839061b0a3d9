"""The reprocess flow: redo only what a configuration change touches, as a new dataset version.

An existing dataset (its dataset.json and manifest) plus changes to its configuration give a new
dataset at another location.  The earliest stage whose settings changed decides what each row
redoes (see :func:`first_changed_stage`):

* ``composite`` (``composite.*``, ``seed``): the image, mask, alpha_model, trimap, alpha and fg
  files are reused; splits and composites are made again.
* ``trimap`` (``trimap.*`` other than the threshold, ``alpha.*``, ``quality.*``): the stored
  files stand in for
  the segmenter, so segmentation is not rerun; trimap, alpha, foreground and composites are.
  The probability is the stored 8-bit ``alpha_model`` held to the stored mask's side of the
  threshold (so the trimap is the one the float map gives); a parent without ``alpha_model``
  offers the 0/255 mask (thresholding it at any level gives it back).
* ``segment`` (another model or weights, ``segment.*``, ``trimap.threshold``, or an alpha prior
  change, since the prior reads the probability and 8-bit is not the float map a build uses):
  every ingested row is redone from its source, as a build would.

A reused file is copied only after its sha256 matches the parent's manifest.  Rows a stage does
not redo (rejected, failed) are carried over; ``matteforge build --mode retry-failed`` into the
new version redoes failed ones.  Every row gets the new config hash, since it is
what the new configuration produces, so incremental builds into the new version work as usual.
dataset.json gains ``parent``: where the old version is, its config hash, the sha256 of its
dataset.json, the changes and the stage reprocessing started at.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from pydantic import SecretStr

from matteforge.config import (
    BuildConfig,
    load_config,
    merge_options,
    seal_storage,
    unseal_storage,
)
from matteforge.dataset import manifest
from matteforge.dataset.codec import decode
from matteforge.dataset.snapshot import Manifest
from matteforge.dataset.stats import summarize
from matteforge.dataset.storage import Location, locate, read_bytes, redact_uri, write_bytes_atomic
from matteforge.flows.build import (
    index_backgrounds_task,
    make_task_runner,
    write_record,
)
from matteforge.models.identity import segment_identity
from matteforge.steps.duplicates import DUPLICATE
from matteforge.steps.shard import (
    BackgroundCache,
    BackgroundRef,
    ShardSummary,
    composite_split,
    make_composites,
    process_sample,
)
from matteforge.tasks.ingest import content_hash
from matteforge.tasks.segment import SegmentResult, segmenter_for

Stage = Literal["segment", "trimap", "composite"]


class ReprocessError(ValueError):
    """The change cannot be reprocessed (it needs a full build) or the parent is unusable."""


def first_changed_stage(old: BuildConfig, new: BuildConfig, model_changed: bool) -> Stage | None:
    """The earliest stage whose output the change alters; None when outputs would not change."""
    if old.ingest != new.ingest:
        raise ReprocessError("ingest settings changed: that is a new build "
                             "(matteforge build --mode overwrite), not a reprocess")
    needs_probability = old.alpha != new.alpha and bool(old.alpha.prior_weight
                                                        or new.alpha.prior_weight)
    # every segment setting but where the weights are read from (their sha is model_changed)
    segment_changed = (old.segment.model_dump(exclude={"weights_path"})
                       != new.segment.model_dump(exclude={"weights_path"}))
    if (model_changed or segment_changed
            or old.trimap.threshold != new.trimap.threshold or needs_probability):
        return "segment"
    if old.trimap != new.trimap or old.alpha != new.alpha or old.quality != new.quality:
        # An ensemble's recipe reads every model's own map, and a dataset keeps only their mean.
        return "segment" if isinstance(new.segment.model, list) else "trimap"
    if old.composite != new.composite or old.seed != new.seed:
        return "composite"
    return None


@dataclass
class StoredMask:
    """A Segmenter that answers with the parent's mask files: the segment stage, reused."""

    mask: np.ndarray  # HxW uint8 0/255
    probability: np.ndarray | None  # HxW uint8 alpha_model; None for parents without it
    threshold: float  # trimap.threshold the mask was cut at (unchanged in this stage)
    presence: float
    model_id: str
    weights_sha256: str
    license: str
    models: dict[str, str]

    def predict(self, image: np.ndarray) -> SegmentResult:
        if image.shape[:2] != self.mask.shape:
            raise ValueError(f"stored mask is {self.mask.shape}, image is {image.shape[:2]}")
        if self.probability is None:
            return SegmentResult(self.mask.astype(np.float32) / 255.0, self.presence,
                                 {"reused_mask": 1.0})
        # 8-bit rounding can cross the threshold (it never does at 0.5); the mask knows the side.
        prob = self.probability.astype(np.float32) / 255.0
        below = np.nextafter(np.float32(self.threshold), np.float32(0.0))
        prob = np.where(self.mask > 0, np.maximum(prob, self.threshold), np.minimum(prob, below))
        return SegmentResult(prob.astype(np.float32), self.presence, {"reused_mask": 1.0})


def _reuse(parent: Location, out: Location, row: dict[str, Any], kind: str) -> bytes:
    """Copy one artifact of ``row`` into the new version after checking it against its hash."""
    rel = row[f"{kind}_uri"]
    data = read_bytes(parent, parent.path(rel))
    if content_hash(data) != row[f"{kind}_sha256"]:
        raise ReprocessError(f"{rel} in the parent dataset does not match its sha256")
    write_bytes_atomic(out, out.path(rel), data)
    return data


def _recomposite(row: dict[str, Any], cfg: BuildConfig, parent: Location, out: Location,
                 cache: BackgroundCache) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    files = {kind: _reuse(parent, out, row, kind) for kind in manifest.ARTIFACTS
             if row.get(f"{kind}_uri")}  # parents from before alpha_model lack it
    fg = decode(files["fg"], "rgb")
    new = dict(row, config_hash=cfg.config_hash(), seconds_composite=0.0)
    start = time.perf_counter()
    alpha = decode(files["alpha"], "grey")
    new["split"] = composite_split(row["sample_id"], row.get("split"), cfg)
    composites = make_composites(row["sample_id"], fg, alpha, new["split"], cfg, cache, out,
                                 new["fg_uri"], new["alpha_uri"])
    new["n_composites"] = len(composites)
    new["seconds_composite"] = time.perf_counter() - start
    return new, composites


def _rerun(row: dict[str, Any], stage: Stage, cfg: BuildConfig, parent: Location,
           out: Location, cache: BackgroundCache, model: dict[str, Any],
           input_options: dict[str, Any] | None,
           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    src = locate(row["source_uri"], input_options)
    data = read_bytes(src, src.root, max_bytes=cfg.ingest.max_bytes)
    if stage == "segment":
        seg = segmenter_for(cfg.segment)
    else:
        mask = decode(_reuse(parent, out, row, "mask"), "grey")
        has_model = bool(row.get("alpha_model_uri"))
        prob = decode(_reuse(parent, out, row, "alpha_model"), "grey") if has_model else None
        seg = StoredMask(mask, prob, cfg.trimap.threshold, float(row["presence"]),
                         row["model_id"], row["model_sha256"], model.get("license", ""),
                         model.get("models", {}))
    outcome = process_sample(row["source_uri"], data, cfg, seg, cache, out)
    return outcome.row(cfg, seg), outcome.composites


def reprocess_rows(rows: list[dict[str, Any]], stage: Stage, cfg: BuildConfig, parent: Location,
                   out: Location, cache: BackgroundCache, model: dict[str, Any],
                   input_options: dict[str, Any] | None = None,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """New sample and composite rows for one shard of the parent's rows."""
    samples, composites = [], []
    for row in rows:
        # A duplicate stays one: its sample is redone through the row that holds it.
        # Rows the quality rule rejected keep their files, so later stages can judge them again.
        judged = row["status"] == "rejected" and (row["reason"] or "").startswith("low_quality:")
        redo = (row["status"] == "ok" or (judged and stage != "composite")
                or (stage == "segment" and bool(row["sample_id"])
                    and row["status"] != DUPLICATE))
        if not redo:
            new, comps = dict(row), []
        elif stage == "composite":
            new, comps = _recomposite(row, cfg, parent, out, cache)
        else:
            new, comps = _rerun(row, stage, cfg, parent, out, cache, model, input_options)
        new["config_hash"] = cfg.config_hash()
        samples.append(new)
        composites.extend(comps)
    return samples, composites


@task(name="reprocess-shard", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def reprocess_shard(
    name: str, rows: list[dict[str, Any]], stage: Stage, cfg_data: dict[str, Any],
    parent_uri: str, output_uri: str, backgrounds_uri: str, bg_refs: list[BackgroundRef],
    model: dict[str, Any], storage: SecretStr | None = None,
) -> ShardSummary:
    """One shard into the new version; its manifest files are written last (the commit)."""
    start = time.perf_counter()
    cfg = BuildConfig.model_validate(cfg_data)
    opts = unseal_storage(storage)
    parent, out = locate(parent_uri, opts.get("parent")), locate(output_uri, opts.get("output"))
    cache = BackgroundCache(locate(backgrounds_uri, opts.get("backgrounds")), bg_refs)
    samples, composites = reprocess_rows(rows, stage, cfg, parent, out, cache, model,
                                         opts.get("input"))
    manifest.write_table(out, "composites", name, composites)
    manifest.write_table(out, "samples", name, samples)
    return ShardSummary.from_rows(name, samples, composites=len(composites),
                                  seconds=time.perf_counter() - start)


@flow(name="reprocess-shards")
def reprocess_shards(shards: list[tuple[str, list[dict[str, Any]]]], stage: Stage,
                     cfg_data: dict[str, Any], parent_uri: str, output_uri: str,
                     backgrounds_uri: str, bg_refs: list[BackgroundRef],
                     model: dict[str, Any], storage: SecretStr | None) -> list[ShardSummary]:
    logger = get_run_logger()
    futures = [reprocess_shard.submit(name, rows, stage, cfg_data, parent_uri, output_uri,
                                      backgrounds_uri, bg_refs, model, storage)
               for name, rows in shards]
    summaries = []
    for future in as_completed(futures):
        summaries.append(future.result())
        logger.info("shards %d/%d", len(summaries), len(futures))
    return sorted(summaries, key=lambda s: s.shard)


def _read_parent(parent: Location) -> tuple[dict[str, Any], bytes]:
    path = parent.path("dataset.json")
    if not parent.fs.exists(path):
        raise ReprocessError(f"{parent.uri} has no dataset.json: not a finished dataset")
    data = read_bytes(parent, path)
    return json.loads(data), data


@flow(name="reprocess-dataset", log_prints=True)
def reprocess_dataset(
    source: str,
    output: str,
    changes: dict[str, Any] | None = None,
    backgrounds: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    storage_options: SecretStr | None = None,
) -> dict[str, Any]:
    """Apply ``changes`` (nested config keys) to the dataset at ``source``, writing ``output``.

    ``backgrounds`` defaults to where the parent's backgrounds came from; ``storage_options``
    is sealed as for the build (its ``output`` options also open the parent).  Returns the
    summary also written to ``dataset.json``.
    """
    started = time.perf_counter()
    parent, out = locate(source), locate(output)
    if (parent.fs.protocol, parent.root) == (out.fs.protocol, out.root):
        raise ReprocessError("output must differ from source: reprocessing writes a new version")
    logger = get_run_logger()
    storage = BuildConfig().storage.with_overrides(unseal_storage(storage_options))
    parent = locate(source, storage.for_location("output", source))
    meta, meta_bytes = _read_parent(parent)
    old = BuildConfig.model_validate(meta["config"])
    cfg = load_config(merge_options(meta["config"], changes or {}),
                      **{"run.dask_address": dask_address, "run.n_workers": n_workers})
    bg_uri = backgrounds or meta["sources"]["backgrounds"]
    opts = {"input": storage.for_location("input", meta["sources"]["input"]),
            "backgrounds": storage.for_location("backgrounds", bg_uri),
            "output": storage.for_location("output", output),
            "parent": storage.for_location("output", source)}
    out = locate(output, opts["output"])
    model = meta["model"]
    identity = None
    if old.segment.model != cfg.segment.model or cfg.segment.weights_path:
        identity = segment_identity(cfg.segment)
    stage = first_changed_stage(old, cfg, identity is not None
                                and identity.weights_sha256 != model["sha256"])
    if stage is None:
        raise ReprocessError("the changes do not alter any output: nothing to reprocess")
    if stage == "segment":
        model = (identity or segment_identity(cfg.segment)).record()
    old_shards = {n: t.to_pylist() for n, t in manifest.read_shards(parent, "samples").items()}
    new_hash = cfg.config_hash()
    shards = [(manifest.shard_name(manifest.shard_key([r["source_uri"] for r in rows], new_hash)),
               rows) for _, rows in sorted(old_shards.items()) if rows]
    logger.info("reprocessing %d rows in %d shards from the %s stage (config %s -> %s)",
                sum(len(r) for _, r in shards), len(shards), stage, old.config_hash(), new_hash)
    sealed = seal_storage(opts)
    loaded = Manifest.load(out)  # a version being resumed keeps its backgrounds' rows
    bg_rows, bg_refs = index_backgrounds_task(bg_uri, output, cfg, sealed,
                                              loaded.rows("backgrounds"))
    loaded.write("backgrounds", manifest.shard_name(0), bg_rows)
    summaries = reprocess_shards.with_options(task_runner=make_task_runner(cfg.run))(
        shards, stage, cfg.model_dump(mode="json"), source, output, bg_uri, bg_refs, model,
        sealed)
    for table in ("composites", "samples"):  # what the shards committed
        loaded.reload(table)
    summary = summarize(summaries, time.perf_counter() - started)
    summary["dataset"] = loaded.counts()
    lineage = {"uri": redact_uri(source), "config_hash": meta["config_hash"],
               "dataset_json_sha256": content_hash(meta_bytes), "reprocessed_from": stage,
               "changes": changes or {}}
    write_record(out, cfg, model, {"input": meta["sources"]["input"],
                                   "backgrounds": redact_uri(bg_uri)}, summary, loaded, lineage,
                 source_options=opts["input"])
    logger.info("done: %s from the %s stage", json.dumps(summary["dataset"]["by_status"]), stage)
    return summary
