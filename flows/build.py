"""The build flow: list inputs, index backgrounds, process shards on Dask, write dataset.json.

This file is the only place that knows the order of the build.  Image work happens inside
``process-shard`` tasks (see :mod:`matteforge.flows.shard`), one per shard, on a
``DaskTaskRunner``: a LocalCluster by default, or an existing scheduler by address.

Storage options (endpoints, credentials) travel sealed in a ``SecretStr``: Prefect records flow
parameters in its database and shows them in its UI, and records a SecretStr as ``**********``.
They reach the workers as task arguments, never through the flow process's global state.
"""

from __future__ import annotations

import json
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
from matteforge.flows.backgrounds import index_backgrounds
from matteforge.flows.duplicates import resolve_duplicates
from matteforge.flows.groups import fingerprint_inputs, group_inputs
from matteforge.flows.plan import stale_rows
from matteforge.flows.preview import check_not_empty, list_inputs, plan_inputs
from matteforge.flows.progress import emit
from matteforge.flows.shard import BackgroundRef, GroupRef, ShardSummary, run_shard
from matteforge.flows.stats import STATS_FILE, dataset_stats, summarize
from matteforge.tasks import manifest
from matteforge.tasks.dataset_card import write_card
from matteforge.tasks.ingest import content_hash
from matteforge.tasks.lock import LockInfo, OutputLocked, output_lock
from matteforge.tasks.report import summary_markdown, write_report
from matteforge.tasks.segment import segmenter_for
from matteforge.tasks.storage import (
    Location,
    clear_temporary,
    list_file_sizes,
    locate,
    redact_uri,
    wire_path,
    write_bytes_atomic,
)
from matteforge.tasks.unreadable import MACHINE_REASONS
from matteforge.verify import find_damage

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
def process_shard(
    shard: str, uris: list[str], cfg_data: dict[str, Any], input_uri: str,
    backgrounds_uri: str, bg_refs: list[BackgroundRef], output_uri: str,
    storage: SecretStr | None = None, groups: dict[str, GroupRef] | None = None,
) -> ShardSummary:
    return run_shard(shard, uris, cfg_data, input_uri, backgrounds_uri, bg_refs, output_uri,
                     storage_options=unseal_storage(storage), groups=groups)


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
            output_uri: str, storage: SecretStr | None) -> dict[str, GroupRef]:
    """Every input's near-duplicate group and split, from fingerprint tasks of
    ``FINGERPRINT_CHUNK`` inputs (a fingerprint costs milliseconds, a task ~0.15 s)."""
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
            logger.warning("fingerprints of %s failed (%s: %s): their near-duplicates are "
                           "not grouped", "a chunk of inputs", type(exc).__name__, exc)
    out = locate(output_uri, unseal_storage(storage).get("output"), cfg.run.io_retry())
    rows = manifest.read_table(out, "samples").to_pylist()
    groups = group_inputs(prints, rows, cfg.composite.near_duplicate_bits, cfg.seed,
                          cfg.composite.test_fraction)
    merged = len(prints) - len({g[1] for g in groups.values()})
    logger.info("fingerprints: %d input(s), %d in a group with a near-identical photo",
                len(prints), merged)
    return groups


@task(name="index-backgrounds", cache_policy=NONE)
def index_backgrounds_task(
    backgrounds_uri: str, output_uri: str, cfg: BuildConfig, storage: SecretStr | None = None,
    damaged: list[str] | None = None,
) -> list[BackgroundRef]:
    """``damaged``: source URIs whose copy in ``bg/`` is damaged, so it is made again."""
    opts = unseal_storage(storage)
    src = locate(backgrounds_uri, opts.get("backgrounds"), cfg.run.io_retry())
    out = locate(output_uri, opts.get("output"), cfg.run.io_retry())
    files = list_file_sizes(src, cfg.ingest.extensions)
    redo = set(damaged or ())
    known = {r["source_uri"]: r for r in manifest.read_table(out, "backgrounds").to_pylist()
             if r["source_uri"] not in redo}
    rows, refs = index_backgrounds(
        files, src, out, copy=cfg.composite.copy_backgrounds,
        max_pixels=cfg.ingest.max_pixels, max_bytes=cfg.ingest.max_bytes, known=known,
        follow_links_outside=cfg.ingest.follow_links_outside)
    manifest.write_table(out, "backgrounds", manifest.shard_name(0), rows)
    get_run_logger().info("backgrounds: %d usable of %d listed", len(refs), len(files))
    return refs


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
    backgrounds_uri: str,
    bg_refs: list[BackgroundRef], output_uri: str, storage: SecretStr | None = None,
) -> tuple[list[ShardSummary], list[ShardFailure]]:
    """Fan shards out to Dask and report progress as each one lands.

    A shard that fails is reported and left out; the others go on.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    cfg = BuildConfig.model_validate(cfg_data)
    groups = _groups(shards, cfg, input_uri, output_uri, storage)
    shard_task = process_shard.with_options(retries=cfg.run.shard_retries)
    futures = {
        shard_task.submit(key, uris, cfg_data, input_uri, backgrounds_uri, bg_refs, output_uri,
                          storage, {u: groups[u] for u in uris if u in groups}): (key, len(uris))
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


def _manifest_checksums(out: Location) -> dict[str, str]:
    sums = {}
    for table in manifest.TABLES:
        for name, path in manifest.shard_files(out, table).items():
            with out.fs.open(path, "rb") as fh:
                sums[f"manifest/{table}/{name}"] = content_hash(fh.read())
    return sums


def _shards(items: list[str], size: int, config_hash: str) -> list[tuple[str, list[str]]]:
    """Shards of listed paths, each path as plain text (:func:`wire_path`)."""
    items = [wire_path(p) for p in items]
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    return [(manifest.shard_key(chunk, config_hash), chunk) for chunk in chunks]


def _recover(out: Location) -> list[str]:
    """Undo what a killed build left half-done: temporary files, uncommitted composites files.

    Runs before any worker starts, so nothing is writing.  Returns the discarded shard names.
    """
    clear_temporary(out)
    return manifest.discard_uncommitted(out)


def _quarantine_unreadable(out: Location, unreadable: list[str]) -> list[str]:
    """Move manifest files that do not read to ``quarantine/``; their inputs get no row, so
    this build does them again.  Returns where each went."""
    moved = [manifest.quarantine(out, rel) for rel in unreadable]
    if moved:
        manifest.discard_uncommitted(out)  # composites whose samples file was moved aside
    return moved


def _recount(out: Location, summaries: list[ShardSummary]) -> list[ShardSummary]:
    """This run's shard summaries, counted again from their rows as committed now.

    :func:`resolve_duplicates` may have turned rows the workers counted as ok into duplicates;
    the task's seconds and inputs stay as the worker measured them.
    """
    tables = manifest.read_shards(out, "samples")
    fresh = []
    for s in summaries:
        table = tables.get(manifest.shard_name(s.shard))
        rows = table.to_pylist() if table is not None else []
        composites = sum(r["n_composites"] or 0 for r in rows if r["status"] == "ok")
        fresh.append(ShardSummary.from_rows(s.shard, rows, composites, s.seconds, s.inputs)
                     if table is not None else s)
    return fresh


def _drop_rows(out: Location, drop: set[tuple[str, str]]) -> int:
    """Remove (shard, source_uri) sample rows and their composites; composites go first.

    Called only after the rows replacing them are committed, so a crash in here leaves a
    duplicate that the next run's planning removes, never a missing row.
    """
    by_shard: dict[str, set[str]] = {}
    for shard, uri in drop:
        by_shard.setdefault(shard, set()).add(uri)
    if not by_shard:
        return 0
    all_samples = manifest.read_shards(out, "samples")
    all_composites = manifest.read_shards(out, "composites")
    for shard, uris in sorted(by_shard.items()):
        samples = all_samples[shard].to_pylist()
        keep = [r for r in samples if r["source_uri"] not in uris]
        kept_ids = {r["sample_id"] for r in keep}
        gone_ids = {r["sample_id"] for r in samples if r["source_uri"] in uris} - kept_ids
        composites = all_composites.get(shard)
        if composites is not None:
            rows = [r for r in composites.to_pylist() if r["sample_id"] not in gone_ids]
            manifest.rewrite_shard(out, "composites", shard, rows)
        run = (all_samples[shard].schema.metadata or {}).get(manifest.SHARD_RUN_KEY.encode())
        manifest.rewrite_shard(out, "samples", shard, keep,
                               {manifest.SHARD_RUN_KEY: run.decode()} if run else None)
    return sum(len(u) for u in by_shard.values())


def dataset_counts(out: Location) -> dict[str, Any]:
    """Counts over the whole manifest (every run's rows), as verify recomputes them."""
    samples = manifest.read_table(out, "samples").to_pylist()
    composites = manifest.read_table(out, "composites").to_pylist()
    by_status: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    by_split: dict[str, int] = {}
    for row in samples:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
        if row["reason"]:
            by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
    for row in composites:
        by_split[row["split"]] = by_split.get(row["split"], 0) + 1
    return {"samples": len(samples), "by_status": dict(sorted(by_status.items())),
            "by_reason": dict(sorted(by_reason.items())), "composites": len(composites),
            "composites_by_split": dict(sorted(by_split.items()))}


def model_record(seg: Any) -> dict[str, Any]:
    """dataset.json's ``model``: the mask model, its license and every weights file behind it."""
    return {"id": seg.model_id, "sha256": seg.weights_sha256, "license": seg.license,
            "models": dict(seg.models)}


def _config_record(cfg: BuildConfig) -> dict[str, Any]:
    """The config as dataset.json keeps it: no locations, a user model's URI without userinfo."""
    record = cfg.model_dump(mode="json", exclude={"input", "backgrounds", "output"})
    user_model = record.get("segment", {}).get("model")
    if isinstance(user_model, dict) and isinstance(user_model.get("uri"), str):
        user_model["uri"] = redact_uri(user_model["uri"])
    return record


def write_record(out: Location, cfg: BuildConfig, model: dict[str, Any], sources: dict[str, str],
                 summary: dict[str, Any], parent: dict[str, Any] | None = None,
                 source_options: dict[str, Any] | None = None) -> None:
    """stats.json and the dataset card (README.md and hf/, for 🤗 datasets), then dataset.json
    (written last: its presence means the dataset is done), then the report that describes
    them.

    Shared by the build and the reprocess flow.  ``parent`` (a reprocessed version's lineage)
    defaults to the one already recorded at ``out``, so builds into a version keep it;
    ``source_options`` open the inputs for the report's thumbnails of rows without files.
    """
    stats = dataset_stats(manifest.read_shards(out, "samples"),
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
        "checksums": {**_manifest_checksums(out), STATS_FILE: content_hash(stats_bytes)},
    }
    if parent := parent or _parent_of(out):
        dataset["parent"] = parent
    write_card(out, manifest.read_table(out, "samples"), manifest.read_table(out, "composites"),
               dataset)
    write_bytes_atomic(out, out.path("dataset.json"),
                       json.dumps(dataset, indent=2, sort_keys=True).encode())
    _publish_report(out, cfg.seed, source_options)
    clear_temporary(out)  # every writer is done: a finished dataset has no .tmp/ folder


def _publish_report(out: Location, seed: int, source_options: dict[str, Any] | None) -> None:
    """``report/index.html``, then a markdown artifact on the flow run pointing at it.

    Runs after the dataset is complete; a report that cannot be made costs a warning, never the
    build it describes.
    """
    logger = get_run_logger()
    try:
        path = write_report(out, seed=seed, source_storage_options=source_options)
        create_markdown_artifact(markdown=summary_markdown(out, path), key="build-report",
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
    seg = segmenter_for(cfg.segment)
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


def _build(cfg: BuildConfig, seg: Any, opts: dict[str, Any], sealed: SecretStr, out: Location,
           started: float, check_hashes: bool, held: LockInfo, limit: int | None,
           allow_empty: bool) -> dict[str, Any]:
    """The build's steps, run while this build holds the output's lock."""
    assert cfg.input and cfg.backgrounds
    logger = get_run_logger()
    if discarded := _recover(out):
        logger.warning("removed %d composites file(s) an interrupted build left uncommitted",
                       len(discarded))
    damage = find_damage(out, hashes=check_hashes)
    for moved in _quarantine_unreadable(out, damage.unreadable):
        logger.warning("a manifest file did not read (truncated or overwritten): moved to %s; "
                       "its samples are done again", moved)
    if damage.sources or damage.backgrounds:
        logger.warning("%d sample(s) and %d background(s) have missing or damaged files: "
                       "done again", len(damage.sources), len(damage.backgrounds))
    config_hash = cfg.config_hash()
    src = locate(cfg.input, opts["input"], cfg.run.io_retry())
    listing = list_inputs(cfg, src, limit)
    old = {name: t.to_pylist() for name, t in manifest.read_shards(out, "samples").items()}
    plan = plan_inputs(cfg, listing, old, seg.weights_sha256, damage)
    logger.info("%d input files: %d to process, %d already done (mode %s), shards of %d",
                len(listing), len(plan.todo), plan.skipped, cfg.run.mode, cfg.run.shard_size)
    emit("plan", inputs=len(listing), todo=len(plan.todo), skipped=plan.skipped)
    bg_refs = index_backgrounds_task(cfg.backgrounds, cfg.output, cfg, sealed,
                                     sorted(damage.backgrounds))
    check_not_empty(cfg, listing, len(bg_refs), allow_empty)
    shards = _shards([f.path for f in plan.todo], cfg.run.shard_size, config_hash)
    summaries: list[ShardSummary] = []
    failures: list[ShardFailure] = []
    if shards:
        summaries, failures = process_shards.with_options(task_runner=make_task_runner(cfg.run))(
            shards, cfg.model_dump(mode="json"), cfg.input, cfg.backgrounds, bg_refs,
            cfg.output, sealed,
        )
    _still_ours(held)
    written = {manifest.shard_name(s.shard) for s in summaries}
    now = {name: t.to_pylist() for name, t in manifest.read_shards(out, "samples").items()}
    drop = stale_rows(now, config_hash, seg.weights_sha256, written)
    if cfg.run.mode == "overwrite" and not failures:
        # The old rows stayed until now, so a killed overwrite leaves the old dataset (plus
        # whatever shards it committed); only once every shard is in do the rest go, inputs
        # that have disappeared included.
        drop |= {(name, r["source_uri"]) for name, rows in now.items() if name not in written
                 for r in rows}
    dropped = _drop_rows(out, drop)
    if duplicates := resolve_duplicates(out):
        logger.info("%d source(s) hold the same bytes as another: recorded as duplicates",
                    duplicates)
        summaries = _recount(out, summaries)
    summary = summarize(summaries, time.perf_counter() - started)
    summary.update(skipped=plan.skipped, rows_replaced=dropped, backgrounds_usable=len(bg_refs),
                   repaired=len(damage.sources), quarantined=len(damage.unreadable),
                   machine_failures=_machine_failures(summary, failures),
                   dataset=dataset_counts(out))
    write_record(out, cfg, model_record(seg),
                 {"input": redact_uri(cfg.input), "backgrounds": redact_uri(cfg.backgrounds)},
                 summary, source_options=opts["input"])
    logger.info("done: %s", json.dumps({k: summary[k] for k in
                                         ("samples", "skipped", "by_status", "seconds")}))
    emit("done", summary=summary)
    return summary


def _machine_failures(summary: dict[str, Any], failures: list[ShardFailure]) -> dict[str, Any]:
    """This run's failures that are not the inputs' fault: rows and whole shards.

    Nothing is lost: the rows are redone by the next incremental build, the failed shards'
    inputs have no row yet.  A non-empty record makes the CLI exit non-zero.
    """
    rows = {r: n for r, n in summary["by_reason"].items() if r in MACHINE_REASONS}
    return {"inputs": sum(rows.values()) + sum(f.inputs for f in failures),
            "by_reason": rows, "shards_failed": [asdict(f) for f in failures]}

