"""The constrained linear system of KNN matting over the trimap's unknown band.

The classic recipe solves an h·w system, which costs gigabytes per megapixel although only the
unknown pixels are in doubt. Here the graph covers the unknown pixels plus the known pixels
within ``band_radius`` of them, the known pixels are eliminated exactly (they move to the
right-hand side), and what is left is a symmetric positive definite system over the unknowns.
The eliminated system is assembled straight from the neighbour lists (A and L over the whole
band are never formed), which keeps a 12 MP portrait under 2 GiB. This module owns that step:
trimap → band → graph (``graph``) → ``MattingSystem``; solving it is ``cg``'s job.
"""

import math
import time
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse as sp

from matteforge.tasks.alpha.graph import (
    DEFAULT_SEARCH_EPS,
    floating_nodes,
    graph_components,
    graph_laplacian,
    knn_affinity,
    knn_features,
    knn_weights,
    nearest_neighbors,
)
from matteforge.tasks.closed_form import DEFAULT_EPSILON, closed_form_system

TRIMAP_BACKGROUND = 0
TRIMAP_FOREGROUND = 255

# Band radius as a fraction of the image diagonal. Accuracy barely moves between 2 px and 20 px at
# ~0.15 MP and between 3 px and 40 px at ~0.6 MP (<2 % SAD), while 0 px (no known pixel in the
# graph) fails outright. 0.5 % of the diagonal still sits on the flat part at every size measured
# (five 1 MP P3M portraits: SAD 8.72 at 1 %, 8.75 at 0.5 %) and shrinks the graph by a third.
BAND_RADIUS_FRACTION = 0.005
MIN_BAND_RADIUS = 3
DEFAULT_PRIOR = 0.5


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


def _prior_weights(prior_weight: float | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """λ_p per pixel: one weight (0-d) everywhere, or an HxW map (e.g. from the model's confidence).

    A map comes back as given, not as a float64 copy (96 MB at 12 MP): only the band's nodes
    are read (``_at_nodes``).
    """
    weights = _numeric(prior_weight)
    if weights.ndim and weights.shape != shape:
        raise ValueError(f"prior_weight map shape {weights.shape} does not match {shape}")
    if np.any(weights < 0):
        raise ValueError("prior_weight must be >= 0")
    return weights


def _numeric(values: float | np.ndarray) -> np.ndarray:
    """``values`` as an array, in its own dtype when that is numeric (no copy), else float64."""
    array = np.asarray(values)
    return array if array.dtype.kind in "biuf" else array.astype(np.float64)


def _at_nodes(values: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """A 0-d or HxW per-pixel ``values`` at the flat pixel indices ``nodes``, as float64."""
    if values.ndim == 0:
        return np.full(len(nodes), values, dtype=np.float64)
    return values.reshape(-1)[nodes].astype(np.float64)


def _check_inputs(image: np.ndarray, trimap: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """Validate the inputs; return the prior, 0-d (the default) or HxW as given, not clipped.

    The prior is clipped to [0, 1] where it is read (at the band's nodes), which spares a
    float64 copy of the whole map.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
    if trimap.shape != image.shape[:2]:
        raise ValueError(f"trimap shape {trimap.shape} does not match image {image.shape[:2]}")
    if prior is None:
        return np.asarray(DEFAULT_PRIOR, dtype=np.float64)
    prior = _numeric(prior)
    if prior.shape != trimap.shape:
        raise ValueError(f"prior shape {prior.shape} does not match trimap {trimap.shape}")
    return prior


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
    """The band graph and its constrained system for one image (arguments: ``AlphaOptions``)."""
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
        alpha[:] = np.clip(prior_map, 0.0, 1.0)
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
    node_prior = np.clip(_at_nodes(prior_map, nodes), 0.0, 1.0)
    node_weight = _at_nodes(weight_map, nodes)
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
            # Scaled in place: a scaled copy would hold a second ~11M-entry matrix at 12 MP.
            cf_matrix.data *= cf_weight
            cf_rhs *= cf_weight
            extra = (cf_matrix, cf_rhs, cf_anchored)
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
