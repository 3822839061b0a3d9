"""The torch solve path (batched Jacobi CG): run on the CPU here, on a GPU where there is one."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve

from matteforge.tasks.alpha import AlphaOptions, knn_alpha_batch, knn_alpha_with_info
from matteforge.tasks.alpha.cg import resolve_solver_device, solve_system
from matteforge.tasks.alpha_torch import batched_jacobi_cg, resolve_device, torch_jacobi_cg

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _spd_system(n: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """A random graph Laplacian plus a positive diagonal (as the eliminated KNN systems are)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, 6 * n)
    cols = rng.integers(0, n, 6 * n)
    weights = rng.uniform(0.01, 1.0, 6 * n)
    keep = rows != cols
    affinity = sp.coo_matrix((weights[keep], (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    affinity = affinity + affinity.T
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    matrix = (sp.diags(degree + rng.uniform(0.05, 1.0, n)) - affinity).tocsr()
    return matrix, rng.uniform(-1, 1, n)


def _textured_disk() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :56]
    radius = np.hypot(yy - 24, xx - 28)
    inside = radius < 15
    image = np.where(inside[..., None], [210, 70, 50], [40, 100, 170]).astype(np.float64)
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    trimap = np.where(inside, 255, 0).astype(np.uint8)
    trimap[np.abs(radius - 15) < 3] = 128
    return image, trimap


def test_one_system_matches_a_direct_solve():
    matrix, rhs = _spd_system(300, seed=0)
    x, iterations, residual = torch_jacobi_cg(matrix, rhs, tol=1e-10, device="cpu")
    np.testing.assert_allclose(x, spsolve(matrix.tocsc(), rhs), atol=1e-8)
    assert 0 < iterations < 300
    assert residual < 1e-9


def test_a_batch_gives_each_system_its_own_answer_and_iteration_count():
    systems = [_spd_system(n, seed) for n, seed in [(50, 1), (400, 2), (120, 3)]]
    # A much stiffer third system needs more iterations than the others.
    systems[2] = (systems[2][0] + sp.diags(np.linspace(0, 500, 120)).tocsr(), systems[2][1])
    batch = batched_jacobi_cg(
        [m for m, _ in systems], [b for _, b in systems], tol=1e-9, device="cpu"
    )
    for (matrix, rhs), (x, iterations, residual) in zip(systems, batch, strict=True):
        np.testing.assert_allclose(x, spsolve(matrix.tocsc(), rhs), atol=1e-7)
        alone = torch_jacobi_cg(matrix, rhs, tol=1e-9, device="cpu")
        assert iterations == alone[1]
        assert residual < 1e-8
    assert len({iterations for _, iterations, _ in batch}) > 1


def test_empty_and_zero_right_hand_side_blocks_cost_nothing():
    matrix, rhs = _spd_system(80, seed=4)
    empty = sp.csr_matrix((0, 0))
    batch = batched_jacobi_cg(
        [matrix, empty, matrix], [rhs, np.zeros(0), np.zeros(80)], device="cpu"
    )
    assert batch[0][1] > 0
    assert batch[1][0].shape == (0,) and batch[1][1] == 0
    np.testing.assert_array_equal(batch[2][0], np.zeros(80))
    assert batch[2][1] == 0 and batch[2][2] == 0.0


def test_hitting_the_iteration_cap_shows_in_the_residual():
    matrix, rhs = _spd_system(500, seed=5)
    x, iterations, residual = torch_jacobi_cg(matrix, rhs, tol=1e-12, max_iter=3, device="cpu")
    assert iterations == 3
    assert residual > 1e-6
    assert residual == pytest.approx(np.linalg.norm(rhs - matrix @ x) / np.linalg.norm(rhs))


def test_starting_guess_is_used():
    matrix, rhs = _spd_system(200, seed=6)
    exact = spsolve(matrix.tocsc(), rhs)
    _, iterations, _ = torch_jacobi_cg(matrix, rhs, x0=exact, tol=1e-6, device="cpu")
    assert iterations == 0


def test_mismatched_batch_is_refused():
    matrix, rhs = _spd_system(10, seed=7)
    with pytest.raises(ValueError, match="pair up"):
        batched_jacobi_cg([matrix, matrix], [rhs], device="cpu")


def test_knn_alpha_through_torch_agrees_with_the_amg_path():
    image, trimap = _textured_disk()
    reference, info = knn_alpha_with_info(image, trimap)
    through_torch, torch_info = knn_alpha_with_info(image, trimap, AlphaOptions(device="cpu"))
    np.testing.assert_allclose(through_torch, reference, atol=2e-3)
    assert torch_info.residual <= 1e-6 < 1e-3
    # Jacobi needs more iterations than a multigrid preconditioner on the same system.
    assert torch_info.iterations > info.iterations


@pytest.mark.parametrize("device", [None, "cpu"])
def test_a_batch_of_images_matches_solving_them_one_by_one(device):
    image, trimap = _textured_disk()
    flipped_image, flipped_trimap = image[::-1, ::-1].copy(), trimap[::-1, :].copy()
    no_unknown = np.where(trimap == 255, 255, 0).astype(np.uint8)
    images = [image, flipped_image, image]
    trimaps = [trimap, flipped_trimap, no_unknown]
    batch = knn_alpha_batch(images, trimaps, AlphaOptions(device=device))
    assert len(batch) == 3
    for img, tri, (alpha, info) in zip(images, trimaps, batch, strict=True):
        alone, alone_info = knn_alpha_with_info(img, tri)
        assert alpha.dtype == np.float32 and alpha.shape == tri.shape
        np.testing.assert_allclose(alpha, alone, atol=2e-3)
        assert info.n_unknown == alone_info.n_unknown
    # The trimap without an unknown pixel is returned as is and costs no solve.
    np.testing.assert_array_equal(batch[2][0], no_unknown / 255.0)
    assert batch[2][1].iterations == 0 and batch[2][1].seconds_solve == 0.0
    assert all(info.iterations > 0 for _, info in batch[:2])


def test_a_batch_refuses_unpaired_inputs():
    image, trimap = _textured_disk()
    with pytest.raises(ValueError, match="pair up"):
        knn_alpha_batch([image, image], [trimap])


def test_solve_system_routes_to_torch_for_a_torch_device():
    matrix, rhs = _spd_system(150, seed=8)
    scipy_x, _, _ = solve_system(matrix, rhs, tol=1e-10)
    torch_x, _, _ = solve_system(matrix, rhs, tol=1e-10, device="cpu")
    np.testing.assert_allclose(torch_x, scipy_x, atol=1e-7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_auto_means_the_scipy_path_and_cuda_is_a_clear_error():
    assert resolve_solver_device("auto") is None
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


@needs_cuda
def test_knn_alpha_on_the_gpu_matches_the_cpu():
    image, trimap = _textured_disk()
    on_gpu = knn_alpha_with_info(image, trimap, AlphaOptions(device="cuda"))[0]
    on_cpu = knn_alpha_with_info(image, trimap, AlphaOptions(device="cpu"))[0]
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-5)
