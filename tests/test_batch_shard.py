"""A shard's portraits through the models in batches (a GPU's way) make the rows one at a time
makes: the same statuses, duplicates, files and figures, whatever lands in which batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from matteforge.config import BuildConfig, SegmentConfig, load_config
from matteforge.dataset import manifest
from matteforge.dataset.storage import locate
from matteforge.steps.shard import (
    BackgroundCache,
    BackgroundRef,
    ShardJob,
    process_samples,
    run_shard,
)
from matteforge.tasks.ingest import content_hash
from matteforge.tasks.segment import batch_size, segmenter_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(folder: Path, astronaut: np.ndarray, coffee: np.ndarray) -> list[str]:
    """Three portraits, a copy of the first (same batch) and of the second (a later batch),
    a photo with no person, a file that is no image and one that is not there."""
    folder.mkdir()
    names = []
    for i, side in enumerate((160, 192, 224)):
        Image.fromarray(astronaut).resize((side, side)).save(folder / f"p{i}.png")
        names.append(f"p{i}.png")
    (folder / "p0-copy.png").write_bytes((folder / "p0.png").read_bytes())
    Image.fromarray(coffee).resize((200, 150)).save(folder / "cup.png")
    (folder / "notes.png").write_bytes(b"not a picture")
    (folder / "p1-copy.png").write_bytes((folder / "p1.png").read_bytes())
    names += ["p0-copy.png", "cup.png", "notes.png", "gone.png", "p1-copy.png"]
    return [str(folder / n) for n in names]


def _build(tmp_path: Path, name: str, uris: list[str], batch: int) -> list[dict[str, Any]]:
    bgs = tmp_path / "bg"
    if not bgs.exists():
        bgs.mkdir()
        Image.fromarray(np.full((240, 240, 3), (30, 120, 200), np.uint8)).save(bgs / "b.png")
    path = str(bgs / "b.png")
    ref = BackgroundRef(content_hash((bgs / "b.png").read_bytes())[:20], path, path)
    cfg = load_config("demo", **{"segment.batch_size": batch,
                                 "composite.per_foreground_train": 1,
                                 "composite.per_foreground_test": 1})
    out = tmp_path / name
    run_shard(ShardJob("s", uris, cfg.model_dump(mode="json"), str(Path(uris[0]).parent),
                       str(bgs), str(out), [ref]))
    return manifest.read_table(locate(str(out)), "samples").to_pylist()


def test_a_batched_shard_makes_the_rows_and_files_one_at_a_time_makes(
        tmp_path, astronaut, coffee):
    uris = _inputs(tmp_path / "in", astronaut, coffee)
    one = _build(tmp_path, "one", uris, 1)
    batched = _build(tmp_path, "batched", uris, 3)
    assert [r["source_uri"] for r in batched] == [r["source_uri"] for r in one]
    said = [(r["status"], r["reason"]) for r in one]
    assert said == [(r["status"], r["reason"]) for r in batched]
    assert said == [("ok", ""), ("ok", ""), ("ok", ""), ("duplicate", "duplicate"),
                    ("rejected", "no_person"), ("failed", "not_an_image"),
                    ("failed", "not_found"), ("duplicate", "duplicate")], said
    for a, b in zip(one, batched, strict=True):
        assert a["sample_id"] == b["sample_id"] and a["detail"] == b["detail"]
        if a["status"] == "ok":
            for kind in ("mask", "trimap", "alpha", "fg"):
                x = np.asarray(Image.open(tmp_path / "one" / a[f"{kind}_uri"]), np.int16)
                y = np.asarray(Image.open(tmp_path / "batched" / b[f"{kind}_uri"]), np.int16)
                assert np.abs(x - y).max() <= 1, kind  # batched convolutions: float round-off
            assert b["seconds_segment"] > 0


def test_a_shard_runs_numba_on_the_workers_thread_budget(tmp_path, astronaut, coffee):
    """pymatting's numba otherwise takes a thread per core in every worker (2 workers on 2
    cores: a 1 MP foreground 0.25-0.56 s against 0.20 s on one thread)."""
    import numba

    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    uris = _inputs(tmp_path / "in", astronaut, coffee)[:1]
    _build(tmp_path, "one", uris, 1)
    assert numba.get_num_threads() == min(BuildConfig().run.torch_threads,
                                          numba.config.NUMBA_NUM_THREADS)


def _selfie_only() -> BuildConfig:
    """The smallest model and no composites: for tests of how portraits reach the models."""
    return load_config("demo", **{"segment.model": "mediapipe-selfie",
                                  "composite.per_foreground_train": 0,
                                  "composite.per_foreground_test": 0})


def test_a_batch_is_closed_by_its_pixel_budget(tmp_path, astronaut, coffee):
    """Big photos do not pile up: with room for one portrait, each goes alone."""
    uris = _inputs(tmp_path / "in", astronaut, coffee)[:3]
    cfg = _selfie_only()
    seg = segmenter_for(cfg.segment)
    sizes: list[int] = []
    original = seg.predict_batch

    def counting(images):  # the real segmenter, counting how many it is given at once
        sizes.append(len(images))
        return original(images)

    seg.predict_batch = counting  # type: ignore[method-assign]
    try:
        inputs = [(u, Path(u).read_bytes(), None) for u in uris]
        cache = BackgroundCache(locate(str(tmp_path)), [])
        out = locate(str(tmp_path / "out"))
        rows = [row for _, row in process_samples(inputs, cfg, seg, cache, out, batch=8,
                                                  pixels=200 * 200)]
        assert [r["status"] for r in rows] == ["ok"] * 3
        assert sizes == [1, 1, 1]  # 160² and 192² do not fit together in 200²
        sizes.clear()
        rows = [row for _, row in process_samples(inputs, cfg, seg, cache, out, batch=8)]
        assert sizes == [3]
    finally:
        del seg.predict_batch


def test_the_batch_size_follows_the_device_and_is_not_part_of_the_dataset():
    assert batch_size(SegmentConfig(device="cpu")) == 1
    assert batch_size(SegmentConfig(device="cpu", batch_size=4)) == 4
    assert batch_size(SegmentConfig()) in (1, 8)  # "auto": 8 where torch sees a GPU
    base = BuildConfig()
    other = load_config(None, **{"segment.batch_size": 16})
    assert other.config_hash() == base.config_hash()
    with pytest.raises(ValueError):
        SegmentConfig(batch_size=0)


def test_a_batch_the_models_fail_on_is_run_one_portrait_at_a_time(tmp_path, astronaut, coffee):
    uris = _inputs(tmp_path / "in", astronaut, coffee)[:3]
    cfg = _selfie_only()
    seg = segmenter_for(cfg.segment)

    original = seg.predict_batch

    def refuse(images):
        if len(images) > 1:
            raise RuntimeError("CUDA out of memory (a batch too big for the card)")
        return original(images)

    seg.predict_batch = refuse  # type: ignore[method-assign]
    try:
        inputs = [(u, Path(u).read_bytes(), None) for u in uris]
        rows = [row for _, row in process_samples(
            inputs, cfg, seg, BackgroundCache(locate(str(tmp_path)), []),
            locate(str(tmp_path / "out")), batch=3)]
    finally:
        del seg.predict_batch
    assert [r["status"] for r in rows] == ["ok"] * 3
