"""Reprocess: which stage a change restarts at, and new dataset versions made from a real build."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from matteforge.config import load_config, merge_options
from matteforge.demo import prepare_demo_data
from matteforge.flows.reprocess import ReprocessError, first_changed_stage


def _changed(**changes: object) -> tuple:
    old = load_config("demo", **{"segment.model": "mediapipe-selfie", "alpha.prior_weight": 0})
    return old, load_config(merge_options(old.model_dump(mode="json"), changes))


@pytest.mark.parametrize(("changes", "stage"), [
    ({"composite": {"per_foreground_train": 7}}, "composite"),
    ({"seed": 5}, "composite"),
    ({"trimap": {"width_fraction": 0.03}}, "trimap"),
    ({"trimap": {"kernel_shape": "rect"}}, "trimap"),
    ({"alpha": {"n_neighbors": 12}}, "trimap"),
    ({"alpha": {"n_neighbors": 12, "prior_weight": 0.1}}, "segment"),  # needs the probability
    ({"trimap": {"threshold": 0.6}}, "segment"),  # a 0/255 mask cannot be re-thresholded
    ({"segment": {"model": "meet"}}, "segment"),
    ({"quality": {"min_edge_support": 1.2}}, "trimap"),  # figures are remade from the masks
    ({"composite": {"effects": {"bokeh": 0.5}}}, "composite"),
    ({"run": {"shard_size": 9}}, None),
])
def test_first_changed_stage(changes, stage):
    old, new = _changed(**changes)
    assert first_changed_stage(old, new, model_changed=False) == stage


def test_an_ensemble_restarts_at_segment_for_any_recipe_change():
    old = load_config({})  # the default recipe: two models, their maps are not stored
    for change in ({"trimap": {"width_fraction": 0.03}}, {"quality": {"min_edge_support": 1}}):
        new = load_config(merge_options(old.model_dump(mode="json"), change))
        assert first_changed_stage(old, new, model_changed=False) == "segment"
    new = load_config(merge_options(old.model_dump(mode="json"), {"seed": 3}))
    assert first_changed_stage(old, new, model_changed=False) == "composite"


@pytest.mark.parametrize("segment", [{"passes": 1}, {"size": 512}, {"size": [384, 512]},
                                     {"presence_threshold": 0.6}])
def test_a_changed_rvm_recipe_restarts_at_segment(segment):
    old = load_config({"segment": {"model": "rvm"}})
    new = load_config(merge_options(old.model_dump(mode="json"), {"segment": segment}))
    assert first_changed_stage(old, new, model_changed=False) == "segment"
    moved = load_config(merge_options(old.model_dump(mode="json"),
                                      {"segment": {"weights_path": "/elsewhere/rvm.json"}}))
    assert first_changed_stage(old, moved, model_changed=False) is None


def test_new_weights_restart_at_segment_and_ingest_changes_are_refused():
    old, new = _changed(run={"shard_size": 3})
    assert first_changed_stage(old, new, model_changed=True) == "segment"
    old, new = _changed(ingest={"min_side": 64})
    with pytest.raises(ReprocessError, match="new build"):
        first_changed_stage(old, new, model_changed=False)


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """A parent build, a trimap-width version and a composite-count version of it."""
    from matteforge.flows.build import build_dataset
    from matteforge.flows.reprocess import reprocess_dataset
    from matteforge.prefect_env import prefect_api

    root = tmp_path_factory.mktemp("reprocess")
    portraits, backgrounds = prepare_demo_data(root / "data")
    for name in ("camera.png", "chelsea.png"):
        (portraits / name).unlink()
    (portraits / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    os.environ.pop("PREFECT_API_URL", None)
    paths = {"parent": root / "v1", "trimap": root / "v2-trimap", "composite": root / "v2-comp",
             "portraits": portraits}
    try:
        # One model, so a trimap change can start from the stored mask (an ensemble's recipe
        # needs every model's own map and restarts at the segment stage).
        one_model = load_config("demo", **{"segment.model": "mediapipe-selfie",
                                           "alpha.prior_weight": 0}).model_dump(mode="json")
        with prefect_api():
            build_dataset(config=one_model, input=str(portraits), backgrounds=str(backgrounds),
                          output=str(paths["parent"]), n_workers=1)
            reprocess_dataset(source=str(paths["parent"]), output=str(paths["trimap"]),
                              changes={"trimap": {"width_fraction": 0.03}}, n_workers=1)
            reprocess_dataset(source=str(paths["parent"]), output=str(paths["composite"]),
                              changes={"composite": {"per_foreground_train": 1,
                                                     "per_foreground_test": 1}}, n_workers=1)
            again = build_dataset(config=_config(paths["trimap"]), input=str(portraits),
                                  backgrounds=str(backgrounds), output=str(paths["trimap"]),
                                  n_workers=1)
            paths["rebuild_skipped"] = again["skipped"]
        yield paths
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _config(dataset: Path) -> dict:
    return json.loads((dataset / "dataset.json").read_text())["config"]


def _samples(dataset: Path) -> pd.DataFrame:
    return pd.read_parquet(dataset / "manifest" / "samples").set_index("source_uri").sort_index()


@pytest.mark.slow
def test_trimap_change_reuses_the_mask_and_redoes_the_rest(versions):
    from matteforge.dataset.verify import verify_dataset

    old, new = _samples(versions["parent"]), _samples(versions["trimap"])
    assert verify_dataset(str(versions["trimap"])).ok
    assert list(new.index) == list(old.index)
    assert (new["status"] == old["status"]).all() and (new["reason"] == old["reason"]).all()
    ok = old["status"] == "ok"
    assert ok.sum() == 1 and set(old["status"]) == {"ok", "rejected", "failed"}
    assert (new.loc[ok, "sample_id"] == old.loc[ok, "sample_id"]).all()
    for same in ("mask_sha256", "image_sha256", "alpha_model_sha256", "model_license"):
        assert (new.loc[ok, same] == old.loc[ok, same]).all()
    assert (new.loc[ok, "trimap_half_width"] > old.loc[ok, "trimap_half_width"]).all()
    assert (new.loc[ok, "trimap_sha256"] != old.loc[ok, "trimap_sha256"]).all()
    assert (new.loc[ok, "alpha_sha256"] != old.loc[ok, "alpha_sha256"]).all()
    meta = json.loads((versions["trimap"] / "dataset.json").read_text())
    parent = json.loads((versions["parent"] / "dataset.json").read_text())
    assert meta["parent"]["uri"] == str(versions["parent"])
    assert meta["parent"]["config_hash"] == parent["config_hash"] != meta["config_hash"]
    assert meta["parent"]["reprocessed_from"] == "trimap"
    assert set(new["config_hash"]) == {meta["config_hash"]}
    assert meta["model"]["sha256"] == parent["model"]["sha256"]


@pytest.mark.slow
def test_an_incremental_build_into_the_new_version_has_nothing_to_do(versions):
    assert versions["rebuild_skipped"] == len(_samples(versions["parent"]))


@pytest.mark.slow
def test_composite_change_reuses_alpha_and_foreground(versions):
    from matteforge.dataset.verify import verify_dataset

    old, new = _samples(versions["parent"]), _samples(versions["composite"])
    assert verify_dataset(str(versions["composite"])).ok
    ok = old["status"] == "ok"
    for same in ("alpha_sha256", "fg_sha256", "trimap_sha256", "mask_sha256",
                 "alpha_model_sha256"):
        assert (new.loc[ok, same] == old.loc[ok, same]).all()
    assert (new.loc[ok, "n_composites"] == 1).all()
    assert (old.loc[ok, "n_composites"] > 1).all()
    composites = pd.read_parquet(versions["composite"] / "manifest" / "composites")
    assert len(composites) == ok.sum()
    meta = json.loads((versions["composite"] / "dataset.json").read_text())
    assert meta["parent"]["reprocessed_from"] == "composite"
    assert meta["counts"]["composites"] == len(composites)


def test_reprocess_refuses_to_overwrite_its_source(tmp_path):
    from matteforge.flows.reprocess import reprocess_dataset

    with pytest.raises(ReprocessError, match="differ"):
        reprocess_dataset.fn(source=str(tmp_path), output=str(tmp_path))


def test_stored_mask_offers_the_model_alpha_on_the_masks_side_of_the_threshold():
    import numpy as np

    from matteforge.flows.reprocess import StoredMask

    mask = np.array([[0, 255, 255, 0]], dtype=np.uint8)
    model = np.array([[10, 200, 153, 153]], dtype=np.uint8)  # p = 0.5995 rounds up to 153/255
    image = np.zeros((1, 4, 3), dtype=np.uint8)

    def stored(probability: np.ndarray | None) -> StoredMask:
        return StoredMask(mask, probability, 0.6, 1.0, "m", "s" * 64, "MIT", {})

    prob = stored(model).predict(image).probability
    assert prob.dtype == np.float32
    np.testing.assert_allclose(prob[0, :2], [10 / 255, 200 / 255], rtol=1e-6)
    assert ((prob >= 0.6) == (mask == 255)).all()
    np.testing.assert_array_equal(stored(None).predict(image).probability, mask / 255.0)
