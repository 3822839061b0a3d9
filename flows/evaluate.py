"""The evaluate flow: score one dataset, or two side by side, against ground-truth mattes.

Orchestration and I/O only; the math and the tables are :mod:`matteforge.dataset.evaluate`.  Per
dataset: read the samples manifest, list the ground truth (a folder holding ``alpha/`` or the
matte files themselves, any fsspec URI), pair them by source stem, score each pair, and write
``<name>.parquet`` (a row per dataset row that has ground truth) and ``<name>.json`` (counts and
mean / median per metric) into ``<dataset>/evaluation/`` or ``output``.  Two datasets also get a
comparison over the inputs both scored (``<name>-compare.*``).  See docs/evaluate.md.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from pydantic import SecretStr

from matteforge.config import IngestConfig, seal_storage, unseal_storage
from matteforge.dataset import evaluate as ev
from matteforge.dataset import manifest
from matteforge.dataset.storage import (
    Location,
    list_files,
    locate,
    read_bytes,
    redact_uri,
    write_bytes_atomic,
)
from matteforge.steps.duplicates import DUPLICATE

EVALUATION_DIR = "evaluation"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
BAND_RULE = ("pixels within radius_px (Euclidean) of a ground-truth pixel with 0 < alpha < 255 "
             "or of a hard 0/255 edge (4-adjacent)")

_IDENTITY = [("stem", pa.string()), ("ground_truth_uri", pa.string()),
             ("sample_id", pa.string()), ("source_uri", pa.string()),
             ("content_sha256", pa.string()), ("status", pa.string()), ("reason", pa.string()),
             ("split", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
             ("model_id", pa.string()), ("outcome", pa.string()), ("error", pa.string()),
             ("band_pixels", pa.int64()), ("trimap_unknown_pixels", pa.int64())]
RESULTS_SCHEMA = pa.schema(_IDENTITY + [(c, pa.float64()) for c in ev.METRIC_COLUMNS])
COMPARE_SCHEMA = pa.schema(
    [(k, pa.string()) for k in ("stem", "sample_id_a", "sample_id_b", "model_id_a",
                                "model_id_b", "status_a", "status_b")]
    + [(f"{c}_{s}", pa.float64()) for c in ev.METRIC_COLUMNS for s in ("a", "b", "delta")])


class EvaluationError(ValueError):
    """The evaluation cannot start: no dataset there, no ground truth, a bad name."""


def ground_truth_files(loc: Location) -> list[str]:
    """The matte files to match: those under ``alpha/`` when the root has it, else the root's."""
    alpha = loc.path("alpha")
    root = dataclasses.replace(loc, root=alpha) if loc.fs.isdir(alpha) else loc
    if not loc.fs.exists(loc.root):
        raise EvaluationError(f"ground truth {redact_uri(loc.uri)} does not exist")
    files = list_files(root, IngestConfig().extensions)
    if not files:
        raise EvaluationError(f"no matte files under {redact_uri(loc.uri)}")
    return files


def _samples(loc: Location) -> list[dict[str, Any]]:
    rows = manifest.read_table(loc, "samples").to_pylist()
    if not rows and not loc.fs.exists(loc.path("dataset.json")):
        raise EvaluationError(f"{redact_uri(loc.uri)} holds no matteforge dataset "
                              "(no dataset.json, no manifest/samples)")
    return rows


def _score_one(data: Location, row: dict[str, Any], files: dict[str, str | None],
               gt: Location, gt_path: str, band_radius: int) -> dict[str, Any]:
    """Read one pair's files and score them; any failure becomes an error row."""
    result = ev.result_row(row, redact_uri(gt.url(gt_path)))
    try:
        def read(rel: str | None) -> bytes | None:
            return None if rel is None else read_bytes(data, data.path(rel))

        result.update(ev.score_sample(
            read_bytes(gt, gt_path), read(files["alpha_uri"]), read(files["alpha_model_uri"]),
            read(files["trimap_uri"]), band_radius))
        result["outcome"] = ev.SCORED
    except Exception as exc:  # one unreadable or mismatched sample must not end the run
        kind = "size_mismatch" if isinstance(exc, ev.SizeMismatch) else type(exc).__name__
        result.update(dict.fromkeys(ev.METRIC_COLUMNS), outcome=ev.ERROR,
                      error=f"{kind}: {exc}"[:2000])
    return result


def score_dataset(
    dataset: str, ground_truth: str, band_radius: int = ev.GT_BAND_RADIUS,
    dataset_options: dict[str, Any] | None = None, gt_options: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Result rows (a row per dataset row with ground truth) and the counts around them.

    A row is scored when it names an alpha file: ok rows, and rows the quality rule rejected
    (their files are kept); a duplicate is scored with the files of the row holding its sample.
    Other rows (no person, unreadable, failed) keep their status and are not scored.
    """
    data, gt = locate(dataset, dataset_options), locate(ground_truth, gt_options)
    samples = _samples(data)
    gt_paths = ground_truth_files(gt)
    pairs, no_gt, unmatched = ev.match_ground_truth(samples, gt_paths)
    holders = {r["sample_id"]: r for r in samples if r["status"] == "ok" and r["sample_id"]}
    results = []
    for row, gt_path, why in pairs:
        holder = holders.get(row["sample_id"]) if row["status"] == DUPLICATE else row
        if holder is not None and not holder.get("alpha_uri"):
            holder = None
        if gt_path is None:
            results.append({**ev.result_row(row, ""), "outcome": ev.ERROR, "error": why})
        elif holder is None:
            results.append(ev.result_row(row, redact_uri(gt.url(gt_path))))
        else:
            files = {k: holder.get(k) for k in ("alpha_uri", "alpha_model_uri", "trimap_uri")}
            results.append(_score_one(data, row, files, gt, gt_path, band_radius))
    counts = {"samples": len(samples), "ground_truth_files": len(gt_paths),
              "no_ground_truth": no_gt, "ground_truth_unmatched": len(unmatched)}
    listed = [redact_uri(gt.url(p)) for p in unmatched[:100]]
    return results, {"counts": counts, "unmatched_ground_truth": listed}


def _write(loc: Location, rel: str, rows: list[dict[str, Any]], schema: pa.Schema,
           summary: dict[str, Any]) -> list[str]:
    """``<rel>.parquet`` and ``<rel>.json``, each written atomically; their URIs."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    written = []
    for suffix, blob in ((".parquet", buf.getvalue()),
                         (".json", json.dumps(summary, indent=2, sort_keys=True).encode())):
        write_bytes_atomic(loc, loc.path(rel + suffix), blob)
        written.append(redact_uri(loc.url(loc.path(rel + suffix))))
    return written


def _targets(datasets: list[str], output: str | None, name: str,
             opts: dict[str, Any]) -> list[tuple[Location, str]]:
    """Where each dataset's files go, then where the comparison goes (two datasets only).

    Without ``output`` everything goes into the first dataset, the one being evaluated: a
    comparison reads the second one and never writes into it.
    """
    if output is not None:
        out = locate(output, opts.get("output"))
        if len(datasets) == 1:
            return [(out, name)]
        return [(out, f"{name}-a"), (out, f"{name}-b"), (out, f"{name}-compare")]
    first = locate(datasets[0], (opts.get("datasets") or [None])[0])
    if len(datasets) == 1:
        return [(first, f"{EVALUATION_DIR}/{name}")]
    return [(first, f"{EVALUATION_DIR}/{name}"), (first, f"{EVALUATION_DIR}/{name}-b"),
            (first, f"{EVALUATION_DIR}/{name}-compare")]


def check_inputs(datasets: list[str], ground_truth: str, name: str,
                 opts: dict[str, Any] | None = None) -> None:
    """Refuse what the flow would refuse, cheaply, before a Prefect server starts."""
    opts = opts or {}
    if not 1 <= len(datasets) <= 2:
        raise EvaluationError(f"evaluate takes one dataset or two to compare, got {len(datasets)}")
    if not _NAME.fullmatch(name):
        raise EvaluationError(f"name {name!r}: use letters, digits, '.', '_' or '-'")
    for uri, o in zip(datasets, opts.get("datasets") or [None] * len(datasets), strict=True):
        loc = locate(uri, o)
        if not manifest.shard_files(loc, "samples") and not loc.fs.exists(
                loc.path("dataset.json")):
            raise EvaluationError(f"{redact_uri(uri)} holds no matteforge dataset "
                                  "(no dataset.json, no manifest/samples)")
    ground_truth_files(locate(ground_truth, opts.get("ground_truth")))


@task(name="score-dataset", cache_policy=NONE)
def score_dataset_task(
    dataset: str, ground_truth: str, band_radius: int, storage: SecretStr | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`score_dataset` with its options sealed, so Prefect never records them."""
    opts = unseal_storage(storage)
    return score_dataset(dataset, ground_truth, band_radius, opts.get("dataset"),
                         opts.get("ground_truth"))


@flow(name="evaluate-dataset")
def evaluate_dataset(
    datasets: list[str],
    ground_truth: str,
    name: str = "gt",
    output: str | None = None,
    band_radius: int = ev.GT_BAND_RADIUS,
    storage_options: SecretStr | None = None,
) -> dict[str, Any]:
    """Score one dataset, or two and compare them (deltas are the second minus the first).

    ``storage_options`` (sealed) holds ``{"datasets": [opts per dataset], "ground_truth": opts,
    "output": opts}``.  Returns the summaries as written, plus ``written`` (the files).
    """
    opts = unseal_storage(storage_options)
    check_inputs(datasets, ground_truth, name, opts)
    logger = get_run_logger()
    per_dataset = opts.get("datasets") or [None] * len(datasets)
    futures = [score_dataset_task.submit(
        d, ground_truth, band_radius,
        seal_storage({"dataset": o, "ground_truth": opts.get("ground_truth")}))
        for d, o in zip(datasets, per_dataset, strict=True)]
    targets = _targets(datasets, output, name, opts)
    summaries, written, results = [], [], []
    for dataset, future, (loc, rel) in zip(datasets, futures, targets, strict=False):
        rows, extra = future.result()
        summary = {"dataset": redact_uri(dataset), "ground_truth": redact_uri(ground_truth),
                   "name": name, "band": {"rule": BAND_RULE, "radius_px": band_radius},
                   "model_ids": sorted({r["model_id"] for r in rows
                                        if r["outcome"] == ev.SCORED and r["model_id"]}),
                   **ev.summarize(rows, extra["counts"]),
                   "unmatched_ground_truth": extra["unmatched_ground_truth"]}
        written += _write(loc, rel, rows, RESULTS_SCHEMA, summary)
        logger.info("%s: %s", redact_uri(dataset), summary["counts"])
        summaries.append(summary)
        results.append(rows)
    comparison = None
    if len(datasets) == 2:
        pairs, comparison = ev.compare(results[0], results[1])
        comparison = {"a": summaries[0]["dataset"], "b": summaries[1]["dataset"],
                      "model_ids_a": summaries[0]["model_ids"],
                      "model_ids_b": summaries[1]["model_ids"],
                      "ground_truth": redact_uri(ground_truth), "delta": "b - a",
                      **comparison}
        loc, rel = targets[2]
        written += _write(loc, rel, pairs, COMPARE_SCHEMA, comparison)
    return {"evaluations": summaries, "comparison": comparison, "written": written}
