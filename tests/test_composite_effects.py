"""Effects in a real shard: drawn per composite, recorded in the manifest, re-made exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matteforge.config import load_config
from matteforge.dataset import manifest
from matteforge.dataset.storage import locate
from matteforge.steps.shard import BackgroundRef, ShardJob, run_shard
from matteforge.tasks.composite import composite, fit_background
from matteforge.tasks.effects import (
    apply_background_effects,
    apply_foreground_effects,
    specs_from_json,
)
from matteforge.tasks.ingest import content_hash


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _shard(tmp_path: Path, astronaut: np.ndarray, coffee: np.ndarray,
           effects: dict[str, float]) -> tuple[Path, list[dict], list[dict]]:
    src, bgs, out = tmp_path / "in", tmp_path / "bg", tmp_path / "out"
    src.mkdir()
    bgs.mkdir()
    Image.fromarray(astronaut).resize((200, 200)).save(src / "astronaut.png")
    refs = []
    for name, image in (("coffee", coffee), ("flipped", coffee[:, ::-1])):
        Image.fromarray(np.ascontiguousarray(image)).save(bgs / f"{name}.png")
        data = (bgs / f"{name}.png").read_bytes()
        path = str(bgs / f"{name}.png")
        refs.append(BackgroundRef(content_hash(data)[:20], path, path))
    cfg = load_config("demo", **{"composite.effects": effects,
                                 "composite.per_foreground_train": 2,
                                 "composite.per_foreground_test": 2})
    run_shard(ShardJob("s", [str(src / "astronaut.png")], cfg.model_dump(mode="json"),
                       str(src), str(bgs), str(out), refs))
    loc = locate(str(out))
    return (out, manifest.read_table(loc, "samples").to_pylist(),
            manifest.read_table(loc, "composites").to_pylist())


@pytest.mark.usefixtures("one_torch_thread")
def test_effects_are_recorded_and_each_composite_can_be_remade_from_its_row(
        tmp_path, astronaut, coffee):
    out, samples, composites = _shard(tmp_path, astronaut, coffee,
                                      {"bokeh": 1.0, "tone": 1.0, "mosaic": 0.5})
    assert [s["status"] for s in samples] == ["ok"], samples[0]["detail"]
    assert len(composites) == 2
    for row in composites:
        specs = specs_from_json(row["effects"])
        assert {"bokeh", "tone"} <= {s.name for s in specs}
        fg, alpha = _read(out / row["fg_uri"]), _read(out / row["alpha_uri"])
        bg = fit_background(_read(Path(row["bg_uri"])), *alpha.shape)
        remade = composite(apply_foreground_effects(fg, alpha, specs), alpha,
                           apply_background_effects(bg, specs), row["mode"])
        np.testing.assert_array_equal(remade, _read(out / row["merged_uri"]))
        plain = composite(fg, alpha, bg, row["mode"])
        assert np.abs(remade.astype(int) - plain).mean() > 1.0  # the effects did something


@pytest.mark.usefixtures("one_torch_thread")
def test_no_effects_configured_gives_the_plain_recipe_and_an_empty_record(
        tmp_path, astronaut, coffee):
    out, samples, composites = _shard(tmp_path, astronaut, coffee, {})
    assert samples[0]["status"] == "ok"
    for row in composites:
        assert json.loads(row["effects"]) == []
        fg, alpha = _read(out / row["fg_uri"]), _read(out / row["alpha_uri"])
        bg = fit_background(_read(Path(row["bg_uri"])), *alpha.shape)
        np.testing.assert_array_equal(composite(fg, alpha, bg, row["mode"]),
                                      _read(out / row["merged_uri"]))


def test_unknown_effects_and_bad_probabilities_are_config_errors():
    with pytest.raises(ValueError, match="unknown effects"):
        load_config("demo", **{"composite.effects": {"sparkle": 0.5}})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_config("demo", **{"composite.effects": {"bokeh": 1.5}})
