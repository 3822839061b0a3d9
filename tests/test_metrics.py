"""Matting metrics against cases small enough to work out by hand, plus their invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matteforge.metrics import (
    connectivity_error,
    connectivity_levels,
    gaussian_derivative_kernels,
    gradient_error,
    gradient_magnitude,
    mse,
    sad,
    unknown_region,
)

PRED = np.array([[0.0, 0.5], [1.0, 1.0]])
GT = np.array([[0.0, 1.0], [0.5, 1.0]])
METRICS = [sad, mse, gradient_error, connectivity_error]


def _soft_disk(size: int = 48, radius: float = 14.0, softness: float = 3.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    return np.clip((radius - r) / softness + 0.5, 0, 1)


# --- SAD and MSE ---------------------------------------------------------------------------------


def test_sad_is_absolute_differences_in_thousands():
    # |0-0| + |0.5-1| + |1-0.5| + |1-1| = 1
    assert sad(PRED, GT) == pytest.approx(1e-3)


def test_sad_counts_only_the_region():
    top_row = np.array([[True, True], [False, False]])
    assert sad(PRED, GT, top_row) == pytest.approx(0.5e-3)


def test_mse_is_the_mean_over_the_region():
    assert mse(PRED, GT) == pytest.approx((0.25 + 0.25) / 4)
    diagonal = np.array([[False, True], [True, False]])
    assert mse(PRED, GT, diagonal) == pytest.approx(0.25)


def test_mse_of_an_empty_region_is_zero():
    assert mse(PRED, GT, np.zeros((2, 2), bool)) == 0.0


def test_uint8_mattes_are_read_as_0_to_255():
    pred8 = np.array([[0, 51], [255, 255]], np.uint8)  # 51/255 = 0.2
    gt8 = np.array([[0, 255], [102, 255]], np.uint8)  # 102/255 = 0.4
    assert sad(pred8, gt8) == pytest.approx((0.8 + 0.6) / 1000)
    assert mse(pred8, gt8) == pytest.approx((0.64 + 0.36) / 4)
    disk = _soft_disk()
    disk8 = np.round(disk * 255).astype(np.uint8)
    for metric in METRICS:
        assert metric(disk8, disk8.T) == pytest.approx(metric(disk8 / 255.0, disk8.T / 255.0))


def test_unknown_region_is_the_grey_of_the_trimap():
    trimap = np.array([[0, 128, 255, 127]], np.uint8)
    assert unknown_region(trimap).tolist() == [[False, True, False, False]]


@pytest.mark.parametrize("metric", METRICS)
def test_identical_mattes_score_zero(metric):
    disk = _soft_disk()
    assert metric(disk, disk) == 0.0
    assert metric(disk, disk, disk > 0.3) == 0.0


@pytest.mark.parametrize("metric", METRICS)
def test_metrics_are_symmetric(metric):
    disk = _soft_disk()
    other = _soft_disk(radius=12.0, softness=6.0)
    assert metric(disk, other) == pytest.approx(metric(other, disk))


@pytest.mark.parametrize("metric", [sad, mse])
def test_error_grows_as_the_prediction_moves_away(metric):
    gt = _soft_disk()
    noise = np.random.default_rng(0).uniform(-1, 1, gt.shape)
    errors = [metric(np.clip(gt + t * noise, 0, 1), gt) for t in (0.05, 0.1, 0.2, 0.4)]
    assert errors == sorted(errors) and errors[0] > 0


@pytest.mark.parametrize("metric", [sad, gradient_error, connectivity_error])
def test_a_larger_region_never_scores_less(metric):
    gt = _soft_disk()
    pred = _soft_disk(radius=12.0, softness=6.0)
    small = np.zeros(gt.shape, bool)
    small[10:30, 10:30] = True
    assert metric(pred, gt, small) <= metric(pred, gt) + 1e-15


@pytest.mark.parametrize("metric", METRICS)
def test_mismatched_shapes_are_rejected(metric):
    with pytest.raises(ValueError):
        metric(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError):
        metric(np.zeros((3, 3)), np.zeros((3, 3)), np.ones((2, 2), bool))


def test_integer_types_other_than_uint8_are_rejected():
    with pytest.raises(TypeError):
        sad(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32))


# --- Gradient ------------------------------------------------------------------------------------


def test_gradient_kernels_for_sigma_1_4_are_9x9_unit_energy_first_derivatives():
    # Half-size: ceil(1.4 · sqrt(-2 ln(sqrt(2π) · 1.4 · 0.01))) = ceil(3.62) = 4.
    kx, ky = gaussian_derivative_kernels(1.4)
    assert kx.shape == ky.shape == (9, 9)
    assert np.sum(kx**2) == pytest.approx(1.0)
    np.testing.assert_allclose(ky, kx.T)
    np.testing.assert_allclose(kx, -kx[:, ::-1])  # odd along x
    np.testing.assert_allclose(kx, kx[::-1, :])  # even across
    assert kx.sum() == pytest.approx(0.0, abs=1e-15)


def test_gradient_of_a_ramp_is_constant_inside_and_matches_the_closed_form():
    # α = column / 39 on a 40x40 image. Inside (4 px from the sides), convolving a linear ramp
    # with c·G(i)·G'(j) gives c · ΣG · Σ_j j·G'(j) / 39 in magnitude, with c the energy norm.
    sigma = 1.4
    u = np.arange(-4, 5, dtype=np.float64)
    g = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dg = -u * g / sigma**2
    c = 1 / math.sqrt(np.sum(g**2) * np.sum(dg**2))
    expected = c * g.sum() * abs(np.sum(u * dg)) / 39
    ramp = np.tile(np.arange(40) / 39, (40, 1))
    magnitude = gradient_magnitude(ramp, sigma)
    np.testing.assert_allclose(magnitude[4:-4, 4:-4], expected, rtol=1e-10)
    # And the error against a flat matte over the interior is Σ expected² / 1000.
    interior = np.zeros((40, 40), bool)
    interior[4:-4, 4:-4] = True
    assert gradient_error(np.zeros((40, 40)), ramp, interior) == pytest.approx(
        32 * 32 * expected**2 / 1000
    )


def test_gradient_error_ignores_contrast_because_mattes_are_min_max_normalised():
    gt = _soft_disk()
    assert gradient_error(0.5 * gt + 0.2, gt) == pytest.approx(0.0, abs=1e-20)
    assert sad(0.5 * gt + 0.2, gt) > 0


def test_gradient_error_of_a_constant_prediction_is_the_gt_gradient_energy():
    gt = _soft_disk()
    assert gradient_error(np.full(gt.shape, 0.3), gt) == pytest.approx(
        np.sum(gradient_magnitude(gt) ** 2) / 1000
    )


def test_blurrier_prediction_has_larger_gradient_error():
    gt = _soft_disk(softness=1.0)
    errors = [gradient_error(_soft_disk(softness=s), gt) for s in (1.5, 3.0, 6.0)]
    assert errors == sorted(errors) and errors[0] > 0


# --- Connectivity --------------------------------------------------------------------------------


def test_connectivity_of_an_island_the_gt_does_not_have():
    gt = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    # Pixel 4 is opaque in pred only: it is never in the common component, so ℓ = 0 there,
    # d = 1 and φ_pred = 0 against φ_gt = 1.
    assert connectivity_error(np.array([[1.0, 1.0, 0.0, 0.0, 1.0]]), gt) == pytest.approx(1e-3)
    # d = 0.2 ≥ 0.15 counts in part: φ = 0.8.
    assert connectivity_error(np.array([[1.0, 1.0, 0.0, 0.0, 0.2]]), gt) == pytest.approx(0.2e-3)
    # d = 0.1 < 0.15 is forgiven.
    assert connectivity_error(np.array([[1.0, 1.0, 0.0, 0.0, 0.1]]), gt) == 0.0


def test_connectivity_levels_and_error_worked_by_hand():
    pred = np.array([[1.0, 0.35, 0.8]])
    gt = np.array([[0.9, 0.55, 1.0]])
    # t = 0.1..0.3: all three pixels are in both mattes, one component.
    # t = 0.4: pixel 1 leaves (pred 0.35), leaving two single pixels; the tie goes to the first
    #   in column-major order (pixel 0), so pixels 1 and 2 get ℓ = 0.3.
    # t = 1.0: pixel 0 leaves (gt 0.9): ℓ = 0.9.
    np.testing.assert_allclose(connectivity_levels(pred, gt), [[0.9, 0.3, 0.3]])
    # φ: pixel 0: d = 0.1 and 0.0 → 1, 1; pixel 1: d = 0.05 and 0.25 → 1, 0.75;
    #    pixel 2: d = 0.5 and 0.7 → 0.5, 0.3.  Σ|Δφ| = 0.25 + 0.2 = 0.45.
    assert connectivity_error(pred, gt) == pytest.approx(0.45e-3)


def test_connectivity_thresholds_hit_exact_uint8_levels_like_matlab():
    # 153/255 is exactly 0.6: it must still count at threshold 0.6 (k·0.1 would be 0.6000…01).
    matte = np.array([[255, 153]], np.uint8)
    np.testing.assert_allclose(connectivity_levels(matte / 255.0, matte / 255.0), [[1.0, 0.6]])


def test_connectivity_uses_4_neighbours():
    # A diagonal pair is two components under 4-connectivity: the lower-left pixel (first in
    # column-major order) wins the tie, and the other drops at the first threshold.
    diagonal = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(connectivity_levels(diagonal, diagonal), [[0.0, 0.0], [1.0, 0.0]])


def test_connectivity_error_counts_only_the_region():
    pred = np.array([[1.0, 1.0, 0.0, 0.0, 1.0]])
    gt = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    mask = np.array([[True, True, True, True, False]])
    assert connectivity_error(pred, gt, mask) == 0.0


def test_connectivity_step_changes_the_threshold_grid():
    pred = np.array([[1.0, 0.35, 0.8]])
    gt = np.array([[0.9, 0.55, 1.0]])
    # With step 0.5 the thresholds are 0, 0.5, 1: pixel 1 leaves at 0.5 (ℓ = 0), so does pixel
    # 2 (tie lost), pixel 0 at 1.0 (ℓ = 0.5).
    np.testing.assert_allclose(connectivity_levels(pred, gt, step=0.5), [[0.5, 0.0, 0.0]])
