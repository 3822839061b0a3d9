"""Quality figures and the acceptance rule: hand-made cases, then real photos with real masks."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from matteforge.config import BuildConfig, QualityConfig, load_config
from matteforge.tasks import trimap
from matteforge.tasks.alpha import knn_alpha_with_info
from matteforge.tasks.codec import to_uint8
from matteforge.tasks.foreground import estimate_foreground_background
from matteforge.tasks.ingest import decode_image
from matteforge.tasks.quality import (
    composite_residual,
    edge_support,
    fg_components,
    judge,
    mask_alpha_disagreement,
    quality_figures,
)
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
    assert limits["edge_support"] == ("min", 1.6)
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


def _figures(image: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    cfg = BuildConfig()
    h, w = prob.shape
    half = trimap.band_width(h, w, fraction=cfg.trimap.width_fraction)
    tri = trimap.make_trimap(prob, half_width=half)
    alpha, info = knn_alpha_with_info(image, tri, prior=prob, prior_weight=1.0)
    alpha8 = to_uint8(alpha)
    fg, bg = estimate_foreground_background(image, alpha8)
    row = dict(quality_figures(image, prob, tri, alpha8, fg, bg, half).as_row())
    row.update(unknown_fraction=trimap.unknown_fraction(tri), alpha_residual=info.residual)
    return row


@pytest.fixture(scope="module")
def rvm_masks(one_torch_thread) -> list[tuple[np.ndarray, np.ndarray]]:
    from matteforge.tasks.segment import load_segmenter

    seg = load_segmenter("rvm")
    images = [_photo("p3m_fig_c1.png"), _photo("p3m_fig_b2.png")]
    return [(image, seg.predict(image).probability) for image in images]


def test_good_masks_on_real_portraits_are_accepted(rvm_masks):
    limits = QualityConfig().limits()
    for image, prob in rvm_masks:
        row = _figures(image, prob)
        assert judge(row, limits) is None, row
        assert row["edge_support"] > 1.8 and row["fg_components"] <= 2


def _shift(prob: np.ndarray) -> np.ndarray:
    out = np.zeros_like(prob)
    dx = round(0.15 * prob.shape[1])
    out[:, dx:] = prob[:, :-dx]
    return out


def _bloat(prob: np.ndarray) -> np.ndarray:
    r = round(0.06 * max(prob.shape))
    return cv2.dilate(prob, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))


def _confetti(prob: np.ndarray) -> np.ndarray:
    h, w = prob.shape
    cells = np.random.default_rng(0).random((h // 12 + 1, w // 12 + 1)) < 0.5
    return prob * np.kron(cells, np.ones((12, 12)))[:h, :w].astype(np.float32)


@pytest.mark.parametrize("breaker", [_shift, _bloat, _confetti])
def test_deliberately_broken_masks_are_rejected(rvm_masks, breaker):
    limits = QualityConfig().limits()
    for image, prob in rvm_masks:
        row = _figures(image, breaker(prob))
        verdict = judge(row, limits)
        assert verdict is not None and verdict[0].startswith("low_quality:"), row
