"""Lazy composites (``composite.store: false``): rows with a recipe and no file, made on read by
``MattingDataset`` and written later by ``matteforge materialize``, the same as stored ones.

Two real shards of the same two P3M portraits (one train, one test) over copied backgrounds,
with effects on, built by ``run_shard`` (a build's per-shard work, without Prefect): one stores
its composites, one does not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data

from matteforge.cli import main
from matteforge.config import load_config
from matteforge.dataset import manifest
from matteforge.dataset.card import write_card
from matteforge.dataset.codec import decode
from matteforge.dataset.materialize import CompositeRecipe, materialize
from matteforge.dataset.report import write_report
from matteforge.dataset.snapshot import Manifest
from matteforge.dataset.storage import list_file_sizes, locate
from matteforge.dataset.verify import verify_dataset
from matteforge.steps.backgrounds import index_backgrounds
from matteforge.steps.shard import ShardJob, run_shard
from matteforge.tasks.ingest import content_hash
from matteforge.torch import MattingDataset

PORTRAITS = ("a1", "a4")  # seed 0, test_fraction 0.5: a1 train, a4 test
BACKGROUNDS = ("mate_Dune.jpg", "mate_GreenMeadow.jpg", "mate_Storm.jpg")
EFFECTS = {"bokeh": 0.5, "mosaic": 0.5, "tone": 0.5, "retouch": 0.5}
RECIPE = ("composite_id", "sample_id", "bg_id", "index", "split", "fg_uri", "alpha_uri",
          "bg_uri", "mode", "width", "height", "config_hash", "effects", "merged_format",
          "jpeg_quality")


def _build(base: Path, name: str, **settings: object) -> Path:
    """One shard of :data:`PORTRAITS` into ``base/name``, finished with a dataset.json."""
    images = shared_data("p3m_figure_gt", "image")
    bg_dir = base / "bg"
    if not bg_dir.exists():
        bg_dir.mkdir()
        for bg in BACKGROUNDS:
            shutil.copy(shared_data("backgrounds") / bg, bg_dir / bg)
    out = base / name
    cfg = load_config("demo", seed=0, **{
        "composite.per_foreground_train": 3, "composite.per_foreground_test": 2,
        "composite.test_fraction": 0.5, "composite.effects": EFFECTS, "run.torch_threads": 1,
        **settings})
    src, dst = locate(str(bg_dir)), locate(str(out))
    rows, refs = index_backgrounds(list_file_sizes(src, [".jpg"]), src, dst, copy=True,
                                   max_pixels=cfg.ingest.max_pixels,
                                   max_bytes=cfg.ingest.max_bytes)
    manifest.write_table(dst, "backgrounds", manifest.shard_name(0), rows)
    run_shard(ShardJob("s", [str(images / f"p3m_fig_{p}.png") for p in PORTRAITS],
                       cfg.model_dump(mode="json"), str(images), str(bg_dir), str(out), refs))
    _finish(out, cfg.config_hash())
    return out


def _finish(out: Path, config_hash: str = "") -> None:
    """What a finished build records that verify checks: dataset.json's counts and the
    manifest's checksums (as ``flows/build.write_record`` writes them), and the card."""
    loc = locate(str(out))
    loaded = Manifest.load(loc)
    record = {"name": out.name, "config_hash": config_hash, "counts": loaded.counts(),
              "checksums": loaded.checksums()}
    write_card(loc, loaded.table("samples"), loaded.table("composites"), record)
    (out / "dataset.json").write_text(json.dumps(record, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lazy")
    return {"stored": _build(base, "stored"),
            "lazy": _build(base, "lazy", **{"composite.store": False})}


def _composites(out: Path) -> list[dict]:
    return sorted(manifest.read_table(locate(str(out)), "composites").to_pylist(),
                  key=lambda r: r["composite_id"])


def _copy(built: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the lazy dataset a test may change."""
    shutil.copytree(built["lazy"], tmp_path / "lazy")
    return tmp_path / "lazy"


def test_lazy_rows_hold_the_whole_recipe_and_name_no_file(built):
    stored, lazy = _composites(built["stored"]), _composites(built["lazy"])
    assert {r["split"] for r in stored} == {"train", "test"}
    assert len(lazy) == len(stored) == 3 + 2
    assert any(json.loads(r["effects"]) for r in lazy)  # effects were drawn and recorded
    for s, z in zip(stored, lazy, strict=True):
        assert {k: z[k] for k in RECIPE} == {k: s[k] for k in RECIPE}
        assert z["merged_uri"] is z["merged_sha256"] is z["merged_bytes"] is None
        assert s["merged_uri"] == CompositeRecipe.from_row(z).file
    assert not (built["lazy"] / "merged").exists()
    # the samples rows are the same but for timings: store is not part of the config hash
    samples = [manifest.read_table(locate(str(built[k])), "samples").to_pylist()[0]
               for k in ("stored", "lazy")]
    untimed = [{k: v for k, v in row.items() if not k.startswith("seconds_")} for row in samples]
    assert untimed[0] == untimed[1]


def test_verify_accepts_lazy_rows_and_refuses_a_row_it_cannot_remake(built, tmp_path):
    assert verify_dataset(str(built["lazy"])).problems == []
    assert verify_dataset(str(built["stored"])).problems == []
    out = _copy(built, tmp_path)
    loc = locate(str(out))
    (name, rows), = Manifest.load(loc).shards("composites").items()
    rows[0] = {**rows[0], "effects": json.dumps([{"name": "sepia", "params": {}}])}
    manifest.write_table(loc, "composites", name, rows)
    _finish(out)
    problems = verify_dataset(str(out)).problems
    assert len(problems) == 1 and "no file and no usable recipe" in problems[0], problems


def test_materialized_files_are_the_stored_builds_byte_for_byte(built, tmp_path):
    out = _copy(built, tmp_path)
    done = materialize(locate(str(out)))
    assert (done.written, done.already) == (5, 0)
    stored = _composites(built["stored"])
    for s, m in zip(stored, _composites(out), strict=True):
        assert (m["merged_uri"], m["merged_sha256"], m["merged_bytes"]) == \
            (s["merged_uri"], s["merged_sha256"], s["merged_bytes"])
        data = (out / m["merged_uri"]).read_bytes()
        assert data == (built["stored"] / s["merged_uri"]).read_bytes()
        assert content_hash(data) == m["merged_sha256"]
    report = verify_dataset(str(out))
    assert (report.problems, report.warnings) == ([], [])
    assert "not stored" not in (out / "README.md").read_text()
    assert materialize(locate(str(out))).written == 0  # nothing left to do


def test_materialize_test_split_from_the_command_line_writes_only_test_composites(
        built, tmp_path, capsys):
    out = _copy(built, tmp_path)
    assert "5 composites are not stored" in (out / "README.md").read_text()
    assert main(["materialize", str(out), "--split", "test"]) == 0
    assert "2 test composite file(s) written" in capsys.readouterr().out
    rows = _composites(out)
    assert {r["split"] for r in rows if r["merged_uri"]} == {"test"}
    assert sorted(p.name for p in (out / "merged").iterdir()) == \
        sorted(Path(r["merged_uri"]).name for r in rows if r["split"] == "test")
    assert verify_dataset(str(out)).problems == []
    assert "3 composites are not stored" in (out / "README.md").read_text()
    assert not (out / ".matteforge.lock").exists()


def test_matting_dataset_makes_lazy_composites_as_the_stored_files_hold_them(built):
    options = {"split": None, "composite": "stored", "crop_size": None, "augment": False}
    stored, lazy = (MattingDataset(str(built[k]), **options) for k in ("stored", "lazy"))
    assert len(stored) == len(lazy) == 5
    for i in range(len(stored)):
        a, b = stored[i], lazy[i]
        assert a["composite_id"] == b["composite_id"]
        for key in ("image", "alpha", "trimap", "fg", "bg"):
            assert torch.equal(a[key], b[key]), (a["composite_id"], key)
    row = _composites(built["stored"])[0]
    on_disk = decode((built["stored"] / row["merged_uri"]).read_bytes(), "rgb")
    image = lazy[0]["image"].numpy().transpose(1, 2, 0)
    assert np.array_equal(np.rint(image * 255).astype(np.uint8), on_disk)


def test_the_report_shows_lazy_composites_made_on_read(built, tmp_path):
    out = _copy(built, tmp_path)
    write_report(locate(str(out)))
    page = (out / "report" / "index.html").read_text()
    assert "made on read" in page
    assert "composite: not readable" not in page and "no composite" not in page


@pytest.mark.usefixtures("one_torch_thread")
def test_a_composite_the_disk_refuses_is_the_samples_write_error(tmp_path):
    base = tmp_path / "build"
    base.mkdir()
    (base / "refused" / "merged").parent.mkdir()
    (base / "refused" / "merged").write_text("a file where the merged/ folder must go")
    out = _build(base, "refused")
    rows = manifest.read_table(locate(str(out)), "samples").to_pylist()
    assert {(r["status"], r["reason"]) for r in rows} == {("failed", "write_error")}
    assert all("merged/" in r["detail"] for r in rows)
    assert manifest.read_table(locate(str(out)), "composites").num_rows == 0
