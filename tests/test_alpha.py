"""KNN matting on the unknown band: each piece alone, then the whole on real portraits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, cg

from matteforge.metrics import sad, unknown_region
from matteforge.tasks.alpha import AlphaInfo, AlphaOptions, knn_alpha_with_info
from matteforge.tasks.alpha.amg import ruge_stuben_hierarchy, strict_upper, v_cycle
from matteforge.tasks.alpha.cg import preconditioned_cg, solve_system
from matteforge.tasks.alpha.graph import (
    floating_nodes,
    graph_components,
    graph_laplacian,
    knn_affinity,
    knn_features,
    knn_weights,
    nearest_neighbors,
)
from matteforge.tasks.alpha.system import (
    band_mask,
    build_matting_system,
    default_band_radius,
    drop_components,
    eliminated_knn_system,
    eliminated_system,
    soft_constrained_system,
    split_trimap,
)
from matteforge.tasks.closed_form import closed_form_system

P3M = Path(__file__).resolve().parents[2] / "shared" / "data" / "p3m_figure_gt"


def _alpha(image: np.ndarray, trimap: np.ndarray, prior=None, **options) -> np.ndarray:
    """The alpha alone; ``options`` are ``AlphaOptions`` fields."""
    return knn_alpha_with_info(image, trimap, AlphaOptions(**options), prior)[0]


def _path_laplacian(n: int) -> sp.csr_matrix:
    """Laplacian of a chain of n nodes with unit edges."""
    off = np.ones(n - 1)
    affinity = sp.diags([off, off], [-1, 1]).tocsr()
    return graph_laplacian(affinity)


def _synthetic(h: int = 40, w: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured disk on a textured background, with a trimap band around the disk edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - h / 2, xx - w / 2)
    inside = radius < min(h, w) / 3
    image = np.where(inside[..., None], [200, 60, 40], [30, 90, 180]).astype(np.float64)
    image += rng.normal(0, 12, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    trimap = np.where(inside, 255, 0).astype(np.uint8)
    trimap[np.abs(radius - min(h, w) / 3) < 3] = 128
    return image, trimap


# --- pieces --------------------------------------------------------------------------------------


def test_split_trimap_treats_every_grey_as_unknown():
    trimap = np.array([[0, 1, 128, 254, 255]], np.uint8)
    fg, unknown = split_trimap(trimap)
    assert fg.tolist() == [[False, False, False, False, True]]
    assert unknown.tolist() == [[False, True, True, True, False]]


def test_default_band_radius_is_half_a_percent_of_the_diagonal_but_at_least_three():
    assert default_band_radius((30, 40)) == 3
    assert default_band_radius((600, 800)) == 5
    assert default_band_radius((3000, 4000, 3)) == 25


def test_band_mask_is_the_unknown_grown_by_the_radius():
    unknown = np.zeros((11, 11), bool)
    unknown[5, 5] = True
    band = band_mask(unknown, 2)
    # Offsets within distance 2: the centre, 4 at 1, 4 diagonals at √2, 4 at 2; (2, 1) is √5.
    assert band.sum() == 13
    assert band[5, 3] and band[6, 6] and not band[6, 7]
    assert np.array_equal(band, band.T) and np.array_equal(band, band[::-1])
    assert np.array_equal(band_mask(unknown, 0), unknown)


def test_band_mask_of_separate_regions_keeps_them_separate():
    unknown = np.zeros((5, 30), bool)
    unknown[2, 2] = unknown[2, 27] = True
    band = band_mask(unknown, 3)
    assert band[:, :6].sum() > 0 and band[:, 24:].sum() > 0
    assert not band[:, 8:22].any()


def test_knn_features_are_colour_in_unit_range_and_coordinates_over_the_diagonal():
    image = np.zeros((3, 4, 3), np.uint8)
    image[1, 3] = [255, 51, 0]
    features = knn_features(image, np.array([7]), spatial_weight=2.0)  # row 1, column 3
    # The diagonal of a 3x4 image is 5, so one pixel is 2/5 = 0.4 in feature units.
    np.testing.assert_allclose(features, [[1.0, 0.2, 0.0, 3 * 0.4, 1 * 0.4]], rtol=1e-6)
    assert features.dtype == np.float32


def test_nearest_neighbors_never_lists_a_point_as_its_own_neighbour():
    features = np.zeros((6, 5), np.float32)  # all duplicates: self need not come first
    features[5] = 1.0
    distances, indices = nearest_neighbors(features, 3)
    assert indices.shape == distances.shape == (6, 3)
    assert not (indices == np.arange(6)[:, None]).any()
    assert (distances[:5] == 0).all()


def test_nearest_neighbors_with_fewer_points_than_k_uses_all_others():
    _, indices = nearest_neighbors(np.eye(3, 5, dtype=np.float32), 10)
    assert indices.shape == (3, 2)
    assert sorted(indices[0]) == [1, 2]


def test_knn_affinity_is_symmetric_without_self_loops_and_weights_in_kernel_range():
    rng = np.random.default_rng(1)
    affinity = knn_affinity(rng.random((200, 5)).astype(np.float32), n_neighbors=10)
    assert abs(affinity - affinity.T).max() == 0
    assert affinity.diagonal().max() == 0
    # One direction has weight in [0.01, 1]; a pair that picks each other has up to 2.
    assert affinity.data.min() >= 0.01 - 1e-12 and affinity.data.max() <= 2.0
    # Every node keeps at least its own 10 edges.
    assert (np.diff(affinity.indptr) >= 10).all()


def test_knn_affinity_gives_nearer_neighbours_more_weight():
    features = np.zeros((4, 5), np.float32)
    features[:, 0] = [0.0, 0.1, 0.3, 1.0]
    affinity = knn_affinity(features, n_neighbors=1).toarray()
    # 0 and 1 pick each other (distance 0.1): doubled; 2 → 1 at 0.2; 3 → 2 at 0.7 hits the floor.
    assert affinity[0, 1] > affinity[1, 2] > affinity[2, 3]
    assert affinity[2, 3] == pytest.approx(0.01)


def test_graph_laplacian_rows_sum_to_zero_and_it_is_positive_semidefinite():
    rng = np.random.default_rng(2)
    affinity = knn_affinity(rng.random((60, 5)).astype(np.float32), n_neighbors=5)
    laplacian = graph_laplacian(affinity)
    np.testing.assert_allclose(laplacian @ np.ones(60), 0, atol=1e-12)
    assert np.linalg.eigvalsh(laplacian.toarray()).min() > -1e-9
    assert abs(laplacian - laplacian.T).max() == 0


def test_floating_nodes_are_components_without_a_known_node():
    # Two chains 0-1-2 and 3-4; only node 0 is known.
    affinity = sp.csr_matrix(([1.0] * 6, ([0, 1, 1, 2, 3, 4], [1, 0, 2, 1, 4, 3])), shape=(5, 5))
    known = np.array([True, False, False, False, False])
    assert floating_nodes(affinity, known).tolist() == [False, False, False, True, True]


def test_eliminated_system_of_a_chain_is_the_tridiagonal_second_difference():
    laplacian = _path_laplacian(5)
    is_unknown = np.array([False, True, True, True, False])
    matrix, rhs = eliminated_system(laplacian, is_unknown, np.array([0.0, 1.0]), np.full(3, 0.5))
    np.testing.assert_array_equal(matrix.toarray(), [[2, -1, 0], [-1, 2, -1], [0, -1, 2]])
    np.testing.assert_array_equal(rhs, [0, 0, 1])


def test_eliminated_system_prior_term_adds_to_diagonal_and_rhs():
    laplacian = _path_laplacian(3)
    is_unknown = np.array([False, True, False])
    matrix, rhs = eliminated_system(laplacian, is_unknown, np.array([0.0, 1.0]), [0.9], 2.0)
    assert matrix.toarray().tolist() == [[4.0]]
    assert rhs.tolist() == pytest.approx([1.0 + 2.0 * 0.9])


def test_soft_constraints_approach_exact_elimination_as_lambda_grows():
    laplacian = _path_laplacian(7)
    is_unknown = np.array([False, True, True, True, True, True, False])
    values = np.array([0, 0, 0, 0, 0, 0, 1.0])
    prior = np.full(7, 0.5)
    exact = np.linspace(0, 1, 7)[1:-1]
    errors = []
    for lam in (1.0, 100.0, 1e4):
        matrix, rhs = soft_constrained_system(laplacian, is_unknown, values, lam, prior)
        errors.append(np.abs(np.linalg.solve(matrix.toarray(), rhs)[1:-1] - exact).max())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


def test_jacobi_solve_solves_a_chain_to_the_linear_ramp():
    n = 50
    laplacian = _path_laplacian(n)
    is_unknown = np.ones(n, bool)
    is_unknown[[0, -1]] = False
    matrix, rhs = eliminated_system(laplacian, is_unknown, np.array([0.0, 1.0]), np.zeros(n - 2))
    x, iterations, residual = solve_system(
        matrix, rhs, np.full(n - 2, 0.5), tol=1e-10, preconditioner="jacobi"
    )
    np.testing.assert_allclose(x, np.linspace(0, 1, n)[1:-1], atol=1e-8)
    assert 0 < iterations <= n and residual <= 1e-10


def test_jacobi_solve_reports_non_convergence_instead_of_raising():
    matrix, rhs = eliminated_system(
        _path_laplacian(200), np.r_[False, np.ones(198, bool), False], np.ones(2), np.zeros(198)
    )
    _, iterations, residual = solve_system(
        matrix, rhs, None, tol=1e-12, max_iter=3, preconditioner="jacobi"
    )
    assert iterations == 3 and residual > 1e-3


def test_jacobi_solve_zero_rhs_gives_zero():
    x, _, residual = solve_system(
        _path_laplacian(4) + sp.identity(4), np.zeros(4), preconditioner="jacobi"
    )
    assert not x.any() and residual == 0.0


def test_nearest_neighbors_in_chunks_match_one_query():
    rng = np.random.default_rng(5)
    features = rng.random((500, 5)).astype(np.float32)
    whole = nearest_neighbors(features, 6)
    chunked = nearest_neighbors(features, 6, chunk=37)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])
    assert whole[0].dtype == np.float32 and whole[1].dtype == np.int32


@pytest.mark.parametrize("prior_weight", [0.0, 0.7])
def test_eliminated_knn_system_matches_the_laplacian_route(prior_weight):
    rng = np.random.default_rng(6)
    features = rng.random((300, 5)).astype(np.float32)
    is_unknown = rng.random(300) < 0.6
    node_alpha = (rng.random(300) < 0.5).astype(np.float64)
    prior = rng.random(300)
    distances, indices = nearest_neighbors(features, 8)
    matrix, rhs, floating = eliminated_knn_system(
        indices, knn_weights(distances), is_unknown, node_alpha, prior, prior_weight
    )
    assert not floating.any()
    laplacian = graph_laplacian(knn_affinity(features, 8))
    expected, expected_rhs = eliminated_system(
        laplacian, is_unknown, node_alpha[~is_unknown], prior[is_unknown], prior_weight
    )
    np.testing.assert_allclose(matrix.toarray(), expected.toarray(), atol=1e-12)
    np.testing.assert_allclose(rhs, expected_rhs, atol=1e-12)


def test_eliminated_knn_system_leaves_out_components_without_a_known_node():
    # Two chains 0-1-2 and 3-4 as K = 1 lists; only node 0 is known.
    indices = np.array([[1], [2], [1], [4], [3]], np.int32)
    weights = np.ones((5, 1), np.float32)
    is_unknown = np.array([False, True, True, True, True])
    matrix, rhs, floating = eliminated_knn_system(
        indices, weights, is_unknown, np.array([1.0, 0, 0, 0, 0]), np.full(5, 0.5)
    )
    assert floating.tolist() == [False, False, False, True, True]
    # Unknowns 1 and 2: edge 0-1 once (1), edge 1-2 picked both ways (2).
    np.testing.assert_array_equal(matrix.toarray(), [[3, -2], [-2, 2]])
    np.testing.assert_array_equal(rhs, [1, 0])


def _poisson(n: int) -> sp.csr_matrix:
    """2-D five-point Laplacian on an n x n grid with Dirichlet boundary (SPD)."""
    chain = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])
    return (sp.kron(chain, sp.identity(n)) + sp.kron(sp.identity(n), chain)).tocsr()


def test_v_cycle_preconditioner_is_symmetric():
    pyamg = pytest.importorskip("pyamg")
    matrix = _poisson(30)
    hierarchy = pyamg.ruge_stuben_solver(matrix, max_coarse=50)
    assert len(hierarchy.levels) > 2
    operator = v_cycle(hierarchy)
    rng = np.random.default_rng(7)
    u, v = rng.standard_normal((2, matrix.shape[0]))
    assert u @ operator.matvec(v) == pytest.approx(v @ operator.matvec(u), rel=1e-10)


def test_amg_solve_solves_a_chain_to_the_linear_ramp_in_few_iterations():
    pytest.importorskip("pyamg")
    n = 400
    is_unknown = np.ones(n, bool)
    is_unknown[[0, -1]] = False
    matrix, rhs = eliminated_system(
        _path_laplacian(n), is_unknown, np.array([0.0, 1.0]), np.zeros(n - 2)
    )
    x, iterations, residual = solve_system(
        matrix, rhs, np.full(n - 2, 0.5), tol=1e-10, preconditioner="amg"
    )
    np.testing.assert_allclose(x, np.linspace(0, 1, n)[1:-1], atol=1e-8)
    # Jacobi CG needs ~n/2 iterations here.
    assert 0 < iterations <= 20 and residual <= 1e-10


def test_amg_solve_zero_rhs_gives_zero():
    pytest.importorskip("pyamg")
    x, iterations, residual = solve_system(
        _path_laplacian(4) + sp.identity(4), np.zeros(4), preconditioner="amg"
    )
    assert not x.any() and iterations == 0 and residual == 0.0


def test_eliminated_knn_system_with_some_sources_matches_the_laplacian_route():
    # Known nodes among the sources and unknown nodes without a list take the general path.
    rng = np.random.default_rng(8)
    n, k = 200, 6
    features = rng.random((n, 5)).astype(np.float32)
    is_unknown = rng.random(n) < 0.6
    node_alpha = rng.random(n)
    sources = np.flatnonzero(rng.random(n) < 0.7)
    distances, indices = nearest_neighbors(features, k, queries=sources)
    weights = knn_weights(distances)
    matrix, rhs, floating = eliminated_knn_system(
        indices, weights, is_unknown, node_alpha, np.zeros(n), 0.3, sources
    )
    assert not floating.any()
    rows = np.repeat(sources, k)
    w = sp.coo_matrix((weights.ravel().astype(np.float64), (rows, indices.ravel())), (n, n))
    laplacian = graph_laplacian((w + w.T).tocsr())
    expected, expected_rhs = eliminated_system(
        laplacian, is_unknown, node_alpha[~is_unknown], np.zeros(is_unknown.sum()), 0.3
    )
    np.testing.assert_allclose(matrix.toarray(), expected.toarray(), atol=1e-12)
    np.testing.assert_allclose(rhs, expected_rhs, atol=1e-12)


def test_graph_components_and_dropping_them_match_scipy():
    rng = np.random.default_rng(9)
    n = 300
    rows, cols = rng.integers(0, n, (2, 200))
    graph = sp.coo_matrix((np.ones(200), (rows, cols)), (n, n)).tocsr()
    graph = (graph + graph.T + sp.identity(n)).tocsr()
    labels = graph_components(graph)
    count, expected = connected_components(graph, directed=False)
    # Same partition: each label pairs with exactly one scipy label.
    assert labels.max() + 1 == count
    assert len(set(zip(labels.tolist(), expected.tolist(), strict=True))) == count
    keep = np.isin(labels, labels[rng.integers(0, n, 40)])
    np.testing.assert_array_equal(
        drop_components(graph, keep).toarray(), graph[keep][:, keep].toarray()
    )


def test_strict_upper_is_the_triangle_right_of_the_diagonal():
    matrix = sp.random(40, 40, density=0.2, random_state=3, format="csr") + sp.identity(40)
    np.testing.assert_array_equal(
        strict_upper(matrix.tocsr()).toarray(), np.triu(matrix.toarray(), k=1)
    )


def test_ruge_stuben_hierarchy_matches_pyamgs_direct_interpolation():
    pyamg = pytest.importorskip("pyamg")
    matrix = _poisson(40)
    ours = ruge_stuben_hierarchy(matrix)
    theirs = pyamg.ruge_stuben_solver(matrix, interpolation="direct")
    assert [lv.A.shape for lv in ours.levels] == [lv.A.shape for lv in theirs.levels]
    for mine, reference in zip(ours.levels[:-1], theirs.levels[:-1], strict=True):
        np.testing.assert_allclose(mine.P.toarray(), reference.P.toarray(), atol=1e-12)
    np.testing.assert_allclose(
        ours.levels[-1].A.toarray(), theirs.levels[-1].A.toarray(), atol=1e-10
    )


def test_v_cycle_of_our_hierarchy_is_symmetric_and_preconditions_well():
    pytest.importorskip("pyamg")
    matrix = _poisson(30)
    operator = v_cycle(ruge_stuben_hierarchy(matrix, max_coarse=50))
    rng = np.random.default_rng(7)
    u, v = rng.standard_normal((2, matrix.shape[0]))
    assert u @ operator.matvec(v) == pytest.approx(v @ operator.matvec(u), rel=1e-10)
    x, iterations, residual = preconditioned_cg(matrix, u, None, 1e-8, 100, operator)
    assert iterations <= 12 and residual <= 1e-8
    np.testing.assert_allclose(matrix @ x, u, atol=1e-6)


def test_the_v_cycle_holds_its_hierarchy_in_no_reference_cycle():
    """Freed when the solve lets go, not at the next full garbage collection (0.14 s at 1 MP in
    a build's process; ~0.5 GB of hierarchy at 12 MP held meanwhile)."""
    import gc
    import weakref

    pytest.importorskip("pyamg")
    hierarchy = ruge_stuben_hierarchy(_poisson(30), max_coarse=50)
    assert len(hierarchy.levels) > 2
    finest = weakref.ref(hierarchy.levels[0].A)
    operator = v_cycle(hierarchy)
    operator.matvec(np.ones(900))
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del hierarchy, operator
        assert finest() is None
    finally:
        if was_enabled:
            gc.enable()


def test_preconditioned_cg_follows_scipys_cg():
    matrix = _poisson(20) + 0.1 * sp.identity(400, format="csr")
    rhs = np.random.default_rng(4).standard_normal(400)
    inverse_diagonal = 1.0 / matrix.diagonal()
    jacobi = LinearOperator(matrix.shape, matvec=lambda r: inverse_diagonal * r)
    steps = []
    expected, _ = cg(
        matrix, rhs, x0=np.full(400, 0.5), rtol=1e-8, M=jacobi, callback=lambda _: steps.append(1)
    )
    x, iterations, residual = preconditioned_cg(matrix, rhs, np.full(400, 0.5), 1e-8, 1000, jacobi)
    assert iterations == len(steps) and residual <= 1e-8
    np.testing.assert_allclose(x, expected, atol=1e-10)


def test_solve_system_rejects_unknown_preconditioner():
    with pytest.raises(ValueError):
        solve_system(sp.identity(3, format="csr"), np.ones(3), None, 1e-6, 10, "ilu")


# --- the whole function --------------------------------------------------------------------------


def test_one_row_between_known_ends_is_a_ramp_set_by_the_link_weights():
    image = np.full((1, 16, 3), 90, np.uint8)
    trimap = np.array([[0] * 3 + [128] * 10 + [255] * 3], np.uint8)
    # With constant colour and K = 2 the graph is the chain of pixels from the last background
    # pixel (index 2) to the first foreground one (index 13). Unknown pixels pick each other,
    # so inner links count twice, while the two end links are picked from one side only (known
    # pixels do not search): the chain is a resistor ladder of lengths 2, 1 × 9, 2.
    alpha = _alpha(image, trimap, n_neighbors=2, band_radius=20, tol=1e-10)
    np.testing.assert_allclose(alpha[0, 3:13], np.arange(2, 12) / 13, atol=1e-6)


def test_finite_constraint_weight_keeps_the_papers_full_graph():
    image = np.full((1, 16, 3), 90, np.uint8)
    trimap = np.array([[0] * 3 + [128] * 10 + [255] * 3], np.uint8)
    # Every band pixel searches there, so every link of the chain counts twice: a linear ramp
    # (up to the soft constraint's pull of 1/λ on the known ends).
    alpha = _alpha(
        image, trimap, n_neighbors=2, band_radius=20, tol=1e-12, constraint_weight=1e8
    )
    np.testing.assert_allclose(alpha[0, 3:13], (np.arange(3, 13) - 2) / 11, atol=1e-4)


def test_known_pixels_are_exact_and_output_is_float32_in_unit_range():
    image, trimap = _synthetic()
    alpha, info = knn_alpha_with_info(image, trimap)
    assert alpha.dtype == np.float32 and alpha.shape == trimap.shape
    assert (alpha[trimap == 255] == 1).all() and (alpha[trimap == 0] == 0).all()
    assert alpha.min() >= 0 and alpha.max() <= 1
    assert info.n_unknown == (trimap == 128).sum()
    assert info.iterations > 0 and info.residual <= 1e-6


def test_unknown_band_takes_its_colour_side():
    image, trimap = _synthetic()
    alpha = _alpha(image, trimap)
    h, w = trimap.shape
    yy, xx = np.mgrid[:h, :w]
    inside = np.hypot(yy - h / 2, xx - w / 2) < min(h, w) / 3
    band = trimap == 128
    # The disk has a hard edge, so band pixels should go to the side whose colour they have.
    assert np.abs(alpha[band] - inside[band]).mean() < 0.1


def test_trimap_without_unknown_is_returned_as_alpha():
    image, trimap = _synthetic()
    trimap[trimap == 128] = 255
    alpha, info = knn_alpha_with_info(image, trimap)
    assert alpha.dtype == np.float32
    np.testing.assert_array_equal(alpha, trimap / 255.0)
    assert info == AlphaInfo(0, 0, 0, 0.0, 0.0, 0.0)


def test_all_unknown_returns_the_prior():
    image, _ = _synthetic(20, 24)
    trimap = np.full((20, 24), 128, np.uint8)
    np.testing.assert_array_equal(_alpha(image, trimap), 0.5)
    prior = np.linspace(0, 1, 20 * 24).reshape(20, 24)
    np.testing.assert_allclose(_alpha(image, trimap, prior=prior), prior, atol=1e-7)


def test_all_unknown_with_prior_weight_smooths_the_prior():
    image, _ = _synthetic(20, 24)
    trimap = np.full((20, 24), 128, np.uint8)
    prior = np.full((20, 24), 0.8)
    alpha = _alpha(image, trimap, prior=prior, prior_weight=1.0)
    np.testing.assert_allclose(alpha, 0.8, atol=1e-4)


def test_unknown_region_without_known_pixels_in_its_graph_takes_the_prior():
    image, trimap = _synthetic()
    # With a zero band radius no known pixel joins the graph: the system would be singular.
    alpha, info = knn_alpha_with_info(
        image, trimap, AlphaOptions(band_radius=0), prior=np.full(trimap.shape, 0.3)
    )
    np.testing.assert_allclose(alpha[trimap == 128], 0.3, atol=1e-7)
    assert info.iterations == 0


def test_strong_prior_weight_pulls_alpha_to_the_prior():
    image, trimap = _synthetic()
    prior = np.full(trimap.shape, 0.25)
    alpha = _alpha(image, trimap, prior=prior, prior_weight=1e6)
    np.testing.assert_allclose(alpha[trimap == 128], 0.25, atol=1e-3)


def test_non_contiguous_bands_are_solved_together():
    image, trimap = _synthetic()
    right_image, right_trimap = _synthetic(seed=3)
    image = np.concatenate([image, np.zeros((40, 30, 3), np.uint8), right_image], axis=1)
    trimap = np.concatenate([trimap, np.zeros((40, 30), np.uint8), right_trimap], axis=1)
    alpha, info = knn_alpha_with_info(image, trimap)
    assert info.n_unknown == (trimap == 128).sum()
    assert (alpha[trimap == 0] == 0).all() and (alpha[trimap == 255] == 1).all()
    # Each half comes out as it does when solved alone.
    np.testing.assert_allclose(alpha[:, :48], _alpha(*_synthetic()), atol=0.05)
    np.testing.assert_allclose(alpha[:, 78:], _alpha(right_image, right_trimap), atol=0.05)


def test_graph_covers_only_the_band():
    image, trimap = _synthetic(80, 96)
    _, info = knn_alpha_with_info(image, trimap, AlphaOptions(band_radius=2))
    assert info.n_graph == band_mask(trimap == 128, 2).sum()
    assert info.n_graph < 0.5 * trimap.size


def test_soft_constraints_agree_with_exact_elimination():
    image, trimap = _synthetic()
    exact = _alpha(image, trimap)
    soft = _alpha(image, trimap, constraint_weight=100.0)
    assert np.abs(exact - soft)[trimap == 128].mean() < 0.02
    assert (soft[trimap == 255] == 1).all() and (soft[trimap == 0] == 0).all()


def test_float_image_in_unit_range_matches_uint8():
    image, trimap = _synthetic()
    np.testing.assert_allclose(
        _alpha(image / 255.0, trimap), _alpha(image, trimap), atol=1e-4
    )


def test_prior_maps_in_their_own_dtype_build_the_same_system_as_float64_copies():
    # The prior and the prior-weight map are read at the band's nodes only (no whole-image
    # float64 copies); the prior is clipped to [0, 1] there.
    image, trimap = _synthetic()
    rng = np.random.default_rng(2)
    prior = rng.uniform(-0.5, 1.5, trimap.shape).astype(np.float32)
    weights = rng.uniform(0.0, 2.0, trimap.shape).astype(np.float32)
    given = build_matting_system(image, trimap, prior=prior, prior_weight=weights, cf_weight=10.0)
    copied = build_matting_system(
        image, trimap, prior=np.clip(prior.astype(np.float64), 0.0, 1.0),
        prior_weight=weights.astype(np.float64), cf_weight=10.0,
    )
    assert (given.matrix != copied.matrix).nnz == 0
    np.testing.assert_array_equal(given.rhs, copied.rhs)
    np.testing.assert_array_equal(given.x0, copied.x0)
    np.testing.assert_array_equal(given.alpha, copied.alpha)
    flat = build_matting_system(image, trimap, prior=prior, prior_weight=0.5)
    mapped = build_matting_system(
        image, trimap, prior=prior, prior_weight=np.full(trimap.shape, 0.5, np.float32)
    )
    assert (flat.matrix != mapped.matrix).nnz == 0
    np.testing.assert_array_equal(flat.rhs, mapped.rhs)


def test_all_unknown_returns_the_prior_clipped_to_unit_range():
    image, _ = _synthetic(20, 24)
    trimap = np.full((20, 24), 128, np.uint8)
    prior = np.linspace(-0.5, 1.5, 20 * 24, dtype=np.float32).reshape(20, 24)
    np.testing.assert_array_equal(_alpha(image, trimap, prior=prior), np.clip(prior, 0.0, 1.0))


def test_cf_weight_adds_the_closed_form_system_scaled_once():
    image, trimap = _synthetic()
    knn = build_matting_system(image, trimap)
    both = build_matting_system(image, trimap, cf_weight=3.0)
    is_foreground, is_unknown = split_trimap(trimap)
    cf_matrix, cf_rhs, _ = closed_form_system(image, is_unknown, is_foreground)
    assert both.matrix.shape == knn.matrix.shape == cf_matrix.shape  # nothing floats here
    np.testing.assert_allclose(
        both.matrix.toarray(), knn.matrix.toarray() + 3.0 * cf_matrix.toarray(), atol=1e-9
    )
    np.testing.assert_allclose(both.rhs, knn.rhs + 3.0 * cf_rhs, atol=1e-9)


@pytest.mark.parametrize(
    ("image_shape", "trimap_shape"), [((10, 10), (10, 10)), ((10, 10, 3), (10, 9))]
)
def test_mismatched_inputs_are_rejected(image_shape, trimap_shape):
    with pytest.raises(ValueError):
        _alpha(np.zeros(image_shape, np.uint8), np.zeros(trimap_shape, np.uint8))


def test_integer_images_other_than_uint8_are_rejected():
    image, trimap = _synthetic()
    with pytest.raises(ValueError):
        _alpha(image.astype(np.uint16) * 257, trimap)


def test_non_positive_constraint_weight_is_rejected():
    image, trimap = _synthetic()
    with pytest.raises(ValueError):
        _alpha(image, trimap, constraint_weight=0.0)


# --- quality on real portraits -------------------------------------------------------------------


def _trimap_from_alpha(alpha: np.ndarray, radius: int = 5) -> np.ndarray:
    """Unknown = the GT's fractional pixels grown by ``radius``; elsewhere the GT's side."""
    fractional = ((alpha > 0) & (alpha < 255)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    trimap = np.where(alpha > 127, 255, 0).astype(np.uint8)
    trimap[cv2.dilate(fractional, kernel) > 0] = 128
    return trimap


def _portraits(names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    if not P3M.exists():
        pytest.skip(f"{P3M} not present (../shared is only beside development checkouts)")
    found = []
    for name in names:
        image = cv2.cvtColor(cv2.imread(str(P3M / "image" / name)), cv2.COLOR_BGR2RGB)
        alpha = cv2.imread(str(P3M / "alpha" / name), cv2.IMREAD_GRAYSCALE)
        found.append((image, alpha))
    return found


PORTRAITS = ["p3m_fig_a2.png", "p3m_fig_a4.png", "p3m_fig_b1.png", "p3m_fig_c3.png"]


def test_sad_on_real_portraits_is_no_worse_than_pymatting_knn():
    pymatting = pytest.importorskip("pymatting")
    ours, theirs = [], []
    for image, gt in _portraits(PORTRAITS):
        trimap = _trimap_from_alpha(gt)
        region = unknown_region(trimap)
        alpha, info = knn_alpha_with_info(image, trimap)
        reference = pymatting.estimate_alpha_knn(image / 255.0, trimap / 255.0)
        ours.append(sad(alpha, gt, region))
        theirs.append(sad(np.clip(reference, 0, 1), gt, region))
        assert info.residual <= 1e-6
        assert info.n_graph < 0.5 * trimap.size
    # Measured on these four: ours/pymatting 0.69–0.97 per image, 0.75 on the mean.
    assert np.mean(ours) <= 1.05 * np.mean(theirs), (ours, theirs)
    assert max(o / t for o, t in zip(ours, theirs, strict=True)) <= 1.25, (ours, theirs)


def test_real_portrait_keeps_known_pixels_and_beats_half_grey():
    ((image, gt),) = _portraits(["p3m_fig_b3.png"])
    trimap = _trimap_from_alpha(gt, radius=10)
    region = unknown_region(trimap)
    alpha = _alpha(image, trimap)
    assert (alpha[trimap == 255] == 1).all() and (alpha[trimap == 0] == 0).all()
    assert sad(alpha, gt, region) < 0.5 * sad(np.full(gt.shape, 0.5), gt, region)


def test_amg_and_jacobi_give_the_same_alpha_on_a_real_crop():
    pytest.importorskip("pyamg")
    ((image, gt),) = _portraits(["p3m_fig_a2.png"])
    image, gt = image[:240], gt[:240]
    trimap = _trimap_from_alpha(gt)
    amg, amg_info = knn_alpha_with_info(image, trimap, AlphaOptions(preconditioner="amg"))
    jacobi, jacobi_info = knn_alpha_with_info(image, trimap, AlphaOptions(preconditioner="jacobi"))
    assert amg_info.residual <= 1e-6 and jacobi_info.residual <= 1e-6
    assert amg_info.iterations < jacobi_info.iterations / 5
    assert np.abs(amg - jacobi).max() < 1e-3
