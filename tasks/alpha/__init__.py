"""KNN matting (Chen, Li & Tang 2012) solved only on the trimap's unknown band.

The algorithm reads as its definition, one module per step::

    graph = band graph (``graph``: features → K nearest neighbours → kernel → W, L = D − A)
    system = constrained system (``system``: known pixels eliminated, optional prior term)
    alpha = preconditioned CG (``cg``, with ``amg``'s V-cycle), clipped to [0, 1]

Memory and time scale with the unknown area, not with the image. This package exposes one entry,
``knn_alpha_with_info`` (and its many-image form ``knn_alpha_batch``, which shares one GPU solve
loop); every setting travels in one ``AlphaOptions``, and the solve reports an ``AlphaInfo``.

Example:
    >>> import numpy as np
    >>> image = np.zeros((1, 12, 3), np.uint8)
    >>> trimap = np.array([[0] * 3 + [128] * 6 + [255] * 3], np.uint8)
    >>> alpha, _ = knn_alpha_with_info(image, trimap, AlphaOptions(n_neighbors=2, band_radius=10))
    >>> [round(float(a), 2) for a in alpha[0, 3:9]]
    [0.22, 0.33, 0.44, 0.56, 0.67, 0.78]
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matteforge.tasks.alpha.cg import solve_systems
from matteforge.tasks.alpha.graph import DEFAULT_SEARCH_EPS
from matteforge.tasks.alpha.system import MattingSystem, build_matting_system
from matteforge.tasks.closed_form import DEFAULT_EPSILON

__all__ = ["AlphaInfo", "AlphaOptions", "knn_alpha_batch", "knn_alpha_with_info"]


@dataclass(frozen=True)
class AlphaOptions:
    """How an alpha is solved: everything but the image's own inputs, with tested defaults.

    Frozen, so one instance (the recipe makes it from ``cfg.alpha``) serves every image of a
    build. Per-image inputs (the prior, a per-pixel prior weight) are arguments of the entry.

    Attributes:
        n_neighbors: K of the KNN graph (paper: 10; 5–20 measured, 10 best).
        spatial_weight: weight of the diagonal-normalised (x, y) features (paper: 1; 0.3–10
            measured, 1–2 best).
        constraint_weight: λ on the known pixels inside the band. ``math.inf`` (default)
            eliminates them exactly, the λ → ∞ limit of the paper's λ = 100. On five P3M
            portraits at ~1 MP both give the same SAD, but λ = 100 needs tol 1e-7 to get there
            (at 1e-6 some alphas were still 0.4 off its converged answer), which took 45 % longer
            than elimination at 1e-6. A finite λ solves the paper's soft-constrained system over
            the whole band (known pixels included) instead.
        prior_weight: λ_p of an extra Σ λ_p (α − prior)² over the unknown pixels, in units of one
            graph edge of weight 1 (a node's degree is ~10). 0 disables it. An HxW map given to
            the entry replaces it for that image.
        band_radius: known pixels within this many pixels of an unknown one join the graph;
            default ``system.default_band_radius(image.shape)``.
        tol: relative residual at which CG stops (1e-6: max alpha error ~5e-4, below 8-bit).
        max_iter: CG iteration cap; hitting it shows in ``AlphaInfo.residual``.
        preconditioner: "amg" (pyamg Ruge–Stüben V-cycle, see ``amg.amg_preconditioner``),
            "jacobi" (diagonal, no extra dependency) or "auto" (default: AMG when pyamg is
            installed). Both stop at the same relative residual and agree to ~1e-3 in alpha.
        search_eps: approximation of the neighbour search (``graph.nearest_neighbors``); 0 is
            exact. Exact elimination only (a finite ``constraint_weight`` builds the paper's full
            graph with an exact search).
        device: where the linear system is solved (see ``cg.solve_system``): None (default) with
            scipy and AMG on the CPU; "cuda" (or any torch device) with torch's batched Jacobi
            CG there; "auto" on a GPU when there is one. The graph is built on the CPU either way.
        cf_weight: weight of the closed-form matting Laplacian added to the KNN one
            (``tasks/closed_form.py``; 0 = KNN matting alone). Exact elimination only.
        cf_epsilon: that Laplacian's window regulariser.
    """

    n_neighbors: int = 10
    spatial_weight: float = 1.0
    constraint_weight: float = math.inf
    prior_weight: float = 0.0
    band_radius: int | None = None
    tol: float = 1e-6
    max_iter: int = 2000
    preconditioner: str = "auto"
    search_eps: float = DEFAULT_SEARCH_EPS
    device: str | None = None
    cf_weight: float = 0.0
    cf_epsilon: float = DEFAULT_EPSILON


@dataclass(frozen=True)
class AlphaInfo:
    """What the solve cost and how well it converged, for manifests and benchmarks."""

    n_unknown: int
    n_graph: int
    iterations: int
    residual: float
    seconds_graph: float
    seconds_solve: float


def knn_alpha_with_info(
    image: np.ndarray,
    trimap: np.ndarray,
    options: AlphaOptions = AlphaOptions(),
    prior: np.ndarray | None = None,
    prior_weight: float | np.ndarray | None = None,
) -> tuple[np.ndarray, AlphaInfo]:
    """KNN-matting alpha for the unknown pixels of ``trimap``, with solve statistics.

    Args:
        image: HxWx3 RGB, uint8 (or float in [0, 1]).
        trimap: HxW uint8; 0 background, 255 foreground, anything else unknown.
        options: the graph and solver settings (``AlphaOptions``).
        prior: HxW float in [0, 1] (e.g. the segmentation probability): the starting guess, the
            value of unknown regions with no graph path to a known pixel, and the target of the
            prior term. Defaults to 0.5 everywhere.
        prior_weight: this image's λ_p, one number or an HxW map (e.g. from the models'
            confidence); None (default) takes ``options.prior_weight``.

    Returns:
        ``(alpha, info)``: alpha is float32 HxW in [0, 1] with known pixels exactly 0 or 1.
    """
    return knn_alpha_batch([image], [trimap], options, [prior], [prior_weight])[0]


def knn_alpha_batch(
    images: Sequence[np.ndarray],
    trimaps: Sequence[np.ndarray],
    options: AlphaOptions = AlphaOptions(),
    priors: Sequence[np.ndarray | None] | None = None,
    prior_weights: Sequence[float | np.ndarray | None] | None = None,
) -> list[tuple[np.ndarray, AlphaInfo]]:
    """``knn_alpha_with_info`` for several images, their systems solved together on a GPU.

    The graphs are built one by one on the CPU; on a torch device (``options.device``) all
    systems are solved in one batched loop (``cg.solve_systems``), so a shard pays one transfer.
    Without a device they are solved one by one. ``seconds_solve`` of each image is the batch's
    solve time divided evenly.
    """
    count = len(images)
    if len(trimaps) != count or any(
        extra is not None and len(extra) != count for extra in (priors, prior_weights)
    ):
        raise ValueError("images, trimaps and priors must pair up")
    systems = [
        _build(
            options,
            image,
            trimap,
            None if priors is None else priors[i],
            None if prior_weights is None else prior_weights[i],
        )
        for i, (image, trimap) in enumerate(zip(images, trimaps, strict=True))
    ]
    live = [s for s in systems if s.matrix is not None]
    start = time.perf_counter()
    solutions = solve_systems(
        [s.matrix for s in live],
        [s.rhs for s in live],
        [s.x0 for s in live],
        options.tol,
        options.max_iter,
        options.preconditioner,
        options.device,
    )
    share = (time.perf_counter() - start) / max(1, len(live))
    solved = dict(zip(map(id, live), solutions, strict=True))
    results = []
    for system in systems:
        x, iterations, residual = solved.get(id(system), (np.zeros(0), 0, 0.0))
        results.append(_finish(system, x, iterations, residual, share if x.size else 0.0))
    # Freed here, not at the caller's return: the next stage (foreground) does not stack its
    # own peak on the systems'. Nothing of the solve is in a reference cycle (the V-cycle is a
    # loop for that reason), so no garbage collection is needed: a full one cost 0.14 s at 1 MP.
    del systems, live, solutions, solved
    return results


def _build(
    options: AlphaOptions,
    image: np.ndarray,
    trimap: np.ndarray,
    prior: np.ndarray | None,
    prior_weight: float | np.ndarray | None,
) -> MattingSystem:
    """One image's system under ``options`` (the only place that unpacks them for the graph)."""
    return build_matting_system(
        image,
        trimap,
        n_neighbors=options.n_neighbors,
        spatial_weight=options.spatial_weight,
        constraint_weight=options.constraint_weight,
        prior=prior,
        prior_weight=options.prior_weight if prior_weight is None else prior_weight,
        band_radius=options.band_radius,
        search_eps=options.search_eps,
        cf_weight=options.cf_weight,
        cf_epsilon=options.cf_epsilon,
    )


def _finish(
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
