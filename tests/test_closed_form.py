"""The band-only closed-form Laplacian against the definition, and its use beside KNN."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from matteforge.tasks.alpha import AlphaOptions, knn_alpha_with_info
from matteforge.tasks.closed_form import closed_form_system, window_entries


def full_laplacian(image: np.ndarray, epsilon: float) -> np.ndarray:
    """Levin et al.'s L over every 3x3 window, written out pixel pair by pixel pair."""
    h, w, _ = image.shape
    colours = image.reshape(-1, 3).astype(np.float64) / 255.0
    lap = np.zeros((h * w, h * w))
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            idx = [(y + dy) * w + (x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            win = colours[idx]
            mu = win.mean(axis=0)
            cov = (win - mu).T @ (win - mu) / 9 + epsilon / 9 * np.eye(3)
            inv = np.linalg.inv(cov)
            for a, i in enumerate(idx):
                for b, j in enumerate(idx):
                    g = (win[a] - mu) @ inv @ (win[b] - mu)
                    lap[i, j] += (a == b) - (1 + g) / 9
    return lap


def test_window_blocks_rows_sum_to_zero():
    rng = np.random.default_rng(0)
    blocks = window_entries(rng.random((5, 9, 3)), 1e-6)
    np.testing.assert_allclose(blocks.sum(axis=2), 0.0, atol=1e-9)
    np.testing.assert_allclose(blocks, blocks.transpose(0, 2, 1), atol=1e-12)


def test_eliminated_system_matches_the_full_laplacian():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (7, 8, 3)).astype(np.uint8)
    unknown = np.zeros((7, 8), bool)
    unknown[2:5, 3:6] = True
    known_alpha = rng.random((7, 8))
    matrix, rhs, anchored = closed_form_system(image, unknown, known_alpha, 1e-5)
    lap = full_laplacian(image, 1e-5)
    u, k = np.flatnonzero(unknown), np.flatnonzero(~unknown)
    np.testing.assert_allclose(matrix.toarray(), lap[np.ix_(u, u)], atol=1e-8)
    np.testing.assert_allclose(rhs, -lap[np.ix_(u, k)] @ known_alpha.ravel()[k], atol=1e-8)
    assert anchored.all()
    assert isinstance(matrix, sp.csr_matrix)


def test_closed_form_term_follows_a_soft_edge_the_colour_line_model_explains():
    # A horizontal ramp between two colours: the true alpha is the ramp itself.
    w = 40
    truth = np.clip((np.arange(w) - 12) / 16, 0, 1)
    fg, bg = np.array([230, 40, 40]), np.array([20, 60, 200])
    image = np.tile((truth[:, None] * fg + (1 - truth[:, None]) * bg)[None], (12, 1, 1))
    image = image.round().astype(np.uint8)
    trimap = np.full((12, w), 128, np.uint8)
    trimap[:, :10] = 0
    trimap[:, 30:] = 255
    knn_only, _ = knn_alpha_with_info(image, trimap)
    mixed, _ = knn_alpha_with_info(image, trimap, AlphaOptions(cf_weight=100.0))
    err_knn = np.abs(knn_only - truth[None]).mean()
    err_mixed = np.abs(mixed - truth[None]).mean()
    assert err_mixed < 0.02 and err_mixed < err_knn


def test_cf_weight_needs_exact_elimination():
    image = np.zeros((6, 6, 3), np.uint8)
    trimap = np.full((6, 6), 128, np.uint8)
    trimap[:, 0], trimap[:, -1] = 0, 255
    with pytest.raises(ValueError, match="cf_weight"):
        knn_alpha_with_info(image, trimap, AlphaOptions(cf_weight=1.0, constraint_weight=100.0))


def test_per_pixel_prior_weight_pulls_only_where_it_is_set():
    image = np.full((1, 12, 3), 128, np.uint8)
    trimap = np.array([[0] * 2 + [128] * 8 + [255] * 2], np.uint8)
    prior = np.full((1, 12), 0.9)
    weights = np.zeros((1, 12))
    weights[0, 2] = 1000.0  # only the first unknown pixel is held to the prior
    alpha, _ = knn_alpha_with_info(image, trimap, AlphaOptions(n_neighbors=2, band_radius=10),
                                   prior=prior, prior_weight=weights)
    assert alpha[0, 2] == pytest.approx(0.9, abs=0.01)
    with pytest.raises(ValueError, match="shape"):
        knn_alpha_with_info(image, trimap, prior=prior, prior_weight=np.ones((2, 2)))
