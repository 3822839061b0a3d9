"""The band-only closed-form Laplacian against the definition, and its use beside KNN."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from matteforge.tasks import closed_form
from matteforge.tasks.alpha import AlphaOptions, knn_alpha_with_info
from matteforge.tasks.closed_form import closed_form_system, window_entries


def full_laplacian(image: np.ndarray, epsilon: float) -> np.ndarray:
    """Levin et al.'s L over every 3x3 window, written out pixel pair by pixel pair."""
    return laplacian_and_pattern(image, epsilon)[0]


def laplacian_and_pattern(image: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """``full_laplacian`` and which pixel pairs share a window (L's pattern, zeros included)."""
    h, w, _ = image.shape
    scale = 1 / 255.0 if image.dtype == np.uint8 else 1.0
    colours = image.reshape(-1, 3).astype(np.float64) * scale
    lap = np.zeros((h * w, h * w))
    shared = np.zeros((h * w, h * w), bool)
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
                    shared[i, j] = True
    return lap, shared


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


def _random_case(shape: tuple[int, int], unknown: str, seed: int, floats: bool = False):
    """A random image and known alpha, and an unknown mask of the named kind."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = rng.random((h, w, 3)) if floats else rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    if unknown == "all":
        mask = np.ones(shape, bool)
    elif unknown == "none":
        mask = np.zeros(shape, bool)
    elif unknown == "border":  # unknown pixels on every edge and in the corners
        mask = np.zeros(shape, bool)
        mask[0, :] = mask[:, -1] = True
        mask[-1, : w // 2] = mask[h // 2 :, 0] = True
    else:
        mask = rng.random(shape) < 0.45
    return image, mask, rng.random(shape)


@pytest.mark.parametrize(
    ("shape", "unknown", "floats"),
    [
        ((9, 11), "random", False),
        ((9, 11), "border", False),
        ((8, 6), "random", True),
        ((6, 7), "all", False),
        ((6, 7), "none", False),
        ((3, 3), "all", False),
        ((3, 10), "border", False),
        ((10, 3), "random", False),
        ((1, 9), "all", False),
        ((9, 1), "random", False),
        ((2, 6), "all", False),
    ],
)
def test_slot_assembly_matches_the_laplacian_written_out(shape, unknown, floats):
    image, is_unknown, known_alpha = _random_case(shape, unknown, seed=sum(shape), floats=floats)
    matrix, rhs, anchored = closed_form_system(image, is_unknown, known_alpha, 1e-4)
    lap, shared = laplacian_and_pattern(image, 1e-4)
    u, k = np.flatnonzero(is_unknown), np.flatnonzero(~is_unknown)
    assert isinstance(matrix, sp.csr_matrix) and matrix.shape == (len(u), len(u))
    # Every pair of unknown pixels sharing a window is stored, zero or not, once, in order.
    stored = np.zeros(matrix.shape, bool)
    stored[np.repeat(np.arange(len(u)), np.diff(matrix.indptr)), matrix.indices] = True
    np.testing.assert_array_equal(stored, shared[np.ix_(u, u)])
    assert matrix.nnz == stored.sum() and matrix.has_sorted_indices
    np.testing.assert_allclose(matrix.toarray(), lap[np.ix_(u, u)], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rhs, -lap[np.ix_(u, k)] @ known_alpha.ravel()[k], atol=1e-10)
    np.testing.assert_array_equal(anchored, shared[np.ix_(u, k)].any(axis=1))


def test_known_alpha_is_read_only_at_known_pixels():
    image, is_unknown, known_alpha = _random_case((8, 9), "random", seed=4)
    garbled = np.where(is_unknown, np.nan, known_alpha)
    _, rhs, _ = closed_form_system(image, is_unknown, garbled)
    np.testing.assert_array_equal(rhs, closed_form_system(image, is_unknown, known_alpha)[1])
    # A boolean map (the foreground mask, as the alpha system passes it) reads as 0 and 1.
    foreground = known_alpha > 0.5
    np.testing.assert_array_equal(
        closed_form_system(image, is_unknown, foreground)[1],
        closed_form_system(image, is_unknown, foreground.astype(np.float64))[1],
    )


def test_blocks_of_windows_sum_like_one_block(monkeypatch):
    # Rows shared by windows of two blocks (and the spare row of known pixels) add up right.
    image, is_unknown, known_alpha = _random_case((20, 23), "random", seed=5)
    whole = closed_form_system(image, is_unknown, known_alpha)
    monkeypatch.setattr(closed_form, "_CHUNK", 7)
    blocks = closed_form_system(image, is_unknown, known_alpha)
    np.testing.assert_array_equal(blocks[0].indptr, whole[0].indptr)
    np.testing.assert_array_equal(blocks[0].indices, whole[0].indices)
    np.testing.assert_allclose(blocks[0].data, whole[0].data, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(blocks[1], whole[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(blocks[2], whole[2])


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
