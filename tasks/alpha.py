"""KNN matting (Chen, Li & Tang 2012) solved only on the trimap's unknown band.

The classic recipe builds a K-nearest-neighbour graph over every pixel and solves an h·w system,
which costs gigabytes per megapixel although only the unknown pixels are in doubt. Here the graph
covers the unknown pixels plus the known pixels within ``band_radius`` of them, the known pixels
are eliminated exactly (they move to the right-hand side), and the remaining symmetric positive
definite system is solved with conjugate gradients preconditioned by an algebraic-multigrid
V-cycle (pyamg; Jacobi without it). Memory and time scale with the unknown area, not with the
image. The eliminated system is assembled straight from the neighbour lists (A and L over the
whole band are never formed), which keeps a 12 MP portrait under 2 GiB.

The algorithm reads as its definition::

    graph = band graph (features → K nearest neighbours → kernel → W, A = W + Wᵀ, L = D − A)
    system = constrained system (known pixels eliminated, optional prior term)
    alpha = preconditioned solve, clipped to [0, 1]

Example:
    >>> import numpy as np
    >>> image = np.zeros((1, 12, 3), np.uint8)
    >>> trimap = np.array([[0] * 3 + [128] * 6 + [255] * 3], np.uint8)
    >>> alpha = knn_alpha(image, trimap, n_neighbors=2, band_radius=10)
    >>> [round(float(a), 2) for a in alpha[0, 3:9]]
    [0.22, 0.33, 0.44, 0.56, 0.67, 0.78]
"""

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator
from scipy.spatial import cKDTree

from matteforge.tasks.closed_form import DEFAULT_EPSILON, closed_form_system

if TYPE_CHECKING:
    from pyamg.multilevel import MultilevelSolver

TRIMAP_BACKGROUND = 0
TRIMAP_FOREGROUND = 255

# Kernel 1 − d/C with C = KERNEL_SCALE · (mean neighbour distance). The paper's C (the largest
# distance) leaves almost every weight near 1, which makes the kernel nearly binary; a C tied to
# the typical neighbour distance lets colour edges cut the graph. On the 10 P3M portraits
# (trimaps of 3–20 px) this lowered SAD over the unknown region by 8–25 % (scale 1.5–2 best;
# 2 needs fewer CG iterations).
KERNEL_SCALE = 2.0
# Distances beyond C would give weights ≤ 0: clipping keeps every KNN edge, so the graph's
# connectivity (and the system's definiteness) does not depend on colour contrast. A floor of
# 0.01 was as accurate as 0.001 with a third fewer CG iterations; 0.05 cost accuracy.
KERNEL_FLOOR = 0.01
# Band radius as a fraction of the image diagonal. Accuracy barely moves between 2 px and 20 px at
# ~0.15 MP and between 3 px and 40 px at ~0.6 MP (<2 % SAD), while 0 px (no known pixel in the
# graph) fails outright. 0.5 % of the diagonal still sits on the flat part at every size measured
# (five 1 MP P3M portraits: SAD 8.72 at 1 %, 8.75 at 0.5 %) and shrinks the graph by a third.
BAND_RADIUS_FRACTION = 0.005
MIN_BAND_RADIUS = 3
DEFAULT_PRIOR = 0.5
# Approximate neighbour search: with eps = 1 (neighbours within 2x the true k-th distance) the
# KD-tree search took 30-45 % less time on the 1 MP P3M bands and mean SAD over five portraits
# moved from 8.70 to 8.66; eps = 2 saved little more.
DEFAULT_SEARCH_EPS = 1.0


@dataclass(frozen=True)
class AlphaInfo:
    """What the solve cost and how well it converged, for manifests and benchmarks."""

    n_unknown: int
    n_graph: int
    iterations: int
    residual: float
    seconds_graph: float
    seconds_solve: float


def split_trimap(trimap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(is_foreground, is_unknown)`` boolean masks.

    Anything that is neither 0 nor 255 is unknown, so trimaps saved with a grey other than 128
    (or resampled ones) still work.
    """
    trimap = np.asarray(trimap)
    if trimap.ndim != 2:
        raise ValueError(f"trimap must be HxW, got shape {trimap.shape}")
    is_foreground = trimap == TRIMAP_FOREGROUND
    is_unknown = ~is_foreground & (trimap != TRIMAP_BACKGROUND)
    return is_foreground, is_unknown


def default_band_radius(shape: tuple[int, ...]) -> int:
    """Band radius in pixels for an image of ``shape``: 0.5 % of the diagonal, at least 3 px.

    Scaling with the image keeps the band's share of known pixels constant when the same portrait
    comes at a different resolution (trimap widths are scaled the same way upstream).
    """
    h, w = shape[:2]
    return max(MIN_BAND_RADIUS, math.ceil(BAND_RADIUS_FRACTION * math.hypot(h, w)))


def band_mask(is_unknown: np.ndarray, radius: int) -> np.ndarray:
    """Unknown pixels plus every pixel within ``radius`` (Euclidean) of one.

    A distance transform costs the same for any radius, unlike a dilation with a large kernel.
    """
    if radius <= 0 or not is_unknown.any():
        return is_unknown.copy()
    distance = cv2.distanceTransform((~is_unknown).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    return distance <= radius


def knn_features(image: np.ndarray, pixels: np.ndarray, spatial_weight: float = 1.0) -> np.ndarray:
    """Feature rows ``(R, G, B, x·s, y·s)`` for the flat pixel indices ``pixels``.

    Colours are in [0, 1]; coordinates are divided by the image diagonal (as in the authors' code)
    so ``spatial_weight`` means the same at every resolution. Returns float32 of shape (n, 5).
    """
    h, w = image.shape[:2]
    rows, cols = np.divmod(np.asarray(pixels, dtype=np.int64), w)
    colour = image.reshape(-1, image.shape[2])[pixels].astype(np.float32)
    if image.dtype == np.uint8:
        colour /= 255.0
    scale = np.float32(spatial_weight / math.hypot(h, w))
    features = np.empty((len(pixels), 5), dtype=np.float32)
    features[:, :3] = colour
    features[:, 3] = cols * scale
    features[:, 4] = rows * scale
    return features


def nearest_neighbors(
    features: np.ndarray,
    n_neighbors: int,
    chunk: int = 1 << 18,
    queries: np.ndarray | None = None,
    eps: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, indices)`` of the ``n_neighbors`` nearest other rows, shape (q, k).

    ``queries`` picks the rows that search (default: all); every row can be found. ``eps`` > 0
    makes the search approximate: each reported k-th neighbour is within (1 + eps) times the
    true k-th distance (scipy's KD-tree contract). scipy's KD-tree with all cores was 1.7x
    faster than sklearn's kd_tree and 9x faster than its ball_tree on 170k band pixels. The
    point itself is dropped wherever it appears in its list (with duplicate features it need not
    come first). Queries run ``chunk`` rows at a time and come back as float32 / int32, so a
    12 MP band does not hold (q, k + 1) float64 + int64 temporaries for every row at once.
    """
    n = len(features)
    query_rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    q = len(query_rows)
    k = min(n_neighbors, n - 1)
    if k <= 0:
        return np.empty((q, 0), dtype=np.float32), np.empty((q, 0), dtype=np.int32)
    tree = cKDTree(features)
    distances = np.empty((q, k), dtype=np.float32)
    indices = np.empty((q, k), dtype=np.int32)
    for start in range(0, q, chunk):
        stop = min(start + chunk, q)
        rows = query_rows[start:stop]
        found_d, found_i = tree.query(features[rows], k=k + 1, eps=eps, workers=-1)
        distances[start:stop] = found_d[:, 1:]
        indices[start:stop] = found_i[:, 1:]
        # The point itself almost always comes first; fix the rows where it does not.
        odd = np.flatnonzero(found_i[:, 0] != rows)
        if len(odd):
            is_self = found_i[odd] == rows[odd, None]
            # Drop the self entry, or the farthest one for a row whose self fell off the list.
            drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
            keep = np.ones_like(is_self)
            keep[np.arange(len(odd)), drop] = False
            distances[start + odd] = found_d[odd][keep].reshape(-1, k)
            indices[start + odd] = found_i[odd][keep].reshape(-1, k)
    return distances, indices


def knn_weights(distances: np.ndarray) -> np.ndarray:
    """Edge weights 1 − d/C clipped to [KERNEL_FLOOR, 1], C = KERNEL_SCALE · mean distance."""
    scale = KERNEL_SCALE * float(distances.mean(dtype=np.float64))
    if scale <= 0:
        return np.ones_like(distances)
    return np.clip(1.0 - distances / np.float32(scale), KERNEL_FLOOR, 1.0)


def knn_affinity(features: np.ndarray, n_neighbors: int = 10) -> sp.csr_matrix:
    """Symmetric affinity matrix A = W + Wᵀ of the K-nearest-neighbour graph.

    W links each node to its K nearest neighbours with the kernel 1 − d/C (see KERNEL_SCALE).
    Pairs that pick each other get twice the weight, as in the paper.
    """
    n = len(features)
    distances, indices = nearest_neighbors(features, n_neighbors)
    if distances.size == 0:
        return sp.csr_matrix((n, n))
    weights = knn_weights(distances)
    # W and Wᵀ go into one COO whose conversion sums the pairs that pick each other: one sort,
    # instead of building W, transposing it and adding (2.5x slower at 1 MP).
    rows = np.repeat(np.arange(n, dtype=np.int32), indices.shape[1])
    cols = indices.ravel()
    data = weights.ravel().astype(np.float64)
    both = sp.coo_matrix(
        (
            np.concatenate([data, data]),
            (np.concatenate([rows, cols]), np.concatenate([cols, rows])),
        ),
        shape=(n, n),
    )
    return both.tocsr()


def graph_laplacian(affinity: sp.spmatrix) -> sp.csr_matrix:
    """Unnormalised Laplacian L = D − A, so that αᵀLα = ½ Σ A_ij (α_i − α_j)²."""
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    return (sp.diags(degree) - affinity).tocsr()


def floating_nodes(affinity: sp.spmatrix, is_known: np.ndarray) -> np.ndarray:
    """Nodes whose connected component holds no known node.

    Their block of the eliminated system is singular (any constant solves it), so they take the
    prior instead of being solved; everything left is strictly positive definite.
    """
    if affinity.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    _, labels = connected_components(affinity, directed=False)
    anchored = np.zeros(labels.max() + 1, dtype=bool)
    anchored[labels[is_known]] = True
    return ~anchored[labels]


def graph_components(graph: sp.csr_matrix) -> np.ndarray:
    """Connected-component labels of a structurally symmetric sparse graph.

    pyamg's depth-first search reads the CSR arrays as they are; scipy's validates, copies and
    transposes the graph first, which took 2-3x as long on 1 MP bands. Falls back to scipy
    without pyamg.
    """
    graph = sp.csr_matrix(graph)
    try:
        from pyamg import amg_core
    except ImportError:
        return connected_components(graph, directed=False)[1]
    labels = np.empty(graph.shape[0], dtype=graph.indptr.dtype)
    amg_core.connected_components(graph.shape[0], graph.indptr, graph.indices, labels)
    return labels


def eliminated_system(
    laplacian: sp.csr_matrix,
    is_unknown: np.ndarray,
    known_alpha: np.ndarray,
    prior: np.ndarray,
    prior_weight: float = 0.0,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(M, b)`` of (L_uu + λ_p I) α_u = −L_uk α_k + λ_p·prior over the unknown nodes.

    This is the λ → ∞ limit of the paper's (L + λ·D_known) α = λ·v: known pixels are exact, and
    the system has only the unknowns. ``known_alpha`` has one entry per known node and ``prior``
    one per unknown node, both in node order.
    """
    unknown = np.flatnonzero(is_unknown)
    known = np.flatnonzero(~is_unknown)
    rows = laplacian[unknown]
    matrix = rows[:, unknown]
    rhs = -(rows[:, known] @ np.asarray(known_alpha, dtype=np.float64))
    if prior_weight > 0:
        matrix = matrix + prior_weight * sp.identity(len(unknown), format="csr")
        rhs = rhs + prior_weight * np.asarray(prior, dtype=np.float64)
    return matrix.tocsr(), rhs


def eliminated_knn_system(
    indices: np.ndarray,
    weights: np.ndarray,
    is_unknown: np.ndarray,
    node_alpha: np.ndarray,
    prior: np.ndarray,
    prior_weight: float | np.ndarray = 0.0,
    sources: np.ndarray | None = None,
    extra: tuple[sp.csr_matrix, np.ndarray, np.ndarray] | None = None,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """``(M, b, floating)`` of ``eliminated_system`` straight from the KNN lists.

    ``indices``/``weights`` are W's rows: node ``sources[r]`` → its K neighbours (``sources``,
    ascending, defaults to every node; nodes not in it have no out-edges). A = W + Wᵀ over the
    whole band is never formed: each unknown node's out-edges give its degree and its share of
    −L_uk α_k as row sums, and its list becomes a fixed-width CSR row of H = ½D − W_uu (an edge
    to a known node turns into an explicit zero on the diagonal), so M = H + Hᵀ is one transpose
    and one merge that sums the duplicates, with no boolean compaction of the edges. At 1 MP
    (164k unknowns, 1.6M edges) this took 40 % less time than laying out W_uu's rows,
    subtracting W_uu + W_uuᵀ from a diagonal and cutting out the floating rows with scipy's
    fancy indexing. Known sources (only when ``sources`` lists known nodes) add to their
    unknown ends by bincounts. ``floating`` marks the nodes in components without a known node
    (``floating_nodes``); they are left out of M and b. ``is_unknown``, ``node_alpha`` and
    ``prior`` are per node; ``prior_weight`` is one λ_p or one per node (read at unknown nodes).
    ``extra`` is another eliminated term over the same unknowns in the same order, ``(M', b',
    anchored')`` (the closed-form Laplacian, ``tasks/closed_form.py``), added before the
    floating components are found.
    """
    is_unknown = np.asarray(is_unknown, dtype=bool)
    n = len(is_unknown)
    k = indices.shape[1]
    unknown = np.flatnonzero(is_unknown)
    m = len(unknown)
    number = np.full(n, -1, dtype=np.int32)
    number[unknown] = np.arange(m, dtype=np.int32)
    sources = np.arange(n) if sources is None else np.asarray(sources)
    source_number = number[sources]
    known_alpha = np.where(is_unknown, 0.0, np.asarray(node_alpha, dtype=np.float64))
    degree = np.zeros(m)
    rhs = np.zeros(m)
    anchored = np.zeros(m, dtype=bool)
    from_known = source_number < 0
    if from_known.any():
        # A known source's edges to unknown nodes: weight on their diagonal, α_k·w in their b.
        ends = number[indices[from_known]]
        at_unknown = ends >= 0
        targets = ends[at_unknown]
        w = weights[from_known][at_unknown].astype(np.float64)
        source_alpha = np.broadcast_to(known_alpha[sources[from_known], None], ends.shape)
        degree += np.bincount(targets, w, m)
        rhs += np.bincount(targets, w * source_alpha[at_unknown], m)
        anchored[targets] = True
        keep = ~from_known
        indices, weights, source_number = indices[keep], weights[keep], source_number[keep]
    ends = number[indices]
    inner = ends >= 0
    # Unknown neighbours have known_alpha 0, so the row sum is the row's −L_uk α_k.
    row_rhs = np.einsum("ij,ij->i", weights, known_alpha[indices], dtype=np.float64)
    row_degree = weights.sum(axis=1, dtype=np.float64)
    node_weight = np.broadcast_to(np.asarray(prior_weight, dtype=np.float64), (n,))[unknown]
    if k == 0:
        anchored[:] = True
    else:
        # An unknown node with any edge to a known one is tied to the constraints.
        anchored[source_number[~inner.all(axis=1)]] = True
    del indices
    rows = np.arange(m, dtype=np.int32)
    every_row = len(source_number) == m and bool(np.all(source_number == rows))
    if every_row:
        degree += row_degree
        rhs += row_rhs
    else:
        # Unknown nodes without a list get an empty one: k zero-weight self-loops.
        degree += np.bincount(source_number, row_degree, m)
        rhs += np.bincount(source_number, row_rhs, m)
        padded_ends = np.repeat(rows[:, None], k, axis=1)
        padded_weights = np.zeros((m, k), dtype=weights.dtype)
        padded_ends[source_number] = ends
        padded_weights[source_number] = weights
        ends, weights = padded_ends, padded_weights
        inner = ends >= 0
    # H's rows: K neighbours (an unknown one, or the row itself with weight 0), then the diagonal.
    columns = np.empty((m, k + 1), dtype=np.int32)
    columns[:, k] = rows
    columns[:, :k] = ends
    np.copyto(columns[:, :k], rows[:, None], where=~inner)
    data = np.empty((m, k + 1))
    data[:, :k] = weights
    np.copyto(data[:, :k], 0.0, where=~inner)
    data[:, k] = 0.0
    del ends, inner, weights
    degree += np.bincount(columns.ravel(), data.ravel(), m)
    if node_weight.any():
        degree += node_weight
        rhs += node_weight * np.asarray(prior, dtype=np.float64)[unknown]
        anchored |= node_weight > 0
    np.negative(data, out=data)
    data[:, k] = 0.5 * degree
    indptr = np.arange(0, m * (k + 1) + 1, k + 1, dtype=np.int64)
    half = sp.csr_matrix((data.ravel(), columns.ravel(), indptr), shape=(m, m))
    del data, columns
    matrix = (half + half.T).tocsr()
    del half
    if extra is not None:
        matrix = (matrix + extra[0]).tocsr()
        rhs += extra[1]
        anchored |= extra[2]
    floating = np.zeros(n, dtype=bool)
    if not anchored.all():
        # Components of M's graph (those of W_uu + W_uuᵀ); one is anchored if any member is.
        labels = graph_components(matrix)
        component_anchored = np.zeros(labels.max() + 1, dtype=bool)
        component_anchored[labels[anchored]] = True
        floating[unknown] = ~component_anchored[labels]
    if floating.any():
        keep = ~floating[unknown]
        matrix = drop_components(matrix, keep)
        rhs = rhs[keep]
    return matrix, rhs, floating


def drop_components(matrix: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """``matrix[keep][:, keep]`` for a ``keep`` that is a union of connected components.

    No kept row has an entry in a dropped column, so filtering the entries by row and renumbering
    their columns is enough; scipy's general fancy indexing (a row and a column pass) took as
    long as assembling M at 1 MP, where every P3M portrait had a few floating nodes.
    """
    lengths = np.diff(matrix.indptr)
    entry_kept = np.repeat(keep, lengths)
    number = np.cumsum(keep, dtype=np.int64) - 1
    indptr = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=indptr[1:])
    columns = number[matrix.indices[entry_kept]].astype(matrix.indices.dtype)
    size = len(indptr) - 1
    return sp.csr_matrix((matrix.data[entry_kept], columns, indptr), shape=(size, size))


def soft_constrained_system(
    laplacian: sp.csr_matrix,
    is_unknown: np.ndarray,
    node_alpha: np.ndarray,
    constraint_weight: float,
    prior: np.ndarray,
    prior_weight: float | np.ndarray = 0.0,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(M, b)`` of the paper's (L + λ·D_known + λ_p·D_unknown) α = λ·v + λ_p·prior.

    Every graph node is a variable; ``node_alpha`` (known values) and ``prior`` are per node and
    are read only where the node is known or unknown respectively.
    """
    known = (~is_unknown).astype(np.float64)
    diagonal = constraint_weight * known + prior_weight * (1.0 - known)
    rhs = constraint_weight * known * node_alpha + prior_weight * (1.0 - known) * prior
    return (laplacian + sp.diags(diagonal)).tocsr(), rhs


def jacobi_preconditioner(matrix: sp.csr_matrix) -> LinearOperator:
    """diag(M)⁻¹: no setup and no extra dependency, but ~40x the iterations of AMG at 1 MP."""
    inverse_diagonal = 1.0 / matrix.diagonal()
    return LinearOperator(matrix.shape, matvec=lambda r: inverse_diagonal * r, dtype=np.float64)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """aᵀb without BLAS. OpenBLAS threads its dot for long vectors; its threads wake for every
    call and spin afterwards, so with another process on the second of 2 cores scipy's CG (BLAS
    dots and norms) took 2.6x the time of ``preconditioned_cg`` at 1 MP. On an idle machine the
    two tie."""
    return float(np.einsum("i,i->", a, b))


def preconditioned_cg(
    matrix: sp.csr_matrix,
    rhs: np.ndarray,
    x0: np.ndarray | None,
    tol: float,
    max_iter: int,
    preconditioner: LinearOperator,
) -> tuple[np.ndarray, int, float]:
    """Preconditioned conjugate gradients: ``(x, iterations, ‖b − Mx‖/‖b‖)``.

    scipy's ``cg`` (same recurrences and stopping rule, ‖r‖ < tol·‖b‖ checked before each
    iteration) without its BLAS dots (``_dot``), with the iteration count and the true relative
    residual that it does not return.
    """
    rhs = np.asarray(rhs, dtype=np.float64)
    rhs_norm = math.sqrt(_dot(rhs, rhs))
    if rhs_norm == 0:
        return np.zeros_like(rhs), 0, 0.0
    x = np.zeros_like(rhs) if x0 is None else np.array(x0, dtype=np.float64)
    r = rhs - matrix @ x if x.any() else rhs.copy()
    threshold = tol * rhs_norm
    p = np.empty_like(rhs)
    step = np.empty_like(rhs)
    rho_previous = 1.0
    iterations = 0
    while iterations < max_iter and math.sqrt(_dot(r, r)) >= threshold:
        z = preconditioner.matvec(r)
        rho = _dot(r, z)
        if iterations == 0:
            p[:] = z
        else:
            p *= rho / rho_previous
            p += z
        q = matrix @ p
        alpha = rho / _dot(p, q)
        np.multiply(p, alpha, out=step)
        x += step
        np.multiply(q, alpha, out=step)
        r -= step
        rho_previous = rho
        iterations += 1
    final = rhs - matrix @ x
    return x, iterations, math.sqrt(_dot(final, final)) / rhs_norm


@dataclass
class AmgLevel:
    """One level of a Ruge–Stüben hierarchy: its operator, the transfers to the next one, and
    the strict upper triangle of A that ``v_cycle`` takes its residual from."""

    A: sp.csr_matrix
    P: sp.csr_matrix | None = None
    R: sp.csr_matrix | None = None
    upper: sp.csr_matrix | None = None


@dataclass
class AmgHierarchy:
    """The levels, finest first, and the direct solver of the coarsest (pyamg's attribute names).

    ``coarse_solver(A, b)`` solves on the last level, as a pyamg ``MultilevelSolver``'s does, so
    ``v_cycle`` runs either.
    """

    levels: list[AmgLevel]
    coarse_solver: Callable[[sp.csr_matrix, np.ndarray], np.ndarray]


def _entry_rows(matrix: sp.csr_matrix) -> np.ndarray:
    """The row of every stored entry of a CSR matrix."""
    lengths = np.diff(matrix.indptr)
    return np.repeat(np.arange(matrix.shape[0], dtype=matrix.indices.dtype), lengths)


def _select_entries(
    indptr: np.ndarray, indices: np.ndarray, kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, indices)`` of the CSR entries where ``kept``, in the same index type.

    ``np.compress`` and a cumulative sum straight into the index type: boolean indexing and a
    cumulative sum of bools into int64 took 3x as long each on 2M entries.
    """
    before = np.zeros(len(kept) + 1, dtype=indices.dtype)
    np.cumsum(kept, out=before[1:], dtype=indices.dtype)
    return before[indptr], np.compress(kept, indices)


def strict_upper(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The entries right of the diagonal (scipy's ``triu`` goes through COO: twice the time)."""
    rows = _entry_rows(matrix)
    kept = matrix.indices > rows
    indptr, indices = _select_entries(matrix.indptr, matrix.indices, kept)
    return sp.csr_matrix((np.compress(kept, matrix.data), indices, indptr), shape=matrix.shape)


def ruge_stuben_level(
    matrix: sp.csr_matrix, theta: float = 0.25
) -> tuple[sp.csr_matrix, sp.csr_matrix] | None:
    """``(P, R)`` of one classical coarsening of ``matrix``, or None when it would not coarsen.

    The steps of pyamg's ``ruge_stuben_solver(A, interpolation="direct")`` with its amg_core
    kernels: classical strength (θ = 0.25), Ruge–Stüben C/F splitting, direct interpolation,
    R = Pᵀ. pyamg drops the strength matrix's diagonal through COO (which also sorts it) and
    multiplies the strength pattern with A again to get A's values back; here the strength
    kernel's output, which already holds A's values, feeds the interpolation as it is, and only
    the splitting's copy loses its diagonal. That took 40 % off the setup at 1 MP. On a matrix
    with sorted rows the result is pyamg's; on unsorted rows the splitting can break ties
    differently (0.02 % more coarse points, the same CG iterations on the P3M portraits).
    """
    from pyamg import amg_core

    n = matrix.shape[0]
    index = matrix.indices.dtype
    indptr = matrix.indptr.astype(index, copy=False)
    # S: strong off-diagonal entries plus the diagonal, with A's values, in A's entry order.
    s_indptr = np.empty(n + 1, dtype=index)
    s_indices = np.empty(matrix.nnz, dtype=index)
    s_data = np.empty(matrix.nnz, dtype=matrix.dtype)
    amg_core.classical_strength_of_connection_abs(
        n, theta, indptr, matrix.indices, matrix.data, s_indptr, s_indices, s_data
    )
    size = int(s_indptr[-1])
    s_indices, s_data = s_indices[:size], s_data[:size]
    s_rows = np.repeat(np.arange(n, dtype=index), np.diff(s_indptr))
    off = s_indices != s_rows
    # The splitting walks S without its diagonal and Sᵀ (a diagonal in Sᵀ would count itself).
    t_indptr, t_indices = _select_entries(s_indptr, s_indices, off)
    pattern = np.ones(len(t_indices), dtype=np.float32)
    transpose = sp.csr_matrix((pattern, t_indices, t_indptr), shape=(n, n)).T.tocsr()
    splitting = np.empty(n, dtype=index)
    amg_core.rs_cf_splitting(
        n,
        t_indptr,
        t_indices,
        transpose.indptr.astype(index, copy=False),
        transpose.indices.astype(index, copy=False),
        np.zeros(n, dtype=index),
        splitting,
    )
    n_coarse = int(splitting.sum())
    if n_coarse in (0, n):
        return None
    p_indptr = np.empty(n + 1, dtype=index)
    amg_core.rs_direct_interpolation_pass1(n, s_indptr, s_indices, splitting, p_indptr)
    p_indices = np.empty(p_indptr[-1], dtype=index)
    p_data = np.empty(p_indptr[-1], dtype=matrix.dtype)
    amg_core.rs_direct_interpolation_pass2(
        n,
        indptr,
        matrix.indices,
        matrix.data,
        s_indptr,
        s_indices,
        s_data,
        splitting,
        p_indptr,
        p_indices,
        p_data,
    )
    prolongation = sp.csr_matrix((p_data, p_indices, p_indptr), shape=(n, n_coarse))
    return prolongation, prolongation.T.tocsr()


def ruge_stuben_hierarchy(
    matrix: sp.csr_matrix, max_levels: int = 30, max_coarse: int = 10
) -> AmgHierarchy:
    """Classical AMG hierarchy of the SPD ``matrix``: pyamg's Ruge–Stüben defaults, leaner.

    Coarse operators are Galerkin products R·A·P; the coarsest level (≤ ``max_coarse`` rows) is
    solved with its pseudo-inverse, as pyamg's default coarse solver does. Raises ImportError
    without pyamg (its C++ kernels do the strength, the splitting and the interpolation).
    """
    from scipy.linalg import pinv

    levels = [AmgLevel(sp.csr_matrix(matrix))]
    while len(levels) < max_levels and levels[-1].A.shape[0] > max_coarse:
        this = levels[-1]
        transfers = ruge_stuben_level(this.A)
        if transfers is None:
            break
        this.P, this.R = transfers
        this.upper = strict_upper(this.A)
        levels.append(AmgLevel((this.R @ this.A @ this.P).tocsr()))
    inverse = pinv(levels[-1].A.toarray())
    return AmgHierarchy(levels, lambda _, b: inverse @ b)


def v_cycle(hierarchy: "AmgHierarchy | MultilevelSolver") -> LinearOperator:
    """One V-cycle from a zero guess as a linear operator: the AMG preconditioner for CG.

    Forward Gauss–Seidel before the coarse-grid correction and backward after keep the operator
    symmetric (R = Pᵀ for Ruge–Stüben), as CG requires. pyamg's own ``aspreconditioner`` runs
    its general ``solve`` loop, which adds a residual and two norms per application: 30 % of the
    solve time at 1 MP. One forward sweep from zero leaves the residual b − A·x = −U·x (U: the
    strict upper triangle), so the residual costs half a product with A (with U's setup, 2 % off
    the solve at 1 MP). ``hierarchy`` is an ``AmgHierarchy`` or a pyamg ``MultilevelSolver``.
    """
    from pyamg.amg_core import gauss_seidel

    levels = hierarchy.levels
    coarse_solver = hierarchy.coarse_solver
    if len(levels) == 1:
        return LinearOperator(
            levels[0].A.shape, matvec=lambda b: coarse_solver(levels[0].A, b), dtype=np.float64
        )
    smoothed = [sp.csr_matrix(level.A) for level in levels[:-1]]
    upper = [getattr(level, "upper", None) for level in levels[:-1]]
    upper = [strict_upper(a) if u is None else u for u, a in zip(upper, smoothed, strict=True)]

    def cycle(level: int, b: np.ndarray) -> np.ndarray:
        a = smoothed[level]
        n = a.shape[0]
        x = np.zeros_like(b)
        gauss_seidel(a.indptr, a.indices, a.data, x, b, 0, n, 1)
        coarse_b = levels[level].R @ (upper[level] @ x)
        np.negative(coarse_b, out=coarse_b)
        if level == len(levels) - 2:
            coarse_x = coarse_solver(levels[-1].A, coarse_b)
        else:
            coarse_x = cycle(level + 1, coarse_b)
        x += levels[level].P @ coarse_x
        gauss_seidel(a.indptr, a.indices, a.data, x, b, n - 1, -1, -1)
        return x

    return LinearOperator(
        levels[0].A.shape,
        matvec=lambda b: cycle(0, np.ascontiguousarray(b, dtype=np.float64).ravel()),
        dtype=np.float64,
    )


def amg_preconditioner(matrix: sp.csr_matrix) -> LinearOperator:
    """One algebraic-multigrid V-cycle over the classical Ruge–Stüben hierarchy of M.

    Forward Gauss–Seidel pre-smoothing and backward post-smoothing make it symmetric, as CG
    needs. On 1 MP P3M systems (118k–164k unknowns) CG reached tol 1e-6 in 11–16 iterations
    where Jacobi needed 520, and setup + solve took ~0.55 s against Jacobi's ~1.3 s; the
    symmetric Gauss–Seidel default smoother, smoothed aggregation (with and without prolongator
    smoothing) and root-node aggregation were all slower in total (0.6–1.0 s). The hierarchy is
    pyamg's ``ruge_stuben_solver(interpolation="direct")`` built by ``ruge_stuben_hierarchy``.
    Raises ImportError without pyamg.
    """
    return v_cycle(ruge_stuben_hierarchy(matrix))


def has_pyamg() -> bool:
    """Whether the AMG preconditioner is available."""
    try:
        import pyamg  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_solver_device(device: str | None) -> str | None:
    """The torch device the solve runs on, or None for the scipy CPU path ("auto": GPU if any)."""
    if device is None:
        return None
    if device == "auto":
        from matteforge.tasks.alpha_torch import cuda_available

        return "cuda" if cuda_available() else None
    return device


def solve_system(
    matrix: sp.csr_matrix,
    rhs: np.ndarray,
    x0: np.ndarray | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    preconditioner: str = "auto",
    device: str | None = None,
) -> tuple[np.ndarray, int, float]:
    """Solve the SPD system M x = b by preconditioned conjugate gradients.

    ``preconditioner`` is "amg" (``amg_preconditioner``), "jacobi" or "auto" (AMG when pyamg is
    installed). Returns ``(x, iterations, relative_residual)``; not converging within
    ``max_iter`` is reported through the residual ‖b − Mx‖/‖b‖ rather than raised, so a batch
    keeps going and the manifest shows it. b = 0 gives x = 0 with no work.
    ``device`` None solves with scipy on the CPU; a torch device ("cuda", "cpu") solves with
    torch's Jacobi CG there (``tasks.alpha_torch``; ``preconditioner`` is ignored); "auto" is
    "cuda" when torch sees a GPU and None otherwise.
    """
    if preconditioner not in ("auto", "amg", "jacobi"):
        raise ValueError(
            f"preconditioner must be 'auto', 'amg' or 'jacobi', got {preconditioner!r}"
        )
    torch_device = resolve_solver_device(device)
    if torch_device is not None:
        from matteforge.tasks.alpha_torch import torch_jacobi_cg

        return torch_jacobi_cg(matrix, rhs, x0, tol, max_iter, torch_device)
    n = matrix.shape[0]
    if n == 0 or not np.any(rhs):
        return np.zeros(n), 0, 0.0
    if preconditioner == "jacobi" or (preconditioner == "auto" and not has_pyamg()):
        operator = jacobi_preconditioner(matrix)
    else:
        operator = amg_preconditioner(matrix)
    return preconditioned_cg(matrix, rhs, x0, tol, max_iter, operator)


def _prior_weights(prior_weight: float | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """λ_p per pixel: one weight everywhere, or an HxW map (e.g. from the model's confidence)."""
    weights = np.asarray(prior_weight, dtype=np.float64)
    if weights.ndim and weights.shape != shape:
        raise ValueError(f"prior_weight map shape {weights.shape} does not match {shape}")
    if np.any(weights < 0):
        raise ValueError("prior_weight must be >= 0")
    return np.broadcast_to(weights, shape)


def _check_inputs(image: np.ndarray, trimap: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
    if trimap.shape != image.shape[:2]:
        raise ValueError(f"trimap shape {trimap.shape} does not match image {image.shape[:2]}")
    if prior is None:
        return np.full(trimap.shape, DEFAULT_PRIOR, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != trimap.shape:
        raise ValueError(f"prior shape {prior.shape} does not match trimap {trimap.shape}")
    return np.clip(prior, 0.0, 1.0)


@dataclass
class MattingSystem:
    """One image's linear system, and where its solution goes.

    ``alpha`` already holds everything decided without solving (known pixels, floating regions
    set to the prior); ``x[solution_rows]`` fills the pixels ``targets``. ``matrix`` is None
    when nothing is left to solve.
    """

    alpha: np.ndarray
    matrix: sp.csr_matrix | None
    rhs: np.ndarray
    x0: np.ndarray
    targets: np.ndarray
    solution_rows: np.ndarray | slice
    n_unknown: int
    n_graph: int
    seconds_graph: float


def build_matting_system(
    image: np.ndarray,
    trimap: np.ndarray,
    *,
    n_neighbors: int = 10,
    spatial_weight: float = 1.0,
    constraint_weight: float = math.inf,
    prior: np.ndarray | None = None,
    prior_weight: float | np.ndarray = 0.0,
    band_radius: int | None = None,
    search_eps: float = DEFAULT_SEARCH_EPS,
    cf_weight: float = 0.0,
    cf_epsilon: float = DEFAULT_EPSILON,
) -> MattingSystem:
    """The band graph and its constrained system for one image (arguments: ``knn_alpha``)."""
    image = np.asarray(image)
    trimap = np.asarray(trimap)
    prior_map = _check_inputs(image, trimap, prior)
    weight_map = _prior_weights(prior_weight, trimap.shape)
    is_foreground, is_unknown = split_trimap(trimap)
    alpha = is_foreground.astype(np.float32)
    n_unknown = int(is_unknown.sum())
    nothing = np.zeros(0, dtype=np.int64)

    def settled(n_graph: int = 0) -> MattingSystem:
        return MattingSystem(
            alpha, None, np.zeros(0), np.zeros(0), nothing, nothing, n_unknown, n_graph, 0.0
        )

    if n_unknown == 0:
        return settled()
    if n_unknown == trimap.size and not weight_map.any() and cf_weight <= 0:
        # No constraint at all: every unknown region floats, so the answer is the prior itself.
        alpha[:] = prior_map
        return settled()
    if not math.isinf(constraint_weight) and constraint_weight <= 0:
        raise ValueError("constraint_weight must be positive (or math.inf)")
    if cf_weight > 0 and not math.isinf(constraint_weight):
        raise ValueError("cf_weight needs the eliminated system (constraint_weight = math.inf)")

    start = time.perf_counter()
    radius = default_band_radius(trimap.shape) if band_radius is None else band_radius
    nodes = np.flatnonzero(band_mask(is_unknown, radius))
    node_unknown = is_unknown.ravel()[nodes]
    node_alpha = is_foreground.ravel()[nodes].astype(np.float64)
    node_prior = prior_map.ravel()[nodes]
    node_weight = weight_map.ravel()[nodes]
    features = knn_features(image, nodes, spatial_weight)
    if math.isinf(constraint_weight):
        # Only unknown pixels search: the edges a known pixel would add among known pixels
        # vanish in the elimination, and on the P3M portraits at 1 MP dropping its picks of
        # unknown pixels too changed SAD by < 0.3 % while the search shrank by a third.
        sources = np.flatnonzero(node_unknown)
        distances, indices = nearest_neighbors(
            features, n_neighbors, queries=sources, eps=search_eps
        )
        del features
        weights = knn_weights(distances)
        del distances
        extra = None
        if cf_weight > 0:
            cf_matrix, cf_rhs, cf_anchored = closed_form_system(
                image, is_unknown, is_foreground, cf_epsilon
            )
            extra = (cf_weight * cf_matrix, cf_weight * cf_rhs, cf_anchored)
        matrix, rhs, floating = eliminated_knn_system(
            indices, weights, node_unknown, node_alpha, node_prior, node_weight, sources, extra
        )
        del indices, weights
        solved_unknown = node_unknown[~floating]
        x0 = node_prior[~floating][solved_unknown]
        solution_rows: np.ndarray | slice = slice(None)
    else:
        affinity = knn_affinity(features, n_neighbors)
        laplacian = graph_laplacian(affinity)
        # With a prior term every node is anchored, so nothing floats.
        floating = (
            floating_nodes(affinity, ~node_unknown)
            if not node_weight[node_unknown].any()
            else np.zeros(len(nodes), dtype=bool)
        )
        solved = ~floating
        solved_unknown = node_unknown[solved]
        sub_laplacian = laplacian[solved][:, solved] if floating.any() else laplacian
        matrix, rhs = soft_constrained_system(
            sub_laplacian,
            solved_unknown,
            node_alpha[solved],
            constraint_weight,
            node_prior[solved],
            node_weight[solved],
        )
        x0 = np.where(solved_unknown, node_prior[solved], node_alpha[solved])
        solution_rows = solved_unknown
    adrift = floating & node_unknown
    alpha.reshape(-1)[nodes[adrift]] = node_prior[adrift]
    return MattingSystem(
        alpha=alpha,
        matrix=matrix,
        rhs=rhs,
        x0=x0,
        targets=nodes[~floating][solved_unknown],
        solution_rows=solution_rows,
        n_unknown=n_unknown,
        n_graph=len(nodes),
        seconds_graph=time.perf_counter() - start,
    )


def finish_alpha(
    system: MattingSystem, x: np.ndarray, iterations: int, residual: float, seconds_solve: float
) -> tuple[np.ndarray, AlphaInfo]:
    """Write a solution into the system's alpha (clipped to [0, 1]) and report the solve."""
    alpha = system.alpha
    if system.matrix is not None:
        alpha.reshape(-1)[system.targets] = np.clip(x[system.solution_rows], 0.0, 1.0)
    info = AlphaInfo(
        n_unknown=system.n_unknown,
        n_graph=system.n_graph,
        iterations=iterations,
        residual=residual,
        seconds_graph=system.seconds_graph,
        seconds_solve=seconds_solve,
    )
    return alpha, info


def knn_alpha_with_info(
    image: np.ndarray,
    trimap: np.ndarray,
    *,
    n_neighbors: int = 10,
    spatial_weight: float = 1.0,
    constraint_weight: float = math.inf,
    prior: np.ndarray | None = None,
    prior_weight: float | np.ndarray = 0.0,
    band_radius: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    preconditioner: str = "auto",
    search_eps: float = DEFAULT_SEARCH_EPS,
    device: str | None = None,
    cf_weight: float = 0.0,
    cf_epsilon: float = DEFAULT_EPSILON,
) -> tuple[np.ndarray, AlphaInfo]:
    """KNN-matting alpha for the unknown pixels of ``trimap``, with solve statistics.

    Args:
        image: HxWx3 RGB, uint8 (or float in [0, 1]).
        trimap: HxW uint8; 0 background, 255 foreground, anything else unknown.
        n_neighbors: K of the KNN graph (paper: 10; 5–20 measured, 10 best).
        spatial_weight: weight of the diagonal-normalised (x, y) features (paper: 1; 0.3–10
            measured, 1–2 best).
        constraint_weight: λ on the known pixels inside the band. ``math.inf`` (default)
            eliminates them exactly, the λ → ∞ limit of the paper's λ = 100. On five P3M
            portraits at ~1 MP both give the same SAD, but λ = 100 needs tol 1e-7 to get there
            (at 1e-6 some alphas were still 0.4 off its converged answer), which took 45 % longer
            than elimination at 1e-6. A finite λ solves the paper's soft-constrained system over
            the whole band (known pixels included) instead.
        prior: HxW float in [0, 1] (e.g. the segmentation probability): the starting guess, the
            value of unknown regions with no graph path to a known pixel, and the target of the
            prior term. Defaults to 0.5 everywhere.
        prior_weight: λ_p of an extra Σ λ_p (α − prior)² over the unknown pixels, in units of one
            graph edge of weight 1 (a node's degree is ~10). 0 disables it.
        band_radius: known pixels within this many pixels of an unknown one join the graph;
            default ``default_band_radius(image.shape)``.
        tol: relative residual at which CG stops (1e-6: max alpha error ~5e-4, below 8-bit).
        max_iter: CG iteration cap; hitting it shows in ``AlphaInfo.residual``.
        preconditioner: "amg" (pyamg Ruge–Stüben V-cycle, see ``amg_preconditioner``),
            "jacobi" (diagonal, no extra dependency) or "auto" (default: AMG when pyamg is
            installed). Both stop at the same relative residual and agree to ~1e-3 in alpha.
        search_eps: approximation of the neighbour search (``nearest_neighbors``); 0 is exact.
            Exact elimination only (a finite ``constraint_weight`` builds the paper's full graph
            with an exact search).
        device: where the linear system is solved (see ``solve_system``): None (default) with
            scipy and AMG on the CPU; "cuda" (or any torch device) with torch's batched Jacobi
            CG there; "auto" on a GPU when there is one. The graph is built on the CPU either way.
        cf_weight: weight of the closed-form matting Laplacian added to the KNN one
            (``tasks/closed_form.py``; 0 = KNN matting alone). Exact elimination only.
        cf_epsilon: that Laplacian's window regulariser.

    Returns:
        ``(alpha, info)``: alpha is float32 HxW in [0, 1] with known pixels exactly 0 or 1.
    """
    system = build_matting_system(
        image,
        trimap,
        n_neighbors=n_neighbors,
        spatial_weight=spatial_weight,
        constraint_weight=constraint_weight,
        prior=prior,
        prior_weight=prior_weight,
        band_radius=band_radius,
        search_eps=search_eps,
        cf_weight=cf_weight,
        cf_epsilon=cf_epsilon,
    )
    if system.matrix is None:
        return finish_alpha(system, np.zeros(0), 0, 0.0, 0.0)
    start = time.perf_counter()
    x, iterations, residual = solve_system(
        system.matrix, system.rhs, system.x0, tol, max_iter, preconditioner, device
    )
    return finish_alpha(system, x, iterations, residual, time.perf_counter() - start)


def knn_alpha_batch(
    images: Sequence[np.ndarray],
    trimaps: Sequence[np.ndarray],
    *,
    priors: Sequence[np.ndarray | None] | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    device: str | None = "auto",
    **graph_params: Any,
) -> list[tuple[np.ndarray, AlphaInfo]]:
    """``knn_alpha_with_info`` for several images, their systems solved together on a GPU.

    The graphs are built one by one on the CPU; on a torch device (see ``solve_system``) all
    systems go to ``tasks.alpha_torch.batched_jacobi_cg`` at once, so a shard pays one transfer
    and one solve loop. Without a device they are solved one by one with AMG. ``seconds_solve``
    of each image is the batch's solve time divided evenly.
    """
    if len(images) != len(trimaps) or (priors is not None and len(priors) != len(images)):
        raise ValueError("images, trimaps and priors must pair up")
    systems = [
        build_matting_system(
            image, trimap, prior=None if priors is None else priors[i], **graph_params
        )
        for i, (image, trimap) in enumerate(zip(images, trimaps, strict=True))
    ]
    torch_device = resolve_solver_device(device)
    live = [s for s in systems if s.matrix is not None]
    start = time.perf_counter()
    if torch_device is None:
        solutions = [solve_system(s.matrix, s.rhs, s.x0, tol, max_iter) for s in live]
    else:
        from matteforge.tasks.alpha_torch import batched_jacobi_cg

        solutions = batched_jacobi_cg(
            [s.matrix for s in live],
            [s.rhs for s in live],
            [s.x0 for s in live],
            tol,
            max_iter,
            torch_device,
        )
    share = (time.perf_counter() - start) / max(1, len(live))
    solved = dict(zip(map(id, live), solutions, strict=True))
    results = []
    for system in systems:
        x, iterations, residual = solved.get(id(system), (np.zeros(0), 0, 0.0))
        results.append(finish_alpha(system, x, iterations, residual, share if x.size else 0.0))
    return results


def knn_alpha(
    image: np.ndarray,
    trimap: np.ndarray,
    *,
    n_neighbors: int = 10,
    spatial_weight: float = 1.0,
    constraint_weight: float = math.inf,
    prior: np.ndarray | None = None,
    prior_weight: float | np.ndarray = 0.0,
    band_radius: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    preconditioner: str = "auto",
    search_eps: float = DEFAULT_SEARCH_EPS,
    device: str | None = None,
    cf_weight: float = 0.0,
    cf_epsilon: float = DEFAULT_EPSILON,
) -> np.ndarray:
    """KNN-matting alpha (float32 HxW in [0, 1]); see ``knn_alpha_with_info`` for arguments."""
    alpha, _ = knn_alpha_with_info(
        image,
        trimap,
        n_neighbors=n_neighbors,
        spatial_weight=spatial_weight,
        constraint_weight=constraint_weight,
        prior=prior,
        prior_weight=prior_weight,
        band_radius=band_radius,
        tol=tol,
        max_iter=max_iter,
        preconditioner=preconditioner,
        search_eps=search_eps,
        device=device,
        cf_weight=cf_weight,
        cf_epsilon=cf_epsilon,
    )
    return alpha
