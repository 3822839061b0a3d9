"""Batched Jacobi-preconditioned conjugate gradients in torch, for solving KNN-matting systems on a
GPU.

The CPU path (``tasks.alpha.cg``) preconditions CG with an algebraic-multigrid V-cycle, whose
Gauss–Seidel smoother is sequential and does not map onto a GPU. Jacobi needs ~40x more
iterations, but each one is a sparse matrix–vector product and a few vector updates, which a GPU
runs in well under a millisecond at 1 MP; several images' systems are stacked block-diagonally and
solved together, each block with its own step sizes and its own stopping test, so one launch
serves a whole shard. Everything here also runs on the CPU (that is what CI tests); it is only
faster where a GPU is present.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    return torch.cuda.is_available()


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; anything else is passed to torch as is.

    Asking for CUDA on a machine without it raises a ValueError naming the fix, rather than
    torch's lazy-initialisation error deep inside a solve.
    """
    if device == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not cuda_available():
        raise ValueError(
            f"alpha device {device!r} asked for, but torch sees no CUDA device; "
            "use device 'cpu' or 'auto'"
        )
    return resolved


def _to_torch_csr(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    matrix = matrix.tocsr()
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta": matrix–vector products are all we use.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float64)),
            size=matrix.shape,
            device=device,
            # scipy's CSR is already valid; re-checking costs a pass over every entry.
            check_invariants=False,
        )


def batched_jacobi_cg(
    matrices: Sequence[sp.csr_matrix],
    rhss: Sequence[np.ndarray],
    x0s: Sequence[np.ndarray | None] | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    device: str = "auto",
) -> list[tuple[np.ndarray, int, float]]:
    """Solve each SPD system M_i x_i = b_i by Jacobi-preconditioned CG, all in one batch.

    Returns one ``(x, iterations, relative_residual)`` per system, the contract of
    ``tasks.alpha.cg.solve_system``: a block that has not converged within ``max_iter`` reports it
    through its residual ‖b − Mx‖/‖b‖ (computed again from the returned x), and b = 0 gives
    x = 0 after no iterations. A converged block stops moving while the others go on.
    float64 throughout: float32 CG stalls near a relative residual of 1e-6 on these systems.
    """
    count = len(matrices)
    if len(rhss) != count or (x0s is not None and len(x0s) != count):
        raise ValueError("matrices, right-hand sides and starting guesses must pair up")
    sizes = [m.shape[0] for m in matrices]
    results: list[tuple[np.ndarray, int, float]] = [(np.zeros(n), 0, 0.0) for n in sizes]
    live = [i for i in range(count) if sizes[i] > 0 and np.any(rhss[i])]
    if not live:
        return results
    torch_device = resolve_device(device)
    stacked = _to_torch_csr(sp.block_diag([matrices[i] for i in live], format="csr"), torch_device)
    live_sizes = torch.tensor([sizes[i] for i in live], device=torch_device)
    block = torch.repeat_interleave(torch.arange(len(live), device=torch_device), live_sizes)

    def as_vector(parts: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(np.float64)).to(torch_device)

    def per_block(values: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(len(live), dtype=torch.float64, device=torch_device)
        return sums.index_add_(0, block, values)

    b = as_vector([rhss[i] for i in live])
    starts = [
        np.zeros(sizes[i]) if x0s is None or x0s[i] is None else np.asarray(x0s[i]) for i in live
    ]
    x = as_vector(starts)
    inverse_diagonal = 1.0 / as_vector([matrices[i].diagonal() for i in live])
    b_norm = per_block(b * b).sqrt()
    r = b - stacked @ x
    z = inverse_diagonal * r
    p = z.clone()
    rz = per_block(r * z)
    iterations = torch.zeros(len(live), dtype=torch.int64, device=torch_device)
    active = per_block(r * r).sqrt() > tol * b_norm
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        q = stacked @ p
        pq = per_block(p * q)
        step = torch.where(active, rz / torch.where(pq > 0, pq, 1.0), 0.0)
        x += step[block] * p
        r -= step[block] * q
        z = inverse_diagonal * r
        rz_next = per_block(r * z)
        beta = torch.where(active, rz_next / torch.where(rz != 0, rz, 1.0), 0.0)
        p = z + beta[block] * p
        rz = rz_next
        iterations += active.to(torch.int64)
        active = active & (per_block(r * r).sqrt() > tol * b_norm)
    true_residual = per_block((b - stacked @ x) ** 2).sqrt() / b_norm
    solution = x.cpu().numpy()
    bounds = np.cumsum([0] + [sizes[i] for i in live])
    for j, i in enumerate(live):
        results[i] = (
            solution[bounds[j] : bounds[j + 1]],
            int(iterations[j]),
            float(true_residual[j]),
        )
    return results


def torch_jacobi_cg(
    matrix: sp.csr_matrix,
    rhs: np.ndarray,
    x0: np.ndarray | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    device: str = "auto",
) -> tuple[np.ndarray, int, float]:
    """One system through ``batched_jacobi_cg``."""
    return batched_jacobi_cg([matrix], [rhs], [x0], tol, max_iter, device)[0]
