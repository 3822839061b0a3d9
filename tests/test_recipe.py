"""The per-sample recipe: confident pixels settle the trimap, confidence weights the prior, and
on a real portrait with exact ground truth the final alpha beats the models' own map."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matteforge.config import BuildConfig, load_config
from matteforge.metrics import sad
from matteforge.tasks import trimap
from matteforge.tasks.recipe import StageClock, ensemble_map, make_sample, prior_weights
from tests.conftest import shared_data


def test_settle_confident_keeps_unknown_only_where_a_model_is_unsure_or_they_disagree():
    tri = np.full((1, 5), trimap.UNKNOWN, np.uint8)
    a = np.array([[0.99, 0.01, 0.99, 0.5, 0.02]], np.float32)
    b = np.array([[0.97, 0.03, 0.20, 0.5, 0.04]], np.float32)
    settled = trimap.settle_confident(tri, [a, b], margin=0.05)
    assert settled.tolist() == [[255, 0, 128, 128, 0]]
    known = np.array([[0, 255, 128, 128, 128]], np.uint8)
    assert trimap.settle_confident(known, [a, b], 0.05)[0, :2].tolist() == [0, 255]  # untouched
    with pytest.raises(ValueError, match="shape"):
        trimap.settle_confident(tri, [np.zeros((2, 2))], 0.05)


def test_prior_weight_follows_the_least_confident_model():
    a = np.array([[1.0, 0.5, 0.0]], np.float32)
    b = np.array([[1.0, 1.0, 0.25]], np.float32)
    weights = prior_weights({"a": a, "b": b}, 0.3, by_confidence=True)
    np.testing.assert_allclose(weights, [[0.3, 0.0, 0.3 * 0.25]])
    assert prior_weights({"a": a}, 0.3, by_confidence=False) == 0.3
    np.testing.assert_allclose(ensemble_map({"a": a, "b": b}), [[1.0, 0.75, 0.125]])
    with pytest.raises(ValueError):
        ensemble_map({})


@pytest.fixture(scope="module")
def portrait(one_torch_thread) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    from matteforge.tasks.segment import segmenter_for

    image = cv2.cvtColor(cv2.imread(str(shared_data("p3m_figure_gt", "image", "p3m_fig_b2.png"))),
                         cv2.COLOR_BGR2RGB)
    truth = cv2.imread(str(shared_data("p3m_figure_gt", "alpha", "p3m_fig_b2.png")), 0) / 255.0
    maps = segmenter_for(BuildConfig().segment).predict(image).model_maps()
    return image, truth, maps


def _band_sad(alpha: np.ndarray, truth: np.ndarray, band: np.ndarray) -> float:
    return float(np.abs(alpha - truth)[band].sum())


def test_the_default_recipe_beats_the_models_map_in_the_band(portrait):
    image, truth, maps = portrait
    clock = StageClock(["trimap", "alpha"])
    sample = make_sample(image, maps, BuildConfig(), clock)
    assert sample.verdict is None and set(clock.seconds) >= {"trimap", "alpha", "quality"}
    alpha = sample.alpha / 255.0
    band = trimap.make_trimap(sample.probability,
                              half_width=sample.row["trimap_half_width"]) == trimap.UNKNOWN
    ours, model = _band_sad(alpha, truth, band), _band_sad(sample.probability, truth, band)
    assert ours < 0.85 * model, (ours, model)
    assert sad(alpha, truth) < sad(sample.probability, truth)
    # the trimap keeps unknown only inside the band, and fewer pixels than the band
    assert (sample.trimap[~band] != trimap.UNKNOWN).all()
    assert (sample.trimap == trimap.UNKNOWN).sum() < band.sum()


def test_the_knn_only_recipe_is_still_there_and_is_worse(portrait):
    image, truth, maps = portrait
    knn_only = load_config({"alpha": {"cf_weight": 0, "prior_confidence": False},
                            "trimap": {"sure_margin": 0}})
    plain = make_sample(image, maps, knn_only).alpha / 255.0
    best = make_sample(image, maps, BuildConfig()).alpha / 255.0
    assert sad(best, truth) < sad(plain, truth)
