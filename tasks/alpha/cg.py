"""Conjugate gradients for the matting system: the preconditioned loop and where it runs.

The eliminated system is symmetric positive definite, so CG is the solver; what varies is the
preconditioner (``amg``'s V-cycle, or Jacobi without pyamg) and the device (scipy on the CPU, or
``tasks.alpha_torch``'s batched Jacobi CG on a GPU). Both choices are made here, in one place,
for one system (``solve_system``) or a batch of them (``solve_systems``).
"""

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from matteforge.tasks.alpha.amg import amg_preconditioner, has_pyamg


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


def resolve_solver_device(device: str | None) -> str | None:
    """The torch device the solve runs on, or None for the scipy CPU path ("auto": GPU if any)."""
    if device is None:
        return None
    if device == "auto":
        from matteforge.tasks.alpha_torch import cuda_available

        return "cuda" if cuda_available() else None
    return device


def _check_preconditioner(preconditioner: str) -> None:
    if preconditioner not in ("auto", "amg", "jacobi"):
        raise ValueError(
            f"preconditioner must be 'auto', 'amg' or 'jacobi', got {preconditioner!r}"
        )


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
    _check_preconditioner(preconditioner)
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


def solve_systems(
    matrices: Sequence[sp.csr_matrix],
    rhss: Sequence[np.ndarray],
    x0s: Sequence[np.ndarray | None],
    tol: float = 1e-6,
    max_iter: int = 2000,
    preconditioner: str = "auto",
    device: str | None = None,
) -> list[tuple[np.ndarray, int, float]]:
    """``solve_system`` for several systems: one by one on the CPU, or all at once with torch.

    On a torch device every system goes to ``tasks.alpha_torch.batched_jacobi_cg`` together, so
    a shard pays one transfer and one solve loop (each system keeps its own step sizes and
    stopping test); ``preconditioner`` is checked but ignored there, as in ``solve_system``.
    Without a device each is solved alone, with AMG by default. An empty batch resolves no
    device and costs nothing.
    """
    if not matrices:
        return []
    torch_device = resolve_solver_device(device)
    if torch_device is None:
        return [
            solve_system(matrix, rhs, x0, tol, max_iter, preconditioner)
            for matrix, rhs, x0 in zip(matrices, rhss, x0s, strict=True)
        ]
    _check_preconditioner(preconditioner)
    from matteforge.tasks.alpha_torch import batched_jacobi_cg

    return batched_jacobi_cg(list(matrices), list(rhss), list(x0s), tol, max_iter, torch_device)
