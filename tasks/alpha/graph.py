"""The KNN graph over the band: features, nearest neighbours, kernel weights, Laplacian.

KNN matting (Chen, Li & Tang 2012) links each pixel to the K pixels nearest in (colour, position)
and asks alpha to vary little along those links. This module builds that graph and nothing else,
so the neighbour search and the kernel, where the accuracy and most of the graph time are
decided, can be measured and tested on their own; ``system`` turns the graph into the linear
system.
"""

import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

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
# Approximate neighbour search: with eps = 1 (neighbours within 2x the true k-th distance) the
# KD-tree search took 30-45 % less time on the 1 MP P3M bands and mean SAD over five portraits
# moved from 8.70 to 8.66; eps = 2 saved little more.
DEFAULT_SEARCH_EPS = 1.0


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
