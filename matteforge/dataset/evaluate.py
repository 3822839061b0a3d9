"""Scoring a dataset's alphas against ground-truth mattes: per-sample math and the result tables.

Pure functions only (bytes and arrays in, numbers and rows out); ``flows/evaluate.py`` reads the
files and writes the tables.  The four measures are :mod:`matteforge.metrics`' MATLAB-faithful
ones (SAD and Gradient and Connectivity in thousands, MSE as a plain mean), each reported over
three regions:

* the whole image (suffix none), as ``sad`` / ``mse`` / ``grad`` / ``conn``;
* the ground-truth band (suffix ``_band``): the same pixels for every build scored against the
  same ground truth, so two builds can be compared on it — see :func:`ground_truth_band`;
* the build's own trimap unknown region (suffix ``_trimap``, trimap == 128): where the matting
  stage worked, and where papers score; it differs between builds.

Each prediction gets its prefix: ``alpha`` (the dataset's matte) and ``model`` (the segmenter's
raw probability map, ``alpha_model``), so ``alpha_sad_band`` next to ``model_sad_band`` shows
what matting added on top of the model.
"""

from __future__ import annotations

import io
import math
import posixpath
import statistics
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from matteforge import metrics
from matteforge.dataset.codec import decode

# Half-width of the ground-truth band in px: far enough to hold an edge a build places a few px
# off, near enough that it stays about the boundary (P3M's ~450 px portraits: 9-15 % of pixels).
GT_BAND_RADIUS = 5
METRICS = ("sad", "mse", "grad", "conn")
REGIONS = {"": "whole image", "_band": "ground-truth band", "_trimap": "build trimap unknown"}
PREDICTIONS = {"alpha": "alpha_uri", "model": "alpha_model_uri"}
METRIC_COLUMNS = tuple(f"{p}_{m}{r}" for p in PREDICTIONS for r in REGIONS for m in METRICS)
# What happened to a dataset row that has a ground truth.
SCORED, NOT_SCORED, ERROR = "scored", "not_scored", "error"
# Statuses of samples the dataset ships (a duplicate is scored with its kept row's files).
ACCEPTED_STATUSES = ("ok", "duplicate")


class SizeMismatch(ValueError):
    """Ground truth and prediction are not the same HxW: another image, or a resized one."""


def decode_matte(data: bytes) -> np.ndarray:
    """A ground-truth matte file → HxW uint8: grey levels as stored (16-bit scaled), EXIF
    orientation applied.  Ground truth is the user's, in any format, hence Pillow and these
    rules; the dataset's own files are read with :func:`matteforge.dataset.codec.decode`.

    A grey file (L, P, 16-bit) is read as is; an RGB file by its luma (exact for grey RGB); a
    file with transparency whose colour is flat holds the matte in its alpha channel.
    """
    with Image.open(io.BytesIO(data)) as opened:
        im = ImageOps.exif_transpose(opened)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im).astype(np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
            return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        if im.mode in ("LA", "RGBA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"))
            if rgba[..., :3].min() == rgba[..., :3].max():
                return np.ascontiguousarray(rgba[..., 3])
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def ground_truth_band(gt: np.ndarray, radius: int = GT_BAND_RADIUS) -> np.ndarray:
    """Pixels within ``radius`` px (Euclidean) of the ground truth's transition, as a bool mask.

    The transition is every pixel with 0 < gt < 255, plus, for hard edges, every 0 pixel
    4-adjacent to a 255 pixel and every 255 pixel 4-adjacent to a 0 pixel.  Derived from the
    ground truth alone, so it is the same region for every build scored against it.
    """
    gt = _as_uint8(gt, "gt")
    clear, opaque = gt == 0, gt == 255
    cross = ndimage.generate_binary_structure(2, 1)
    edge = (clear & ndimage.binary_dilation(opaque, cross)) | (
        opaque & ndimage.binary_dilation(clear, cross))
    seed = (~clear & ~opaque) | edge
    if radius <= 0 or not seed.any():
        return seed
    return ndimage.distance_transform_edt(~seed) <= radius


def _as_uint8(matte: np.ndarray, name: str) -> np.ndarray:
    matte = np.asarray(matte)
    if matte.dtype != np.uint8 or matte.ndim != 2:
        raise TypeError(f"{name} must be an HxW uint8 matte, got {matte.dtype} {matte.shape}")
    return matte


def error_maps(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel terms whose sums over a region are the metrics (see :func:`region_metrics`).

    Gradient magnitudes and connectivity levels are whole-image quantities; computing them once
    lets every region reuse them.  ``tests/test_evaluate.py`` pins these sums to
    :mod:`matteforge.metrics` on random mattes and regions.
    """
    pred, gt = _as_uint8(pred, "pred"), _as_uint8(gt, "gt")
    if pred.shape != gt.shape:
        raise SizeMismatch(f"prediction is {pred.shape[1]}x{pred.shape[0]} but ground truth is "
                           f"{gt.shape[1]}x{gt.shape[0]}")
    p, g = pred / 255.0, gt / 255.0
    grad = metrics.gradient_magnitude(p) - metrics.gradient_magnitude(g)
    level = metrics.connectivity_levels(p, g)
    dp, dg = p - level, g - level
    phi_p = 1.0 - dp * (dp >= metrics.CONNECTIVITY_MIN_DROP)
    phi_g = 1.0 - dg * (dg >= metrics.CONNECTIVITY_MIN_DROP)
    return {"sad": np.abs(p - g), "mse": (p - g) ** 2, "grad": grad**2,
            "conn": np.abs(phi_p - phi_g)}


def region_metrics(maps: dict[str, np.ndarray], region: np.ndarray | None) -> dict[str, float]:
    """SAD, MSE, Gradient, Connectivity over ``region`` (None: the whole image).

    Sums are divided by 1000 as the MATLAB scripts do; MSE is a mean, 0 for an empty region.
    """
    mask = np.ones(maps["sad"].shape, bool) if region is None else np.asarray(region, bool)
    if mask.shape != maps["sad"].shape:
        raise SizeMismatch(f"region {mask.shape} does not match the mattes {maps['sad'].shape}")
    n = int(mask.sum())
    return {
        "sad": float(maps["sad"][mask].sum() / metrics.SUM_SCALE),
        "mse": float(maps["mse"][mask].sum() / n) if n else 0.0,
        "grad": float(maps["grad"][mask].sum() / metrics.SUM_SCALE),
        "conn": float(maps["conn"][mask].sum() / metrics.SUM_SCALE),
    }


def evaluate_alpha(
    pred: np.ndarray, gt: np.ndarray, band: np.ndarray, trimap_unknown: np.ndarray | None = None
) -> dict[str, float | None]:
    """The four metrics over the whole image, ``band`` and ``trimap_unknown`` (None: no values).

    Keys: ``sad``, ``mse``, ``grad``, ``conn`` (whole image), the same with ``_band`` and with
    ``_trimap``.  ``pred`` and ``gt`` are HxW uint8 mattes; regions are HxW bool masks.
    """
    maps = error_maps(pred, gt)
    found: dict[str, float | None] = {}
    for suffix, region in (("", None), ("_band", band), ("_trimap", trimap_unknown)):
        if suffix == "_trimap" and region is None:
            found.update({f"{m}{suffix}": None for m in METRICS})
            continue
        found.update({f"{m}{suffix}": v for m, v in region_metrics(maps, region).items()})
    return found


def score_sample(
    gt_bytes: bytes,
    alpha_bytes: bytes,
    model_bytes: bytes | None = None,
    trimap_bytes: bytes | None = None,
    band_radius: int = GT_BAND_RADIUS,
) -> dict[str, Any]:
    """One sample's metric columns (``alpha_*``, ``model_*``) and region sizes, from file bytes:
    the ground truth in any format (:func:`decode_matte`), the rest the dataset's own files.

    Raises :class:`SizeMismatch` when a file is not the ground truth's size.
    """
    gt = decode_matte(gt_bytes)
    mattes = {name: None if data is None else decode(data, "grey") for name, data in
              (("alpha", alpha_bytes), ("model", model_bytes), ("trimap", trimap_bytes))}
    for name, matte in mattes.items():
        if matte is not None:
            _same_size(name, matte, gt)
    band = ground_truth_band(gt, band_radius)
    trimap = mattes.pop("trimap")
    unknown = None if trimap is None else metrics.unknown_region(trimap)
    row: dict[str, Any] = {"band_pixels": int(band.sum()),
                           "trimap_unknown_pixels": None if unknown is None else int(unknown.sum())}
    for prefix, pred in mattes.items():
        values: dict[str, float | None] = dict.fromkeys(
            (f"{m}{r}" for r in REGIONS for m in METRICS), None)
        if pred is not None:
            values = evaluate_alpha(pred, gt, band, unknown)
        row.update({f"{prefix}_{k}": v for k, v in values.items()})
    return row


def _same_size(name: str, matte: np.ndarray, gt: np.ndarray) -> None:
    if matte.shape != gt.shape:
        raise SizeMismatch(f"{name} is {matte.shape[1]}x{matte.shape[0]} but the ground truth is "
                           f"{gt.shape[1]}x{gt.shape[0]}")


def stem(uri: str) -> str:
    """A file's name without folder and extension: what ground truth is matched on."""
    return posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]


def match_ground_truth(
    samples: list[dict[str, Any]], gt_paths: list[str]
) -> tuple[list[tuple[dict[str, Any], str | None, str]], int, list[str]]:
    """Pair dataset rows with ground-truth files by source stem.

    Returns ``(pairs, no_ground_truth, unmatched)``: each pair is (row, gt path or None, why
    not); a stem that names several ground-truth files or several dataset rows is ambiguous and
    gets no path (rows of one stem with the same bytes are not: they are one image).
    ``no_ground_truth`` counts rows without a file, ``unmatched`` lists ground
    truth no row has.
    """
    by_stem: dict[str, list[str]] = {}
    for path in gt_paths:
        by_stem.setdefault(stem(path), []).append(path)
    rows_by_stem: dict[str, list[dict[str, Any]]] = {}
    for row in samples:
        rows_by_stem.setdefault(stem(row["source_uri"]), []).append(row)
    pairs: list[tuple[dict[str, Any], str | None, str]] = []
    no_gt = 0
    for key, rows in sorted(rows_by_stem.items()):
        paths = by_stem.get(key, [])
        if not paths:
            no_gt += len(rows)
            continue
        why = ""
        if len(paths) > 1:
            why = f"ambiguous: {len(paths)} ground-truth files are named {key}"
        elif len({r.get("content_sha256") or r["source_uri"] for r in rows}) > 1:
            why = f"ambiguous: {len(rows)} inputs are named {key}"
        pairs.extend((row, None if why else paths[0], why) for row in rows)
    unmatched = sorted(p for k, ps in by_stem.items() if k not in rows_by_stem for p in ps)
    return pairs, no_gt, unmatched


def result_row(row: dict[str, Any], gt_uri: str) -> dict[str, Any]:
    """The identity columns of a result row: which sample, which ground truth, its status."""
    return {
        "stem": stem(row["source_uri"]), "ground_truth_uri": gt_uri,
        **{k: row.get(k) for k in ("sample_id", "source_uri", "content_sha256", "status",
                                   "reason", "split", "width", "height", "model_id")},
        "outcome": NOT_SCORED, "error": "",
        "band_pixels": None, "trimap_unknown_pixels": None,
        **dict.fromkeys(METRIC_COLUMNS),
    }


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"mean": None, "median": None, "count": 0}
    return {"mean": math.fsum(values) / len(values), "median": statistics.median(values),
            "count": len(values)}


def summarize(results: list[dict[str, Any]], counts: dict[str, Any]) -> dict[str, Any]:
    """Counts by outcome and status plus mean / median of every metric.

    ``metrics`` covers the scored samples the dataset ships (ok, duplicate); ``metrics_rejected``
    the scored ones the quality rule rejected (their files are kept), to check that rule.
    """
    by_outcome: dict[str, dict[str, int]] = {SCORED: {}, NOT_SCORED: {}, ERROR: {}}
    for r in results:
        tally = by_outcome[r["outcome"]]
        tally[r["status"]] = tally.get(r["status"], 0) + 1
    scored = [r for r in results if r["outcome"] == SCORED]
    accepted = [r for r in scored if r["status"] in ACCEPTED_STATUSES]
    rejected = [r for r in scored if r["status"] not in ACCEPTED_STATUSES]
    return {
        "counts": {**counts, "matched": len(results),
                   **{k: sum(v.values()) for k, v in by_outcome.items()},
                   "scored_accepted": len(accepted), "scored_rejected": len(rejected)},
        "scored_by_status": dict(sorted(by_outcome[SCORED].items())),
        "not_scored_by_status": dict(sorted(by_outcome[NOT_SCORED].items())),
        "errors": [{"stem": r["stem"], "error": r["error"]} for r in results
                   if r["outcome"] == ERROR],
        "metrics": {c: _stats([r[c] for r in accepted if r[c] is not None])
                    for c in METRIC_COLUMNS},
        "metrics_rejected": {c: _stats([r[c] for r in rejected if r[c] is not None])
                             for c in METRIC_COLUMNS},
    }


def pair_key(row: dict[str, Any], shared_hashes: set[str]) -> str:
    """What pairs a row with the other build's: its content hash when both have it, else stem."""
    sha = row.get("content_sha256")
    return f"sha256:{sha}" if sha and sha in shared_hashes else f"stem:{row['stem']}"


def compare(
    a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Side by side over the inputs both builds scored: per-pair rows and a summary.

    Whether each build accepted the sample is in ``status_a`` / ``status_b``: a matte is
    compared with the ground truth whichever build's quality rule rejected it.  Pairs by
    ``content_sha256`` where both results hold it, else by source stem.  Each metric gets
    ``<col>_a``, ``<col>_b`` and ``<col>_delta`` = b − a (negative: b is closer to the ground
    truth).
    """
    shared = {r["content_sha256"] for r in a if r.get("content_sha256")} & {
        r["content_sha256"] for r in b if r.get("content_sha256")}
    index_b: dict[str, dict[str, Any]] = {}
    for r in b:
        if r["outcome"] == SCORED:
            index_b.setdefault(pair_key(r, shared), r)
    pairs = []
    for ra in a:
        rb = index_b.get(pair_key(ra, shared))
        if ra["outcome"] != SCORED or rb is None:
            continue
        pair: dict[str, Any] = {"stem": ra["stem"], "sample_id_a": ra["sample_id"],
                                "sample_id_b": rb["sample_id"],
                                "model_id_a": ra["model_id"], "model_id_b": rb["model_id"],
                                "status_a": ra["status"], "status_b": rb["status"]}
        for col in METRIC_COLUMNS:
            va, vb = ra[col], rb[col]
            pair.update({f"{col}_a": va, f"{col}_b": vb,
                         f"{col}_delta": None if va is None or vb is None else vb - va})
        pairs.append(pair)
    summary = {
        "pairs": len(pairs),
        "scored_a": sum(r["outcome"] == SCORED for r in a),
        "scored_b": sum(r["outcome"] == SCORED for r in b),
        "metrics": {},
    }
    for col in METRIC_COLUMNS:
        both = [p for p in pairs if p[f"{col}_delta"] is not None]
        deltas = [p[f"{col}_delta"] for p in both]
        summary["metrics"][col] = {
            "mean_a": _stats([p[f"{col}_a"] for p in both])["mean"],
            "mean_b": _stats([p[f"{col}_b"] for p in both])["mean"],
            "mean_delta": _stats(deltas)["mean"], "median_delta": _stats(deltas)["median"],
            "b_better": sum(d < 0 for d in deltas), "a_better": sum(d > 0 for d in deltas),
            "count": len(deltas),
        }
    return pairs, summary


_COLUMNS = (("sad", "SAD", 1.0), ("mse", "MSE×1e3", 1e3), ("grad", "Grad", 1.0),
            ("conn", "Conn", 1.0))
_SHORT = {"": "image", "_band": "gt band", "_trimap": "trimap unknown"}
_ROWS = tuple((p, r, f"{p} {_SHORT[r]}") for p in PREDICTIONS for r in REGIONS)


def _cell(value: float | None, scale: float, signed: bool = False) -> str:
    if value is None:
        return f"{'-':>9}"
    return f"{value * scale:>+9.3f}" if signed else f"{value * scale:>9.3f}"


def format_table(summaries: list[dict[str, Any]], comparison: dict[str, Any] | None) -> str:
    """A compact text table of mean metrics: a row per prediction and region (and build).

    One build: means over its accepted samples; two: over the inputs both scored.
    """
    header = f"{'':<32}" + "".join(f"{title:>9}" for _, title, _ in _COLUMNS)
    lines = []
    for label, s in zip("ab", summaries, strict=False):
        c = s["counts"]
        models = ",".join(s.get("model_ids") or []) or "?"
        tag = f"[{label}] " if comparison else ""
        rejected = f" ({c['scored_rejected']} rejected by quality)" if c["scored_rejected"] else ""
        lines.append(f"{tag}{s['dataset']} ({models}): {c['scored']} scored{rejected}, "
                     f"{c['not_scored']} not scored, {c['error']} error(s), "
                     f"{c['no_ground_truth']} without ground truth")
    lines.append(header)
    for pred, region, title in _ROWS:
        col = f"{pred}_{{}}{region}"
        if comparison is None:
            m = summaries[0]["metrics"]
            lines.append(f"{title:<32}" + "".join(
                _cell(m[col.format(k)]["mean"], scale) for k, _, scale in _COLUMNS))
            continue
        m = comparison["metrics"]
        for which in ("a", "b", "delta"):
            name = f"{title} [{which}]" if which != "delta" else f"{title} [b-a]"
            lines.append(f"{name:<32}" + "".join(
                _cell(m[col.format(k)][f"mean_{which}"], scale, which == "delta")
                for k, _, scale in _COLUMNS))
    if comparison is not None:
        lines.append(f"means over the {comparison['pairs']} input(s) both builds scored")
    return "\n".join(lines)
