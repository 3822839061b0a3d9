"""The static HTML build report, on a small real dataset (real portraits, real segmenter).

The dataset is built once per module with :func:`run_shard` (no Prefect): two P3M portraits
(accepted), a landscape photo with markup characters in its name (rejected: no person) and a
corrupt file (failed).  The Chromium test loads the pages in the Debian ``chromium`` browser
(``make test-setup`` installs it, with ``--no-upgrade``) through Playwright.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from matteforge.config import load_config
from matteforge.dataset import manifest
from matteforge.dataset.report import (
    INDEX,
    THUMB_SIDE,
    histogram_svg,
    summary_markdown,
    write_report,
)
from matteforge.dataset.stats import dataset_stats, summarize
from matteforge.dataset.storage import locate, write_bytes_atomic
from matteforge.steps.shard import BackgroundRef, ShardJob, run_shard
from matteforge.tasks.ingest import content_hash

ODD_NAME = "scene <b>&\"x\"'.png"  # a file name that is also HTML markup
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _small_png(src: Path, dst: Path, long_side: int) -> bytes:
    image = Image.open(src).convert("RGB")
    image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    image.save(dst, "PNG")
    return dst.read_bytes()


def _cfg() -> dict:
    cfg = load_config("demo", **{"composite.per_foreground_train": 2,
                                 "composite.per_foreground_test": 2, "run.torch_threads": 1})
    return cfg.model_dump(mode="json")


def _build(root: Path, names: list[str], out_uri: str) -> None:
    """One shard of ``names`` from ``root/in`` into ``out_uri``, plus stats.json like a build."""
    import torch

    threads = torch.get_num_threads()  # run_shard sets one thread for the whole process
    refs = [BackgroundRef(content_hash(p.read_bytes())[:20], str(p), f"bg/{p.name}")
            for p in sorted((root / "bg").iterdir())]
    try:
        summary = run_shard(ShardJob("s", [str(root / "in" / n) for n in names], _cfg(),
                                     str(root / "in"), str(root / "bg"), out_uri, refs))
    finally:
        torch.set_num_threads(threads)
    out = locate(out_uri)
    last_run = summarize([summary], summary.seconds)
    stats = dataset_stats(manifest.read_shards(out, "samples"), last_run)
    write_bytes_atomic(out, out.path(manifest.STATS_FILE), json.dumps(stats).encode())


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-src")
    (root / "in").mkdir()
    (root / "bg").mkdir()
    portraits = shared_data("p3m_figure_gt", "image")
    for name in ("p3m_fig_a3.png", "p3m_fig_a4.png"):
        shutil.copy(portraits / name, root / "in" / name)
    backgrounds = shared_data("backgrounds")
    _small_png(backgrounds / "mate_Dune.jpg", root / "in" / ODD_NAME, 320)
    (root / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 8)
    for name in ("mate_Garden.jpg", "mate_Storm.jpg"):
        _small_png(backgrounds / name, root / "bg" / name.replace(".jpg", ".png"), 480)
    return root


@pytest.fixture(scope="module")
def dataset(sources, tmp_path_factory) -> Path:
    """The built dataset (never modified by tests: copy it first to write a report)."""
    out = tmp_path_factory.mktemp("report-out") / "ds"
    _build(sources, ["p3m_fig_a3.png", "p3m_fig_a4.png", ODD_NAME, "broken.jpg"], str(out))
    statuses = sorted(r["status"] for r in
                      manifest.read_table(locate(str(out)), "samples").to_pylist())
    assert statuses == ["failed", "ok", "ok", "rejected"], statuses
    return out


@pytest.fixture(scope="module")
def paged(dataset, tmp_path_factory) -> Path:
    """A copy of the dataset with a report of one row per page (so every sheet has pages)."""
    root = tmp_path_factory.mktemp("report-paged") / "ds"
    shutil.copytree(dataset, root)
    assert write_report(locate(str(root)), max_rows_per_page=1) == INDEX
    return root


def _img_sources(page: str) -> list[str]:
    return re.findall(r"<img src=\"([^\"]+)\"", page)


def test_report_counts_rows_by_status_and_reason_and_shows_throughput(paged):
    index = (paged / INDEX).read_text()
    for status, count in (("ok", 2), ("rejected", 1), ("failed", 1)):
        assert re.search(rf"<td>{status}</td><td class=\"n\">{count}</td>", index), status
    assert re.search(r"<td>no_person</td><td class=\"n\">1</td>", index)
    assert "images / task-second" in index
    for stage in manifest.STAGES:
        assert f"<td>{stage}</td>" in index


def test_report_plots_each_quality_figure_the_rows_have(paged):
    index = (paged / INDEX).read_text()
    quality = index[index.index('id="quality"'):index.index('id="accepted"')]
    plotted = re.findall(r"aria-label=\"(\w+)(?: \(log10\))? histogram\"", quality)
    rows = manifest.read_table(locate(str(paged)), "samples")
    expected = [c for c in ("presence", "unknown_fraction", "alpha_iterations", "alpha_residual",
                            "mask_alpha_disagreement", "composite_residual", "edge_support",
                            "fg_components")
                if c in rows.column_names and rows.column(c).null_count < rows.num_rows]
    assert plotted == expected
    assert {"presence", "unknown_fraction", "alpha_residual"} <= set(plotted)


def test_histogram_bars_count_every_value():
    values = [0.1, 0.2, 0.2, 0.5, 0.9, 0.95, 1.0]
    svg = histogram_svg(values, "x", bins=5)
    counts = [int(c) for c in re.findall(r"<title>[^<]*: (\d+)</title>", svg)]
    assert len(counts) == 5 and sum(counts) == len(values)
    assert counts == [3, 0, 1, 0, 3]  # bins of 0.18 from 0.1: [0.1, 0.28) holds 0.1, 0.2, 0.2
    single = histogram_svg([3.0, 3.0], "y")  # no spread: one bar holding both
    assert [int(c) for c in re.findall(r": (\d+)</title>", single)] == [2]
    logged = histogram_svg([1e-6, 1e-4, 1e-2], "r", bins=3, log=True)
    assert "(log10)" in logged
    assert [int(c) for c in re.findall(r": (\d+)</title>", logged)] == [1, 1, 1]


def test_contact_sheet_pages_link_each_other_and_hold_one_row_each(paged):
    report = paged / "report"
    pages = sorted(p.name for p in report.glob("*.html"))
    assert pages == ["accepted-2.html", "index.html", "rejected-2.html"]
    index = (report / "index.html").read_text()
    assert 'href="accepted-2.html#accepted"' in index
    assert 'href="rejected-2.html#rejected"' in index
    second = (report / "accepted-2.html").read_text()
    assert 'href="index.html#accepted"' in second
    assert second.count("<tr><td class=\"info\"") == 1
    # index: one accepted row of six thumbnails; rejected page 1 is the failed row (no image).
    assert index.count("<tr><td class=\"info\"") == 2


def test_accepted_rows_show_six_thumbnails_rejected_rows_their_source(paged):
    report = paged / "report"
    accepted = [(report / n).read_text() for n in ("index.html", "accepted-2.html")]
    for page in accepted:
        sheet = page[page.index('id="accepted"'):page.index('id="rejected"')] \
            if 'id="rejected"' in page else page
        names = _img_sources(sheet)
        assert [n.rsplit("_", 1)[1].split(".")[0] for n in names] == [
            "image", "mask", "trimap", "alpha", "fg", "composite"]
    rejected = (report / "rejected-2.html").read_text()
    assert "no_person" in rejected
    assert [n.rsplit("_", 1)[1] for n in _img_sources(rejected)] == ["source.jpg"]
    index = (report / "index.html").read_text()
    failed = index[index.index('id="rejected"'):]
    assert "broken.jpg" in failed and _img_sources(failed) == []  # placeholder, no broken <img>
    assert "source: not readable" in failed


def test_thumbnails_are_small_files_beside_the_report(paged):
    report = paged / "report"
    names = {n for p in report.glob("*.html") for n in _img_sources(p.read_text())}
    assert len(names) == 2 * 6 + 1
    for name in names:
        image = cv2.imread(str(report / name), cv2.IMREAD_UNCHANGED)
        assert image is not None, name
        assert max(image.shape[:2]) == THUMB_SIDE  # every source here is larger
    assert {p.name for p in (report / "thumbs").iterdir()} == {n.split("/")[1] for n in names}


def test_text_from_the_manifest_is_html_escaped(paged):
    pages = "".join(p.read_text() for p in (paged / "report").glob("*.html"))
    assert "&lt;b&gt;&amp;&quot;x&quot;&#x27;.png" in pages
    assert "<b>" not in pages and '&"x"' not in pages


def test_rewriting_removes_pages_and_thumbnails_no_longer_linked(dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    out = locate(str(root))
    write_report(out, max_rows_per_page=1)
    assert (root / "report" / "accepted-2.html").exists()
    write_report(out, max_rows_per_page=10, sample_size=1, seed=3)
    report = root / "report"
    assert sorted(p.name for p in report.glob("*.html")) == ["index.html"]
    index = (report / "index.html").read_text()
    assert "1 of 2 rows shown (a seeded sample)" in index
    linked = {n.split("/")[1] for n in _img_sources(index)}
    assert {p.name for p in (report / "thumbs").iterdir()} == linked
    again = tmp_path / "again" / "ds"
    shutil.copytree(dataset, again)
    write_report(locate(str(again)), max_rows_per_page=10, sample_size=1, seed=3)
    same = (again / INDEX).read_text().replace(str(again), str(root))
    assert same == index  # same seed, same sample, same page


def test_summary_markdown_has_the_tables_and_the_report_location(paged):
    out = locate(str(paged))
    text = summary_markdown(out, INDEX)
    for line in ("| ok | 2 |", "| rejected | 1 |", "| failed | 1 |", "| **total** | 4 |",
                 "| no_person | 1 |", "| composites | 4 |"):
        assert line in text, line
    assert re.search(r"\| last run: images / s \| [0-9.]+ \|", text)
    assert re.search(r"\| alpha \| [0-9.]+ \| [0-9.]+% \| [0-9.]+ \|", text)
    assert text.rstrip().endswith(f"`{INDEX}` at `{paged / INDEX}`")


def test_report_on_an_object_store_with_no_accepted_rows(sources, tmp_path):
    """Rejected rows show their source when it still opens, a text cell when it is gone."""
    uri = "memory://report-test/ds"
    fs = fsspec.filesystem("memory")
    src = tmp_path / "src"
    shutil.copytree(sources, src)
    gone = src / "in" / "gone.png"
    Image.open(src / "in" / ODD_NAME).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(gone)
    try:
        _build(src, [ODD_NAME, "broken.jpg", "gone.png"], uri)
        gone.unlink()
        before = set(tmp_path.rglob("*"))
        out = locate(uri)
        assert write_report(out) == INDEX
        index = fs.cat_file("/report-test/ds/report/index.html").decode()
        accepted = index[index.index('id="accepted"'):index.index('id="rejected"')]
        assert "0 of 0 rows shown" in accepted and "No rows." in accepted
        rejected = index[index.index('id="rejected"'):]
        assert "3 of 3 rows shown" in rejected
        assert rejected.count("source: not readable") == 2  # broken.jpg and gone.png
        thumbs = fs.find("/report-test/ds/report/thumbs")
        assert len(thumbs) == 1 and thumbs[0].endswith("_source.jpg")
        assert _img_sources(rejected) == ["thumbs/" + thumbs[0].rsplit("/", 1)[1]]
        assert set(tmp_path.rglob("*")) == before  # nothing written to local disk
        text = summary_markdown(out, INDEX)
        assert "| ok |" not in text and "| rejected | 2 |" in text
        assert re.search(r"at `memory://+report-test/ds/report/index.html`$", text.rstrip())
    finally:
        if fs.exists("/report-test"):
            fs.rm("/report-test", recursive=True)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium on PATH: `make test-setup` installs Debian's chromium package "
                "(--no-upgrade)")


@pytest.mark.slow
def test_report_pages_load_in_headless_chromium_without_errors(paged, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright: the dev extra")
    executable = _chromium()
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            widths = {}
            for name in ("index.html", "accepted-2.html", "rejected-2.html"):
                page.goto((paged / "report" / name).as_uri(), wait_until="load")
                page.evaluate("Promise.all(Array.from(document.images,"
                              " i => i.decode().catch(() => null)))")
                widths[name] = page.evaluate(
                    "Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
                if name == "index.html":
                    shot = tmp_path / "index.png"
                    page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert len(widths["index.html"]) == 6 and len(widths["accepted-2.html"]) == 6
    assert len(widths["rejected-2.html"]) == 1
    assert all(w > 0 for ws in widths.values() for w in ws), widths
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[1] == 1280 and pixels.shape[0] > 900
    assert float(np.std(pixels)) > 10  # text, tables and photos, not a blank page


def test_report_command_rewrites_the_report_of_an_existing_dataset(dataset, tmp_path, capsys):
    from matteforge.cli import main

    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    shutil.rmtree(root / "report", ignore_errors=True)
    assert main(["report", str(root)]) == 0
    assert "report/index.html" in capsys.readouterr().out
    assert "p3m_fig_a3.png" in (root / INDEX).read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "not a matteforge dataset" in capsys.readouterr().err
