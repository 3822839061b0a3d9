"""The build report: one static HTML folder (``report/``) a person opens to judge a dataset.

Summary tables (counts by status and reason, throughput, per-stage time), inline-SVG histograms
of the quality figures, and paged contact sheets (image | mask | trimap | alpha | fg | composite)
for a seeded sample of accepted and of rejected rows, with small thumbnails in ``report/thumbs``.
No scripts, no fonts, no network: it opens from a disk, from a bucket's static hosting, or as a
Prefect artifact link.  Everything is read through the dataset's :class:`Location` and written
with :func:`write_bytes_atomic`, so it works the same on a local disk and on an object store.
Every thumbnail is best-effort: a file that cannot be read becomes a text cell, never a crash and
never a broken ``<img>``.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import posixpath
import random
import re
import stat
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import cv2
import fsspec
import numpy as np
import pyarrow as pa

from matteforge.dataset.codec import decode, encode
from matteforge.dataset.manifest import STAGES, STATS_FILE
from matteforge.dataset.materialize import CompositeRecipe, CompositeSources
from matteforge.dataset.snapshot import Manifest
from matteforge.dataset.storage import Location, read_bytes, refresh, write_bytes_atomic
from matteforge.tasks.ingest import content_hash, decode_image

REPORT_DIR = "report"
INDEX = f"{REPORT_DIR}/index.html"
THUMBS = "thumbs"
THUMB_SIDE = 160  # long side of a thumbnail, px
# Quality figures plotted when the samples table has them (newer columns may be absent).
QUALITY_COLUMNS = ("presence", "unknown_fraction", "alpha_iterations", "alpha_residual",
                   "mask_alpha_disagreement", "composite_residual", "edge_support",
                   "fg_components")
LOG_COLUMNS = frozenset({"alpha_residual", "composite_residual"})  # spread over decades
SHEET_COLUMNS = ("image", "mask", "trimap", "alpha", "fg", "composite")
SHEETS = {"accepted": "Accepted rows", "rejected": "Rejected, failed and duplicate rows"}
_HIST_BINS = 20
_MAX_SOURCE_BYTES = 64 * 1024 * 1024  # sources are read for a thumbnail only: cap the cost
_MAX_SOURCE_PIXELS = 60_000_000
_PAGE_FILE = re.compile(r"(accepted|rejected)-\d+\.html")


@dataclass
class Summary:
    """What the index page and the Prefect markdown artifact both show, from one reading."""

    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    composites: int = 0
    megapixels: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # summed over the rows
    stage_per_megapixel: dict[str, float] = field(default_factory=dict)  # from stats.json
    throughput: dict[str, Any] = field(default_factory=dict)  # label → value, from stats.json


def write_report(
    out: Location, *, max_rows_per_page: int = 24, sample_size: int = 96, seed: int = 0,
    source_storage_options: dict[str, Any] | None = None, loaded: Manifest | None = None,
) -> str:
    """Write ``report/`` under the dataset root; returns ``report/index.html`` (relative).

    ``sample_size`` rows of each sheet (accepted, rejected) are drawn with ``seed``, shown
    ``max_rows_per_page`` per page.  ``source_storage_options`` opens source URIs for the
    thumbnails of rows that have no artifacts (rejected rows); without them only sources that
    open with default options show a thumbnail.  Pages and thumbnails of an earlier report that
    this one no longer uses are removed.  ``loaded``: the manifest as the build holds it
    (else it is read here).
    """
    if max_rows_per_page < 1 or sample_size < 0:
        raise ValueError("max_rows_per_page must be >= 1 and sample_size >= 0")
    loaded = loaded or Manifest.load(out)
    samples, composites = loaded.table("samples"), loaded.table("composites")
    stats = _read_json(out, STATS_FILE)
    dataset = _read_json(out, "dataset.json")
    rows = samples.to_pylist()
    summary = summarize(samples, composites, stats)
    merged = _first_composites(composites)
    thumbs = _Thumbnailer(out, source_storage_options)
    sheets = {name: _sample(rows, name, sample_size, seed) for name in SHEETS}
    pages: dict[str, str] = {}
    first: dict[str, str] = {}
    for name, chosen in sheets.items():
        chunks = [chosen[i:i + max_rows_per_page]
                  for i in range(0, len(chosen), max_rows_per_page)] or [[]]
        for number, chunk in enumerate(chunks, start=1):
            body = _sheet(name, chunk, merged, thumbs, number, len(chunks), len(chosen),
                          _count(rows, name))
            if number == 1:
                first[name] = body
            else:
                pages[_page_name(name, number)] = _page(
                    f"{SHEETS[name]}, page {number}", _back_link() + body)
    title = str((dataset or {}).get("name") or posixpath.basename(out.root) or out.uri)
    index = _page(f"Build report: {title}", "".join([
        _header(title, dataset, out), _summary_html(summary),
        _plots_html(samples), first["accepted"], first["rejected"]]))
    for name, text in pages.items():
        write_bytes_atomic(out, out.path(REPORT_DIR, name), text.encode())
    write_bytes_atomic(out, out.path(INDEX), index.encode())
    _remove_stale(out, set(pages) | {"index.html"}, thumbs.written)
    return INDEX


def summary_markdown(out: Location, report_path: str, loaded: Manifest | None = None) -> str:
    """The summary as a markdown table, for Prefect's ``create_markdown_artifact``.

    ``report_path`` is what :func:`write_report` returned; it is shown with its full URI.
    """
    loaded = loaded or Manifest.load(out)
    summary = summarize(loaded.table("samples"), loaded.table("composites"),
                        _read_json(out, STATS_FILE))
    lines = ["## Build summary", "", "| status | rows |", "|---|---:|"]
    lines += [f"| {_md(k)} | {v} |" for k, v in summary.by_status.items()]
    lines += [f"| **total** | {summary.rows} |", ""]
    if summary.by_reason:
        lines += ["| reason | rows |", "|---|---:|"]
        lines += [f"| {_md(k)} | {v} |" for k, v in summary.by_reason.items()]
        lines.append("")
    lines += ["| figure | value |", "|---|---:|", f"| composites | {summary.composites} |",
              f"| megapixels | {summary.megapixels:.3f} |"]
    lines += [f"| {_md(k)} | {_fmt(v)} |" for k, v in summary.throughput.items()]
    lines.append("")
    if summary.stage_seconds:
        lines += ["| stage | seconds | share | s / megapixel |", "|---|---:|---:|---:|"]
        total = sum(summary.stage_seconds.values()) or 1.0
        for stage, secs in summary.stage_seconds.items():
            per_mp = summary.stage_per_megapixel.get(stage)
            lines.append(f"| {stage} | {secs:.3f} | {100 * secs / total:.1f}% | "
                         f"{_fmt(per_mp) if per_mp is not None else '–'} |")
        lines.append("")
    lines.append(f"Report: `{_md(report_path)}` at `{_md(out.url(out.path(report_path)))}`")
    return "\n".join(lines) + "\n"


def summarize(samples: pa.Table, composites: pa.Table, stats: dict[str, Any] | None) -> Summary:
    """Counts and stage time from the manifest rows (authoritative); rates from ``stats.json``."""
    summary = Summary(rows=samples.num_rows, composites=composites.num_rows)
    for row in samples.select([c for c in ("status", "reason", "width", "height")
                               if c in samples.column_names]).to_pylist():
        status = row.get("status") or "unknown"
        summary.by_status[status] = summary.by_status.get(status, 0) + 1
        if row.get("reason"):
            summary.by_reason[row["reason"]] = summary.by_reason.get(row["reason"], 0) + 1
        if row.get("width") and row.get("height"):
            summary.megapixels += row["width"] * row["height"] / 1e6
    summary.by_status = dict(sorted(summary.by_status.items()))
    summary.by_reason = dict(sorted(summary.by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
    for stage in STAGES:
        column = f"seconds_{stage}"
        if column in samples.column_names:
            summary.stage_seconds[stage] = float(sum(v or 0.0 for v in
                                                     samples.column(column).to_pylist()))
    data = (stats or {}).get("dataset", {})
    last = (stats or {}).get("last_run", {})
    summary.stage_per_megapixel = dict(data.get("stage_seconds_per_megapixel") or {})
    for label, value in (("last run: images / s", last.get("images_per_second")),
                         ("last run: seconds", last.get("seconds")),
                         ("last run: rows skipped (already built)", last.get("skipped")),
                         ("dataset: images / task-second", data.get("images_per_task_second")),
                         ("dataset: task seconds", data.get("task_seconds")),
                         ("dataset: shards", data.get("shards"))):
        if value is not None:
            summary.throughput[label] = value
    if data.get("task_seconds") and summary.megapixels:
        summary.throughput["dataset: megapixels / task-second"] = round(
            summary.megapixels / data["task_seconds"], 4)
    return summary


# ---- reading -------------------------------------------------------------------------------

def _read_json(out: Location, rel: str) -> dict[str, Any] | None:
    """A JSON file at the root, or None when it is missing or unreadable (older datasets)."""
    try:
        data = json.loads(read_bytes(out, out.path(rel)))
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def _first_composites(composites: pa.Table) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """sample_id → (merged_uri or "" when not stored, effects caption, row) of its first
    composite (lowest index)."""
    if not composites.num_rows or "merged_uri" not in composites.column_names:
        return {}
    found: dict[str, tuple[tuple[int, str], dict[str, Any]]] = {}
    for row in composites.to_pylist():
        key = (row.get("index") or 0, row.get("composite_id") or "")
        sid = row.get("sample_id") or ""
        if sid not in found or key < found[sid][0]:
            found[sid] = (key, row)
    return {sid: (row.get("merged_uri") or "", _effects_caption(row.get("effects")), row)
            for sid, (_, row) in found.items()}


def _effects_caption(effects: str | None) -> str:
    """The names of the effects a composite went through (its ``effects`` JSON), or ""."""
    try:
        names = [str(e.get("name", "?")) for e in json.loads(effects or "[]")]
    except (ValueError, TypeError, AttributeError):
        return "effects: unreadable"
    return "effects: " + ", ".join(names) if names else ""


def _in_sheet(row: dict[str, Any], sheet: str) -> bool:
    return (row.get("status") == "ok") == (sheet == "accepted")


def _count(rows: list[dict[str, Any]], sheet: str) -> int:
    return sum(_in_sheet(r, sheet) for r in rows)


def _sample(rows: list[dict[str, Any]], sheet: str, size: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of the sheet's rows, in a stable order (same dataset, same sample)."""
    picked = sorted((r for r in rows if _in_sheet(r, sheet)), key=_row_order)
    if len(picked) > size:
        picked = sorted(random.Random(seed).sample(picked, size), key=_row_order)
    return picked


def _row_order(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row.get("status") or "", row.get("source_uri") or "", row.get("sample_id") or "")


# ---- thumbnails ----------------------------------------------------------------------------

def shrink(image: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """Scale so the long side is at most ``side`` (area averaging, never enlarging)."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _checker_composite(fg: np.ndarray, alpha: np.ndarray, cell: int = 8) -> np.ndarray:
    """fg × α over a grey checkerboard: how the cut-out looks, which fg alone does not show."""
    height, width = alpha.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width]
    board = np.where(((yy // cell + xx // cell) % 2)[..., None] == 0, 200, 150).astype(np.float32)
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.clip(fg.astype(np.float32) * a + board * (1 - a) + 0.5, 0, 255).astype(np.uint8)


class _Thumbnailer:
    """Writes thumbnails under ``report/thumbs`` and remembers which (for the clean-up)."""

    def __init__(self, out: Location, source_options: dict[str, Any] | None) -> None:
        self.out = out
        self.source_options = source_options
        self.written: set[str] = set()
        self._dead_protocols: set[str] = set()  # one failed open per protocol is enough
        self._sources: CompositeSources | None = None

    def put(self, key: str, image: np.ndarray) -> str:
        """Write a thumbnail of ``image``; returns its path relative to ``report/``."""
        small = shrink(image)
        fmt = "png" if small.ndim == 2 else "jpg"
        name = f"{THUMBS}/{key}.{fmt}"
        write_bytes_atomic(self.out, self.out.path(REPORT_DIR, name),
                           encode(small, fmt, jpeg_quality=85))
        self.written.add(name)
        return name

    def artifact(self, rel: str) -> np.ndarray:
        """One of the dataset's own files, grey or RGB as stored."""
        return decode(read_bytes(self.out, self.out.path(rel)))

    def remade(self, row: dict[str, Any]) -> np.ndarray:
        """A composite the build did not store, made from its row as the build would have."""
        if self._sources is None:
            self._sources = CompositeSources(self.out, self.source_options)
        return self._sources.pixels(CompositeRecipe.from_row(row))

    def source(self, uri: str, sha256: str) -> np.ndarray:
        """The source photo, opened best-effort with fsspec (it may be remote or gone).

        Only sources the build itself read (``sha256`` is their hash) are opened, and only a
        regular file with those very bytes is shown: a link the build refused, or one changed
        since, is never read for a thumbnail.  After a failure other than a missing file (no
        credentials, no such filesystem, no network) the protocol is not tried again, so a
        report never waits once per row.
        """
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        if protocol in self._dead_protocols:
            raise OSError(f"{protocol}:// sources could not be opened earlier in this report")
        try:
            fs, path = fsspec.core.url_to_fs(uri, **(self.source_options or {}))
            if fs.info(path).get("type") != "file" or (
                    protocol == "file" and not stat.S_ISREG(os.stat(path).st_mode)):
                raise ValueError("not a regular file")
            size = fs.size(path)
            if size is not None and size > _MAX_SOURCE_BYTES:
                raise ValueError(f"source is {size} bytes, too large for a thumbnail")
            with fs.open(path, "rb") as fh:
                data = fh.read()
        except (FileNotFoundError, ValueError):
            raise
        except Exception:
            self._dead_protocols.add(protocol)
            raise
        if content_hash(data) != sha256:
            raise ValueError("the source has changed since the build read it")
        decoded = decode_image(data, max_pixels=_MAX_SOURCE_PIXELS)
        if decoded.image is None:
            raise ValueError(decoded.detail or decoded.reason)
        return decoded.image


def _row_key(row: dict[str, Any]) -> str:
    """A file-name-safe key per row: rows without a sample_id (unreadable files) have none."""
    text = f"{row.get('sample_id') or ''}\n{row.get('source_uri') or ''}\n{row.get('status')}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# ---- HTML ----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:3px 7px;
vertical-align:top}th{background:#f3f3f3;text-align:left}td.n{text-align:right}
.tables{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
.plots{display:flex;gap:1em;flex-wrap:wrap}.plot{border:1px solid #ddd;padding:.4em}
.plot p{margin:.2em 0;font-size:12px;color:#555}.plot strong{display:block}
.bar{background:#4a7bb7;height:10px;display:inline-block}
.sheet td.img{width:164px;height:164px;text-align:center;vertical-align:middle;
background:#fafafa}.sheet img{display:block;margin:auto;max-width:160px;max-height:160px}
.ph{color:#999;font-size:12px}.info{width:18em;font-size:12px;overflow-wrap:anywhere}
.status-ok{color:#176b2c}.status-rejected{color:#8a5a00}.status-failed,.status-duplicate{
color:#a11}nav a,nav strong{margin-right:.5em}code{font-size:12px}
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><link rel=\"icon\" href=\"data:,\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{_CSS}</style>"
            f"</head><body>\n{body}\n</body></html>\n")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _back_link() -> str:
    return '<p><a href="index.html">← summary and first pages</a></p>'


def _page_name(sheet: str, number: int) -> str:
    return "index.html" if number == 1 else f"{sheet}-{number}.html"


def _header(title: str, dataset: dict[str, Any] | None, out: Location) -> str:
    facts = [("dataset", out.url(out.root))]
    if dataset:
        model = dataset.get("model") or {}
        facts += [("config hash", dataset.get("config_hash")), ("model", model.get("id")),
                  ("model license", model.get("license"))]
    items = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>"
                    for k, v in facts if v)
    return f"<h1>Build report: {_e(title)}</h1><table>{items}</table>"


def _count_table(heading: str, counts: dict[str, int], total: int) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td class=\"n\">{v}</td>"
                   f"<td class=\"n\">{100 * v / total:.1f}%</td></tr>"
                   for k, v in counts.items()) if total else ""
    return (f"<table><tr><th>{_e(heading)}</th><th>rows</th><th>share</th></tr>"
            f"{rows or '<tr><td colspan=3>none</td></tr>'}</table>")


def _summary_html(s: Summary) -> str:
    figures = [("rows", s.rows), ("composites", s.composites),
               ("megapixels", round(s.megapixels, 3)), *s.throughput.items()]
    fig_rows = "".join(f"<tr><td>{_e(k)}</td><td class=\"n\">{_e(_fmt(v))}</td></tr>"
                       for k, v in figures)
    total = sum(s.stage_seconds.values())
    stage_rows = "".join(
        f"<tr><td>{_e(stage)}</td><td class=\"n\">{secs:.3f}</td>"
        f"<td class=\"n\">{_e(_fmt(s.stage_per_megapixel.get(stage, '–')))}</td>"
        f"<td><span class=\"bar\" style=\"width:{200 * secs / total if total else 0:.1f}px\">"
        f"</span> {100 * secs / total if total else 0:.1f}%</td></tr>"
        for stage, secs in s.stage_seconds.items())
    return ("<h2 id=\"summary\">Summary</h2><div class=\"tables\">"
            + _count_table("status", s.by_status, s.rows)
            + _count_table("reason", s.by_reason, s.rows)
            + f"<table><tr><th>figure</th><th>value</th></tr>{fig_rows}</table></div>"
            "<h3>Time per stage (summed over rows)</h3><table><tr><th>stage</th><th>seconds</th>"
            f"<th>s / megapixel</th><th>share</th></tr>{stage_rows}</table>")


def _numbers(samples: pa.Table, column: str) -> list[float]:
    if column not in samples.column_names:
        return []
    values = (v for v in samples.column(column).to_pylist() if v is not None)
    return [float(v) for v in values if math.isfinite(float(v))]


def histogram_svg(values: list[float], label: str, bins: int = _HIST_BINS,
                  log: bool = False) -> str:
    """An inline SVG histogram (no scripts): bars with hover titles, range and peak labelled."""
    shown = [math.log10(v) for v in values if v > 0] if log else list(values)
    if log and len(shown) < len(values):  # zeros or negatives cannot go on a log axis
        shown, log = list(values), False
    lo, hi = min(shown), max(shown)
    width_px, height_px, pad = 300, 120, 20
    span = hi - lo
    n_bins = bins if span > 0 else 1
    counts = [0] * n_bins
    for v in shown:
        counts[min(int((v - lo) / span * n_bins), n_bins - 1) if span > 0 else 0] += 1
    peak = max(counts)
    bar_w = (width_px - 2 * pad) / n_bins
    bars = []
    for i, c in enumerate(counts):
        h = (height_px - 2 * pad) * c / peak
        a, b = lo + span * i / n_bins, lo + span * (i + 1) / n_bins
        rng = f"{_axis(a, log)} – {_axis(b, log)}" if span > 0 else _axis(lo, log)
        bars.append(f"<rect x=\"{pad + i * bar_w:.1f}\" y=\"{height_px - pad - h:.1f}\" "
                    f"width=\"{max(bar_w - 1, 1):.1f}\" height=\"{h:.1f}\" fill=\"#4a7bb7\">"
                    f"<title>{_e(rng)}: {c}</title></rect>")
    axis = f"{label} (log10)" if log else label
    return (f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width_px}\" "
            f"height=\"{height_px}\" role=\"img\" aria-label=\"{_e(axis)} histogram\">"
            f"<line x1=\"{pad}\" y1=\"{height_px - pad}\" x2=\"{width_px - pad}\" "
            f"y2=\"{height_px - pad}\" stroke=\"#888\"/>{''.join(bars)}"
            f"<text x=\"{pad}\" y=\"{height_px - 5}\" font-size=\"10\">{_e(_axis(lo, log))}</text>"
            f"<text x=\"{width_px - pad}\" y=\"{height_px - 5}\" font-size=\"10\" "
            f"text-anchor=\"end\">{_e(_axis(hi, log))}</text>"
            f"<text x=\"{pad}\" y=\"12\" font-size=\"10\">peak {peak}</text></svg>")


def _axis(v: float, log: bool) -> str:
    return f"{10 ** v:.3g}" if log else f"{v:.4g}"


def _plots_html(samples: pa.Table) -> str:
    plots = []
    for column in QUALITY_COLUMNS:
        values = _numbers(samples, column)
        if not values:
            continue
        svg = histogram_svg(values, column, log=column in LOG_COLUMNS)
        plots.append(f"<div class=\"plot\"><strong>{_e(column)}</strong>{svg}"
                     f"<p>n={len(values)} · min {min(values):.4g} · median "
                     f"{statistics.median(values):.4g} · max {max(values):.4g}</p></div>")
    body = "".join(plots) or "<p>No quality figures in this dataset yet.</p>"
    return f"<h2 id=\"quality\">Quality figures</h2><div class=\"plots\">{body}</div>"


def _nav(sheet: str, number: int, pages: int) -> str:
    if pages <= 1:
        return ""
    links = "".join(f"<strong>{n}</strong>" if n == number else
                    f"<a href=\"{_page_name(sheet, n)}#{sheet}\">{n}</a>"
                    for n in range(1, pages + 1))
    return f"<nav>pages: {links}</nav>"


def _sheet(sheet: str, rows: list[dict[str, Any]],
           merged: dict[str, tuple[str, str, dict[str, Any]]],
           thumbs: _Thumbnailer, number: int, pages: int, shown: int, total: int) -> str:
    head = (f"<h2 id=\"{sheet}\">{_e(SHEETS[sheet])}</h2><p>{shown} of {total} rows shown"
            f"{' (a seeded sample)' if shown < total else ''}.</p>")
    if not rows:
        return head + "<p>No rows.</p>"
    header = "".join(f"<th>{_e(c)}</th>" for c in ("row", *SHEET_COLUMNS))
    body = "".join(_sheet_row(r, merged, thumbs) for r in rows)
    nav = _nav(sheet, number, pages)
    return f"{head}{nav}<table class=\"sheet\"><tr>{header}</tr>{body}</table>{nav}"


def _cell(thumbs: _Thumbnailer, key: str, load: Callable[[], np.ndarray], alt: str,
          link: str | None = None, caption: str = "") -> str:
    """A thumbnail cell, or a text placeholder when the picture cannot be made."""
    try:
        name = thumbs.put(key, load())
    except Exception as exc:
        return f"<td class=\"img ph\">{_e(alt)}: not readable<br>{_e(type(exc).__name__)}</td>"
    img = f"<img src=\"{_e(name)}\" alt=\"{_e(alt)}\">"
    if link:
        img = f"<a href=\"../{_e(quote(link))}\">{img}</a>"
    if caption:
        img += f"<span class=\"ph\">{_e(caption)}</span>"
    return f"<td class=\"img\">{img}</td>"


def _placeholder(text: str) -> str:
    return f"<td class=\"img ph\">{_e(text)}</td>"


def _sheet_row(row: dict[str, Any], merged: dict[str, tuple[str, str, dict[str, Any]]],
               thumbs: _Thumbnailer) -> str:
    key = _row_key(row)
    cells = [_info(row)]
    if row.get("status") == "ok":
        loaded: dict[str, np.ndarray] = {}

        def artifact(rel: str) -> np.ndarray:  # the alpha is shown twice: read it once
            if rel not in loaded:
                loaded[rel] = thumbs.artifact(rel)
            return loaded[rel]

        fg_alpha = (row.get("fg_uri"), row.get("alpha_uri"))
        loaders: dict[str, tuple[Callable[[], np.ndarray], str | None]] = {
            kind: ((lambda rel=row[f"{kind}_uri"]: artifact(rel)), row[f"{kind}_uri"])
            for kind in ("image", "mask", "trimap", "alpha") if row.get(f"{kind}_uri")}
        if all(fg_alpha):
            loaders["fg"] = ((lambda: _checker_composite(artifact(fg_alpha[0]),
                                                         _grey(artifact(fg_alpha[1])))),
                             fg_alpha[0])
        uri, caption, first = merged.get(row.get("sample_id") or "", ("", "", None))
        if uri:
            loaders["composite"] = ((lambda rel=uri: artifact(rel)), uri)
        elif first is not None:  # not stored (composite.store: false): made here from its row
            loaders["composite"] = ((lambda: thumbs.remade(first)), None)
            caption = "; ".join(filter(None, ("made on read", caption)))
        for kind in SHEET_COLUMNS:
            if kind in loaders:
                load, link = loaders[kind]
                cells.append(_cell(thumbs, f"{key}_{kind}", load, kind, link,
                                   caption if kind == "composite" else ""))
            else:
                cells.append(_placeholder(f"no {kind}"))
    else:
        source, sha = row.get("source_uri") or "", row.get("content_sha256") or ""
        cells.append(_cell(thumbs, f"{key}_source", lambda: thumbs.source(source, sha),
                           "source") if source and sha else _placeholder("not read"))
        cells += [_placeholder("—") for _ in SHEET_COLUMNS[1:]]
    return f"<tr>{''.join(cells)}</tr>"


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _info(row: dict[str, Any]) -> str:
    status = row.get("status") or "unknown"
    lines = [f"<strong class=\"status-{_e(re.sub(r'[^a-z]', '', status))}\">{_e(status)}"
             + (f": {_e(row['reason'])}" if row.get("reason") else "") + "</strong>",
             f"<code>{_e(posixpath.basename((row.get('source_uri') or '').rstrip('/')))}</code>"]
    if row.get("detail"):
        detail = str(row["detail"])
        lines.append(_e(detail if len(detail) <= 300 else detail[:300] + "…"))
    facts = [("id", row.get("sample_id")), ("split", row.get("split")),
             ("size", f"{row['width']}×{row['height']}" if row.get("width") else None),
             *((c, _fmt(row[c])) for c in QUALITY_COLUMNS if row.get(c) is not None)]
    lines += [f"{_e(k)}: {_e(v)}" for k, v in facts if v]
    return f"<td class=\"info\" title=\"{_e(row.get('source_uri'))}\">{'<br>'.join(lines)}</td>"


# ---- clean-up ------------------------------------------------------------------------------

def _remove_stale(out: Location, pages: Iterable[str], thumbs: set[str]) -> None:
    """Delete pages and thumbnails an earlier report wrote that this one does not link."""
    keep = set(pages) | thumbs
    folder = out.path(REPORT_DIR)
    refresh(out, folder)
    try:
        found = out.fs.find(folder)
    except FileNotFoundError:
        return
    prefix = folder.strip("/") + "/"
    for path in found:
        rel = path.strip("/").removeprefix(prefix)
        ours = _PAGE_FILE.fullmatch(rel) or rel.startswith(f"{THUMBS}/")
        if ours and rel not in keep:
            out.fs.rm(path)
