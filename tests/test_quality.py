"""Quality figures and the acceptance rule: hand-made cases, then real photos with real masks."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from matteforge.config import BuildConfig, QualityConfig, load_config
from matteforge.tasks.ingest import decode_image
from matteforge.tasks.quality import (
    composite_residual,
    edge_support,
    fg_components,
    judge,
    mask_alpha_disagreement,
    model_disagreement,
)
from matteforge.tasks.recipe import make_sample
from tests.conftest import shared_data


def _disc(size: int = 64, radius: int = 16, center: tuple[int, int] = (32, 32)) -> np.ndarray:
    out = np.zeros((size, size), np.uint8)
    cv2.circle(out, center, radius, 255, -1)
    return out


def test_disagreement_is_one_minus_iou():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[:, :5] = 255  # 50 px
    b[:, :4] = 255  # 40 px, all inside a
    assert mask_alpha_disagreement(b, a) == pytest.approx(1 - 40 / 50)
    assert mask_alpha_disagreement(a, a) == 0.0
    assert mask_alpha_disagreement(np.zeros_like(a), np.zeros_like(a)) == 0.0


def test_composite_residual_is_zero_when_the_equation_holds_and_grows_with_error():
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    bg = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    alpha = np.full((8, 8), 0.25, np.float32)
    image = (0.25 * fg + 0.75 * bg).astype(np.float32) / 255.0
    region = np.ones((8, 8), bool)
    assert composite_residual(image, alpha, fg, bg, region) == pytest.approx(0.0, abs=1e-6)
    assert composite_residual(np.clip(image + 0.1, 0, 1), alpha, fg, bg, region) > 0.05
    assert composite_residual(image, alpha, fg, bg, np.zeros((8, 8), bool)) == 0.0


def test_fg_components_counts_regions_above_the_size_floor():
    alpha = np.zeros((100, 100), np.uint8)
    alpha[10:30, 10:30] = 255
    alpha[60:80, 60:90] = 255
    alpha[50, 5] = 255  # one pixel: 0.01 % of the image, a speck
    assert fg_components(alpha) == 2
    assert fg_components(np.zeros_like(alpha)) == 0


def test_edge_support_is_high_on_the_image_edge_and_low_off_it():
    disc = _disc()
    image = np.dstack([disc] * 3)
    assert edge_support(image, disc, ring_radius=6) > 2.0
    shifted = _disc(center=(40, 32))  # the matte's edge now crosses flat regions
    assert edge_support(image, shifted, ring_radius=6) < 1.6
    assert edge_support(image, np.zeros_like(disc), ring_radius=6) == 0.0


def test_judge_names_the_first_failing_figure_and_skips_missing_ones():
    limits = {"edge_support": ("min", 1.6), "fg_components": ("max", 8)}
    assert judge({"edge_support": 2.0, "fg_components": 3}, limits) is None
    reason, detail = judge({"edge_support": 1.1, "fg_components": 20}, limits)
    assert reason == "low_quality:edge_support" and "1.1" in detail and "1.6" in detail
    assert judge({"fg_components": 20}, limits)[0] == "low_quality:fg_components"
    assert judge({"edge_support": None, "fg_components": math.nan}, limits) is None


def test_limits_come_from_the_config_and_none_switches_one_off():
    limits = QualityConfig().limits()
    assert next(iter(limits)) == "model_disagreement"  # the reason a gross model failure gets
    assert limits["edge_support"] == ("min", 1.55)
    assert limits["fg_components"] == ("max", 8)
    assert "composite_residual" not in limits  # off by default: it did not separate (measured)
    cfg = load_config({"quality": {"min_edge_support": None}})
    assert "edge_support" not in cfg.quality.limits()
    assert cfg.config_hash() != BuildConfig().config_hash()


# ------------------------------------------------------------------ real photos, real masks

def _photo(name: str) -> np.ndarray:
    decoded = decode_image(shared_data("p3m_figure_gt", "image", name).read_bytes())
    assert decoded.image is not None
    return decoded.image


def _figures(image: np.ndarray, maps: dict[str, np.ndarray]) -> dict[str, float]:
    """The build's own recipe on one portrait: its row, with the verdict under "verdict"."""
    sample = make_sample(image, maps, BuildConfig())
    return {**sample.row, "verdict": sample.verdict}


@pytest.fixture(scope="module")
def model_maps(one_torch_thread) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Two real portraits with the default ensemble's real maps (rvm, MODNet)."""
    from matteforge.tasks.segment import segmenter_for

    seg = segmenter_for(BuildConfig().segment)
    images = [_photo("p3m_fig_c1.png"), _photo("p3m_fig_b2.png")]
    return [(image, seg.predict(image).model_maps()) for image in images]


def test_good_masks_on_real_portraits_are_accepted(model_maps):
    for image, maps in model_maps:
        assert len(maps) == 2
        row = _figures(image, maps)
        assert row["verdict"] is None, row
        assert row["edge_support"] > 1.8 and row["fg_components"] <= 2
        assert row["model_disagreement"] < 0.1
        # each model alone is accepted too
        for name, prob in maps.items():
            assert _figures(image, {name: prob})["verdict"] is None, name


def _shift(prob: np.ndarray) -> np.ndarray:
    out = np.zeros_like(prob)
    dx = round(0.15 * prob.shape[1])
    out[:, dx:] = prob[:, :-dx]
    return out


def _bloat(prob: np.ndarray) -> np.ndarray:
    r = round(0.06 * max(prob.shape))
    return cv2.dilate(prob, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))


def _confetti(prob: np.ndarray, seed: int = 0) -> np.ndarray:
    h, w = prob.shape
    cells = np.random.default_rng(seed).random((h // 12 + 1, w // 12 + 1)) < 0.5
    return prob * np.kron(cells, np.ones((12, 12)))[:h, :w].astype(np.float32)


def _half_lost(prob: np.ndarray) -> np.ndarray:
    """The person's lower half gone: what a model does when a busy background swallows it."""
    out = prob.copy()
    out[prob.shape[0] // 2:] = 0.0
    return out


@pytest.mark.parametrize("breaker", [_shift, _bloat, _confetti])
def test_deliberately_broken_masks_are_rejected(model_maps, breaker):
    for image, maps in model_maps:
        # every model fails (a model that falls apart does so in its own pattern)
        broken_all = {name: breaker(prob, seed) if breaker is _confetti else breaker(prob)
                      for seed, (name, prob) in enumerate(maps.items())}
        row = _figures(image, broken_all)
        assert row["verdict"] is not None and row["verdict"][0].startswith("low_quality:"), row


def test_a_gross_failure_of_one_model_is_rejected_for_disagreement(model_maps):
    for image, maps in model_maps:
        first, second = maps
        gross = {first: maps[first], second: _half_lost(maps[second])}
        row = _figures(image, gross)
        assert row["verdict"] is not None, row
        assert row["verdict"][0] == "low_quality:model_disagreement"
        assert row["model_disagreement"] > 0.35
        x0, y0, x1, y1 = map(float, row["model_disagreement_box"].split(","))
        assert y0 >= 0.45 and y1 > y0 and x1 > x0  # the lost lower half is where they differ


def test_model_disagreement_is_the_share_of_the_person_where_maps_differ():
    a = np.zeros((10, 10), np.float32)
    a[:, :6] = 1.0  # person: 60 px
    b = a.copy()
    b[:, 3:6] = 0.0  # 30 px lost
    share, box = model_disagreement([a, b])
    assert share == pytest.approx(30 / 60)
    assert box == "0.300,0.000,0.600,1.000"
    assert model_disagreement([a, a]) == (0.0, "")
    c = a.copy()
    c[:, 3:6] = 0.6  # differs by 0.4: not a disagreement
    assert model_disagreement([a, c])[0] == 0.0
