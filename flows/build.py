"""The build flow: list inputs, index backgrounds, process shards on Dask, write dataset.json.

This file is the only place that knows the order of the build.  Image work happens inside
``process-shard`` tasks (see :mod:`matteforge.steps.shard`), one per shard, on a
``DaskTaskRunner``: a LocalCluster by default, or an existing scheduler by address.

Storage options (endpoints, credentials) travel sealed in a ``SecretStr``: Prefect records flow
parameters in its database and shows them in its UI, and records a SecretStr as ``**********``.
They reach the workers as task arguments, never through the flow process's global state.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner
from pydantic import SecretStr

from matteforge import __version__
from matteforge.config import (
    LOCATIONS,
    BuildConfig,
    RunConfig,
    check_locations,
    load_config,
    seal_storage,
    unseal_storage,
)
from matteforge.dataset import manifest
from matteforge.dataset.card import write_card
from matteforge.dataset.lock import LockInfo, OutputLocked, output_lock
from matteforge.dataset.report import summary_markdown, write_report
from matteforge.dataset.snapshot import Manifest
from matteforge.dataset.stats import STATS_FILE, dataset_stats, summarize
from matteforge.dataset.storage import (
    Location,
    clear_temporary,
    list_file_sizes,
    locate,
    redact_uri,
    wire_path,
    write_bytes_atomic,
)
from matteforge.dataset.unreadable import MACHINE_REASONS
from matteforge.dataset.verify import Damage, find_damage
from matteforge.models.identity import ModelIdentity, segment_identity
from matteforge.steps.backgrounds import index_backgrounds
from matteforge.steps.duplicates import resolve_duplicates
from matteforge.steps.groups import KnownGroups, fingerprint_inputs, group_inputs, known_groups
from matteforge.steps.jobs import BackgroundRef, GroupRef, ShardJob, ShardSummary
from matteforge.steps.plan import stale_rows
from matteforge.steps.preview import check_not_empty, list_inputs, plan_inputs
from matteforge.steps.progress import emit
from matteforge.tasks.ingest import content_hash

_VERSIONED = ("prefect", "prefect-dask", "dask", "distributed", "torch", "numpy",
              "opencv-python-headless", "scikit-learn", "scipy", "pymatting", "pyarrow", "pillow")


def make_task_runner(run: RunConfig) -> DaskTaskRunner:
    """An existing scheduler by address, a cluster class (e.g. KubeCluster), or a LocalCluster."""
    if run.dask_address:
        return DaskTaskRunner(address=run.dask_address)
    if run.cluster_class:
        return DaskTaskRunner(cluster_class=run.cluster_class, cluster_kwargs=run.cluster_kwargs,
                              adapt_kwargs=run.adapt_kwargs)
    kwargs: dict[str, Any] = {"threads_per_worker": run.threads_per_worker, "processes": True,
                              "dashboard_address": None}
    if run.n_workers is not None:
        kwargs["n_workers"] = run.n_workers
    return DaskTaskRunner(cluster_kwargs=kwargs)


@task(name="process-shard", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def process_shard(job: ShardJob) -> ShardSummary:
    # imported here, on the worker: the flow's own process never runs a stage
    from matteforge.steps.shard import run_shard

    return run_shard(job)


# Inputs per fingerprint task: enough that Prefect's per-task cost stays small next to reading
# and hashing them (a few ms each), few enough that a big build spreads over its workers.
FINGERPRINT_CHUNK = 512


@task(name="fingerprint-inputs", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def fingerprint_task(items: list[str], cfg_data: dict[str, Any], input_uri: str,
                     storage: SecretStr | None = None) -> dict[str, tuple[str, str]]:
    cfg = BuildConfig.model_validate(cfg_data)
    src = locate(input_uri, unseal_storage(storage).get("input"), cfg.run.io_retry())
    return fingerprint_inputs(src, items, cfg.ingest.max_bytes, cfg.ingest.max_pixels,
                              cfg.ingest.follow_links_outside)


def _groups(shards: list[tuple[str, list[str]]], cfg: BuildConfig, input_uri: str,
            known: KnownGroups, storage: SecretStr | None) -> dict[str, GroupRef]:
    """Every input's near-duplicate group and split, from fingerprint tasks of
    ``FINGERPRINT_CHUNK`` inputs (a fingerprint costs milliseconds, a task ~0.15 s);
    ``known``: the groups the manifest already holds."""
    logger = get_run_logger()
    prints: dict[str, tuple[str, str]] = {}
    cfg_data = cfg.model_dump(mode="json")
    items = [u for _, uris in shards for u in uris]
    chunks = [items[i:i + FINGERPRINT_CHUNK] for i in range(0, len(items), FINGERPRINT_CHUNK)]
    for future in [fingerprint_task.submit(chunk, cfg_data, input_uri, storage)
                   for chunk in chunks]:
        try:
            prints.update(future.result())
        except Exception as exc:  # those inputs fall back to a split of their own
            logger.warning("fingerprints of a chunk of inputs failed (%s: %s): their "
                           "near-duplicates are not grouped", type(exc).__name__, exc)
    groups = group_inputs(prints, known, cfg.composite.near_duplicate_bits, cfg.seed,
                          cfg.composite.test_fraction)
    merged = len(prints) - len({g[1] for g in groups.values()})
    logger.info("fingerprints: %d input(s), %d in a group with a near-identical photo",
                len(prints), merged)
    return groups


@task(name="index-backgrounds", cache_policy=NONE)
def index_backgrounds_task(
    backgrounds_uri: str, output_uri: str, cfg: BuildConfig, storage: SecretStr | None = None,
    recorded: list[dict[str, Any]] | None = None, damaged: list[str] | None = None,
) -> tuple[list[dict[str, Any]], list[BackgroundRef]]:
    """The backgrounds manifest's rows (the caller commits them) and the usable backgrounds.

    ``recorded``: the rows the manifest holds, reused for unchanged files; ``damaged``: source
    URIs whose copy in ``bg/`` is damaged, so it is made again.
    """
    opts = unseal_storage(storage)
    src = locate(backgrounds_uri, opts.get("backgrounds"), cfg.run.io_retry())
    out = locate(output_uri, opts.get("output"), cfg.run.io_retry())
    files = list_file_sizes(src, cfg.ingest.extensions)
    redo = set(damaged or ())
    known = {r["source_uri"]: r for r in recorded or [] if r["source_uri"] not in redo}
    rows, refs = index_backgrounds(
        files, src, out, copy=cfg.composite.copy_backgrounds,
        max_pixels=cfg.ingest.max_pixels, max_bytes=cfg.ingest.max_bytes, known=known,
        follow_links_outside=cfg.ingest.follow_links_outside)
    get_run_logger().info("backgrounds: %d usable of %d listed", len(refs), len(files))
    return rows, refs


def _progress_line(done: int, total: int, images: int, n_images: int, counts: dict[str, int],
                   started: float) -> str:
    elapsed = max(time.perf_counter() - started, 1e-9)
    rate = images / elapsed
    eta = (n_images - images) / rate if rate > 0 else None
    left = "—" if eta is None else f"{eta / 60:.0f} min" if eta >= 120 else f"{eta:.0f} s"
    parts = " · ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return (f"shards {done}/{total} · images {images}/{n_images} · {rate:.2f} img/s · "
            f"ETA {left} · {parts}")


@dataclass(frozen=True)
class ShardFailure:
    """A shard whose task failed for good (its retries spent): a lost worker, a store that
    stayed down.  Its inputs have no rows, so the next incremental build does them."""

    shard: str
    inputs: int
    error: str


@flow(name="process-shards")
def process_shards(
    shards: list[tuple[str, list[str]]], cfg_data: dict[str, Any], input_uri: str,
    backgrounds_uri: str, bg_refs: list[BackgroundRef], output_uri: str,
    storage: SecretStr | None = None, known: KnownGroups | None = None,
) -> tuple[list[ShardSummary], list[ShardFailure]]:
    """Fan shards out to Dask and report progress as each one lands.

    A shard that fails is reported and left out; the others go on.  ``known``: the
    near-duplicate groups the manifest holds (:func:`known_groups`).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    cfg = BuildConfig.model_validate(cfg_data)
    groups = _groups(shards, cfg, input_uri, known or ({}, {}), storage)
    shard_task = process_shard.with_options(retries=cfg.run.shard_retries)
    futures = {
        shard_task.submit(ShardJob(key, uris, cfg_data, input_uri, backgrounds_uri, output_uri,
                                   bg_refs, {u: groups[u] for u in uris if u in groups},
                                   storage)): (key, len(uris))
        for key, uris in shards
    }
    n_images = sum(len(uris) for _, uris in shards)
    summaries: list[ShardSummary] = []
    failures: list[ShardFailure] = []
    counts: dict[str, int] = {}
    for future in as_completed(list(futures)):
        key, n = futures[future]
        try:
            summary: ShardSummary = future.result()
        except Exception as exc:
            failures.append(ShardFailure(key, n, f"{type(exc).__name__}: {exc}"[:500]))
            counts["shard_failed"] = counts.get("shard_failed", 0) + n
            logger.error("shard %s (%d inputs) failed: %s", key, n, failures[-1].error)
        else:
            summaries.append(summary)
            for status, k in summary.counts.items():
                counts[status] = counts.get(status, 0) + k
        images = sum(counts.values())
        logger.info(_progress_line(len(summaries) + len(failures), len(shards), images,
                                   n_images, counts, started))
        emit("shard", shards_done=len(summaries) + len(failures), shards=len(shards),
             images=images, images_total=n_images, counts=dict(counts))
    return sorted(summaries, key=lambda s: s.shard), sorted(failures, key=lambda f: f.shard)


def _versions() -> dict[str, str]:
    found = {"matteforge": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _shards(items: list[str], size: int, config_hash: str) -> list[tuple[str, list[str]]]:
    """Shards of listed paths, each path as plain text (:func:`wire_path`)."""
    items = [wire_path(p) for p in items]
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    return [(manifest.shard_key(chunk, config_hash), chunk) for chunk in chunks]


def _recount(loaded: Manifest, summaries: list[ShardSummary]) -> list[ShardSummary]:
    """This run's shard summaries, counted again from their rows as committed now.

    :func:`resolve_duplicates` may have turned rows the workers counted as ok into duplicates;
    the task's seconds and inputs stay as the worker measured them.
    """
    shards = loaded.shards("samples")
    fresh = []
    for s in summaries:
        rows = shards.get(manifest.shard_name(s.shard))
        if rows is None:
            fresh.append(s)
            continue
        composites = sum(r["n_composites"] or 0 for r in rows if r["status"] == "ok")
        fresh.append(ShardSummary.from_rows(s.shard, rows, composites, s.seconds, s.inputs))
    return fresh


def _config_record(cfg: BuildConfig) -> dict[str, Any]:
    """The config as dataset.json keeps it: no locations, a user model's URI without userinfo."""
    record = cfg.model_dump(mode="json", exclude={"input", "backgrounds", "output"})
    user_model = record.get("segment", {}).get("model")
    if isinstance(user_model, dict) and isinstance(user_model.get("uri"), str):
        user_model["uri"] = redact_uri(user_model["uri"])
    return record


def write_record(out: Location, cfg: BuildConfig, model: dict[str, Any], sources: dict[str, str],
                 summary: dict[str, Any], loaded: Manifest, parent: dict[str, Any] | None = None,
                 source_options: dict[str, Any] | None = None) -> None:
    """stats.json and the dataset card (README.md and hf/, for 🤗 datasets), then dataset.json
    (written last: its presence means the dataset is done), then the report that describes
    them.

    Shared by the build and the reprocess flow.  ``parent`` (a reprocessed version's lineage)
    defaults to the one already recorded at ``out``, so builds into a version keep it;
    ``source_options`` open the inputs for the report's thumbnails of rows without files.
    """
    stats = dataset_stats(loaded.tables("samples"),
                          {k: v for k, v in summary.items() if k != "dataset"})
    stats_bytes = json.dumps(stats, indent=2, sort_keys=True).encode()
    write_bytes_atomic(out, out.path(STATS_FILE), stats_bytes)
    dataset = {
        "name": cfg.name,
        "schema_version": manifest.SCHEMA_VERSION,
        "config_hash": cfg.config_hash(),
        "config": _config_record(cfg),
        "sources": sources,
        "model": model,
        "versions": _versions(),
        "counts": summary["dataset"],
        "last_run": {k: v for k, v in summary.items() if k != "dataset"},
        "checksums": {**loaded.checksums(), STATS_FILE: content_hash(stats_bytes)},
    }
    if parent := parent or _parent_of(out):
        dataset["parent"] = parent
    write_card(out, loaded.table("samples"), loaded.table("composites"), dataset)
    write_bytes_atomic(out, out.path("dataset.json"),
                       json.dumps(dataset, indent=2, sort_keys=True).encode())
    _publish_report(out, cfg.seed, source_options, loaded)
    clear_temporary(out)  # every writer is done: a finished dataset has no .tmp/ folder


def _publish_report(out: Location, seed: int, source_options: dict[str, Any] | None,
                    loaded: Manifest) -> None:
    """``report/index.html``, then a markdown artifact on the flow run pointing at it.

    Runs after the dataset is complete; a report that cannot be made costs a warning, never the
    build it describes.
    """
    logger = get_run_logger()
    try:
        path = write_report(out, seed=seed, source_storage_options=source_options,
                            loaded=loaded)
        create_markdown_artifact(markdown=summary_markdown(out, path, loaded), key="build-report",
                                 description="matteforge build summary")
    except Exception as exc:
        logger.warning("could not write the report: %s: %s", type(exc).__name__, exc)
        return
    logger.info("report: %s", redact_uri(out.url(out.path(path))))


def _parent_of(out: Location) -> dict[str, Any] | None:
    """``parent`` of the dataset.json already at ``out`` (written by the reprocess flow)."""
    path = out.path("dataset.json")
    if not out.fs.exists(path):
        return None
    with out.fs.open(path, "rb") as fh:
        return json.loads(fh.read()).get("parent")


@flow(name="build-dataset", log_prints=True)
def build_dataset(
    config: str | dict[str, Any] | None = None,
    input: str | None = None,
    backgrounds: str | None = None,
    output: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    shard_size: int | None = None,
    mode: str | None = None,
    storage_options: SecretStr | None = None,
    locations: SecretStr | None = None,
    check_hashes: bool = False,
    follow_links_outside: bool | None = None,
    limit: int | None = None,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Portraits → masks, trimaps, alphas, foregrounds, composites and Parquet manifests.

    ``config`` is a YAML path, a packaged config name (``demo``) or a dict; the other
    parameters override it.  ``storage_options`` (made by :func:`~matteforge.config.seal_storage`
    from data shaped like the config's ``storage`` section) is merged over that section.
    ``locations`` carries location URIs that hold credentials (``https://user:pw@...``), sealed
    the same way and winning over ``input``/``backgrounds``/``output``: Prefect keeps plain flow
    parameters in its database.  ``check_hashes`` reads every file of the dataset to find
    damage (``verify --repair``); without it damage is found by size.  ``limit`` builds only
    the first inputs (sorted); an input with no image is an error unless ``allow_empty``.
    Returns the summary also written to ``dataset.json``.
    """
    started = time.perf_counter()
    hidden = unseal_storage(locations)
    input, backgrounds = hidden.get("input", input), hidden.get("backgrounds", backgrounds)
    output = hidden.get("output", output)
    overrides = {"input": input, "backgrounds": backgrounds, "output": output,
                 "run.dask_address": dask_address, "run.n_workers": n_workers,
                 "run.shard_size": shard_size, "run.mode": mode,
                 "ingest.follow_links_outside": follow_links_outside}
    cfg = load_config(config, **overrides)
    missing = [k for k in ("input", "backgrounds", "output") if getattr(cfg, k) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: give them in the config or as flags")
    assert cfg.input and cfg.backgrounds and cfg.output
    check_locations(cfg)
    logger = get_run_logger()
    # The workers load the models; the flow only records which they are (no torch here).
    seg = segment_identity(cfg.segment)
    storage = cfg.storage.with_overrides(unseal_storage(storage_options))
    opts = {name: storage.for_location(name, getattr(cfg, name)) for name in LOCATIONS}
    sealed = seal_storage(opts)
    out = locate(cfg.output, opts["output"], cfg.run.io_retry())
    with output_lock(out) as held:
        if held.took_over:
            logger.warning("took over the lock of a build that is gone: %s",
                           json.dumps(held.took_over, sort_keys=True))
        return _build(cfg, seg, opts, sealed, out, started, check_hashes, held, limit,
                      allow_empty)


def _still_ours(held: LockInfo) -> None:
    """Stop before rewriting shared files when another build has taken the lock over."""
    if held.lost:
        raise OutputLocked(f"another build took over the lock on {redact_uri(held.path)} "
                           "while this one ran (its heartbeat was late): stopped before "
                           "rewriting the manifest; the shards committed are kept")


def _build(cfg: BuildConfig, seg: ModelIdentity, opts: dict[str, Any], sealed: SecretStr,
           out: Location, started: float, check_hashes: bool, held: LockInfo, limit: int | None,
           allow_empty: bool) -> dict[str, Any]:
    """The build's steps, run while this build holds the output's lock."""
    assert cfg.input and cfg.backgrounds
    logger = get_run_logger()
    loaded, damage = recover(out, check_hashes, logger)
    config_hash = cfg.config_hash()
    listing = list_inputs(cfg, locate(cfg.input, opts["input"], cfg.run.io_retry()), limit)
    plan = plan_inputs(cfg, listing, loaded.shards("samples"), seg.weights_sha256, damage)
    logger.info("%d input files: %d to process, %d already done (mode %s), shards of %d",
                len(listing), len(plan.todo), plan.skipped, cfg.run.mode, cfg.run.shard_size)
    emit("plan", inputs=len(listing), todo=len(plan.todo), skipped=plan.skipped)
    bg_rows, bg_refs = index_backgrounds_task(cfg.backgrounds, cfg.output, cfg, sealed,
                                              loaded.rows("backgrounds"),
                                              sorted(damage.backgrounds))
    loaded.write("backgrounds", manifest.shard_name(0), bg_rows)
    check_not_empty(cfg, listing, len(bg_refs), allow_empty)
    shards = _shards([f.path for f in plan.todo], cfg.run.shard_size, config_hash)
    summaries: list[ShardSummary] = []
    failures: list[ShardFailure] = []
    if shards:
        summaries, failures = process_shards.with_options(task_runner=make_task_runner(cfg.run))(
            shards, cfg.model_dump(mode="json"), cfg.input, cfg.backgrounds, bg_refs,
            cfg.output, sealed, known_groups(loaded.rows("samples")))
    _still_ours(held)
    written = {manifest.shard_name(s.shard) for s in summaries}
    loaded.reload("composites", written)
    loaded.reload("samples", written)
    now = loaded.shards("samples")
    drop = stale_rows(now, config_hash, seg.weights_sha256, written)
    if cfg.run.mode == "overwrite" and not failures:
        # The old rows stayed until now, so a killed overwrite leaves the old dataset (plus
        # whatever shards it committed); only once every shard is in do the rest go, inputs
        # that have disappeared included.
        drop |= {(name, r["source_uri"]) for name, rows in now.items() if name not in written
                 for r in rows}
    dropped = loaded.drop(drop)
    if duplicates := resolve_duplicates(loaded):
        logger.info("%d source(s) hold the same bytes as another: recorded as duplicates",
                    duplicates)
        summaries = _recount(loaded, summaries)
    summary = summarize(summaries, time.perf_counter() - started)
    summary.update(skipped=plan.skipped, rows_replaced=dropped, backgrounds_usable=len(bg_refs),
                   repaired=len(damage.sources), quarantined=len(damage.unreadable),
                   machine_failures=_machine_failures(summary, failures),
                   dataset=loaded.counts())
    write_record(out, cfg, seg.record(),
                 {"input": redact_uri(cfg.input), "backgrounds": redact_uri(cfg.backgrounds)},
                 summary, loaded, source_options=opts["input"])
    logger.info("done: %s", json.dumps({k: summary[k] for k in
                                         ("samples", "skipped", "by_status", "seconds")}))
    emit("done", summary=summary)
    return summary


def recover(out: Location, check_hashes: bool, logger: logging.Logger | logging.LoggerAdapter[Any]
            ) -> tuple[Manifest, Damage]:
    """Undo what a killed build left half-done and find what was damaged since; returns the
    manifest as it then stands (read once, here) and what the build must redo.

    Runs before any worker starts, so nothing is writing: temporary files and uncommitted
    composites files go, manifest files that do not read move to ``quarantine/`` (their inputs
    get no row, so this build does them again).
    """
    clear_temporary(out)
    if discarded := manifest.discard_uncommitted(out):
        logger.warning("removed %d composites file(s) an interrupted build left uncommitted",
                       len(discarded))
    loaded = Manifest.load(out)
    damage = find_damage(out, hashes=check_hashes, loaded=loaded)
    for moved in loaded.quarantine_unreadable():
        logger.warning("a manifest file did not read (truncated or overwritten): moved to %s; "
                       "its samples are done again", moved)
    if damage.sources or damage.backgrounds:
        logger.warning("%d sample(s) and %d background(s) have missing or damaged files: "
                       "done again", len(damage.sources), len(damage.backgrounds))
    return loaded, damage


def _machine_failures(summary: dict[str, Any], failures: list[ShardFailure]) -> dict[str, Any]:
    """This run's failures that are not the inputs' fault: rows and whole shards.

    Nothing is lost: the rows are redone by the next incremental build, the failed shards'
    inputs have no row yet.  A non-empty record makes the CLI exit non-zero.
    """
    rows = {r: n for r, n in summary["by_reason"].items() if r in MACHINE_REASONS}
    return {"inputs": sum(rows.values()) + sum(f.inputs for f in failures),
            "by_reason": rows, "shards_failed": [asdict(f) for f in failures]}

