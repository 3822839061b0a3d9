"""pymatting's multi-level foreground estimator (Germer et al. 2020) in torch, for a GPU.

Once the models and the alpha solve run on a GPU, pymatting's single-core numba loop would be the
slowest stage of a build.  This is the same method: the same level schedule (1×1 up to full
size), the same nearest-neighbour resizes between levels, the same per-pixel 2×2 least-squares
solve over the 4-neighbourhood with the gradient weight on alpha differences, the same iteration
counts, all in float32.  Two things differ, both on purpose:

* Order of updates.  pymatting sweeps the pixels in place, row by row (Gauss–Seidel), which
  cannot be vectorised.  Here every pixel is updated at once from its neighbours, either all
  together (``"jacobi"``) or in two half-sweeps over the two colours of a checkerboard
  (``"red-black"``, the default): a pixel's four neighbours all have the other colour, so each
  half-sweep is parallel and the pair converges like Gauss–Seidel.  With pymatting's two
  iterations per large level the results are close to pymatting's, not bit-identical (see
  tests/test_foreground_torch.py for how close).
* The per-pixel solve.  pymatting inverts the 2×2 matrix, whose determinant is the difference
  of two numbers near α²(1−α)² that differ by about 4·10⁻⁵ (the regularisation); in float32
  that cancellation costs a few bits.  The same minimiser is written here without it: with
  S = Σ weights, F̄ and B̄ the weighted neighbour means and r = I − αF̄ − (1−α)B̄ the residual,
  F = F̄ + α·r / (α² + (1−α)² + S) and B = B̄ + (1−α)·r / (α² + (1−α)² + S).

Memory: per large level the work is done one colour channel at a time and in place, so at
12 MP the peak is about 19 float32 planes (≈ 0.9 GB), against pymatting's ≈ 15.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Ordering = Literal["red-black", "jacobi"]
# Levels up to this many pixels update all channels in one go (fewer, larger kernels: the small
# levels run 10 iterations each and would otherwise be launch-bound on a GPU); larger levels go
# one channel at a time so the scratch space is 3 planes, not 9.
_ALL_CHANNELS_MAX_PIXELS = 1 << 20


def level_sizes(h0: int, w0: int) -> list[tuple[int, int]]:
    """pymatting's schedule: (h, w) = (h0^(i/n), w0^(i/n)) rounded, i = 0…n, n = ⌈log2 max⌉."""
    n_levels = math.ceil(math.log2(max(h0, w0)))
    if n_levels == 0:  # a 1×1 image: pymatting divides by zero here; one level is the answer
        return [(h0, w0)]
    return [(round(h0 ** (i / n_levels)), round(w0 ** (i / n_levels)))
            for i in range(n_levels + 1)]


def _resize_nearest(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(..., h_src, w_src) → (..., h, w) by pymatting's rule src = dst·n_src // n_dst.

    At the same size it returns ``x`` itself (no copy): callers must not write into the result
    of resizing an input.
    """
    h_src, w_src = x.shape[-2:]
    if (h_src, w_src) == (h, w):
        return x
    ys = torch.arange(h, device=x.device) * h_src // h
    xs = torch.arange(w, device=x.device) * w_src // w
    return x[..., ys[:, None], xs]


def _neighbour_sum(x: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, reg: float,
                   out: torch.Tensor) -> torch.Tensor:
    """out ← Σ over left, right, up, down of weight · neighbour, for x of shape (k, h, w).

    ``wx[y, x]`` weights the edge between columns x and x+1, ``wy[y, x]`` between rows y and
    y+1.  Out of the image pymatting clamps, so a border pixel is its own neighbour there, with
    α difference 0 and weight ``reg``.  Written through slices of ``out``: no temporaries.
    """
    torch.mul(x[..., :-1], wx, out=out[..., 1:])
    torch.mul(x[..., :1], reg, out=out[..., :1])
    out[..., :-1].addcmul_(x[..., 1:], wx)
    out[..., -1:].add_(x[..., -1:], alpha=reg)
    out[..., 1:, :].addcmul_(x[..., :-1, :], wy)
    out[..., :1, :].add_(x[..., :1, :], alpha=reg)
    out[..., :-1, :].addcmul_(x[..., 1:, :], wy)
    out[..., -1:, :].add_(x[..., -1:, :], alpha=reg)
    return out


def _sum_of_weights(wx: torch.Tensor, wy: torch.Tensor, reg: float) -> torch.Tensor:
    """S = the sum of a pixel's four neighbour weights, (h, w)."""
    h, w = wx.shape[0], wy.shape[1]
    s = torch.zeros((1, h, w), dtype=wx.dtype, device=wx.device)
    return _neighbour_sum(torch.ones_like(s), wx, wy, reg, s)[0]


def estimate_fb_ml_torch(
    image: torch.Tensor,
    alpha: torch.Tensor,
    regularization: float = 1e-5,
    n_small_iterations: int = 10,
    n_big_iterations: int = 2,
    small_size: int = 32,
    gradient_weight: float = 1.0,
    ordering: Ordering = "red-black",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background from a (C, H, W) float32 image and an (H, W) alpha in [0, 1].

    Channels first (torch's layout, so each channel plane is contiguous); both inputs on the
    device to compute on.  Returns (F, B), each (C, H, W) float32 in [0, 1] on that device
    (views of one buffer).  The parameters are pymatting's ``estimate_foreground_ml`` ones, with
    the same defaults; ``ordering`` is explained in the module docstring.
    """
    if ordering not in ("red-black", "jacobi"):
        raise ValueError(f"ordering must be 'red-black' or 'jacobi', got {ordering!r}")
    if image.ndim != 3 or alpha.shape != image.shape[1:]:
        raise ValueError(f"expected a (C, H, W) image and an (H, W) alpha, got "
                         f"{tuple(image.shape)} and {tuple(alpha.shape)}")
    depth, h0, w0 = image.shape
    image = image.to(torch.float32).contiguous()
    alpha = alpha.to(device=image.device, dtype=torch.float32).contiguous()
    fb = torch.empty((2 * depth, h0, w0), dtype=torch.float32, device=image.device)
    if h0 == 0 or w0 == 0:
        return fb[:depth], fb[depth:]
    reg, gw = float(regularization), float(gradient_weight)

    # Start from the mean colours of the sure foreground and background, as pymatting does.
    # (Masked sums, one plane at a time, not a matrix product: CUDA may use TF32 for those.)
    fb = torch.stack([torch.where(mask, plane, 0.0).sum() / (mask.sum().item() + 1e-5)
                      for mask in (alpha > 0.9, alpha < 0.1) for plane in image])
    fb = fb.reshape(2 * depth, 1, 1)

    for h, w in level_sizes(h0, w0):
        a0 = _resize_nearest(alpha, h, w)
        img = _resize_nearest(image, h, w)
        fb = _resize_nearest(fb, h, w).contiguous()
        n_iter = n_small_iterations if w <= small_size and h <= small_size else n_big_iterations
        if n_iter <= 0:
            continue
        # Per-level coefficients: the edge weights, 1/S and α/(α²+(1−α)²+S), (1−α)/(…).
        wx = (a0[:, 1:] - a0[:, :-1]).abs_().mul_(gw).add_(reg)
        wy = (a0[1:, :] - a0[:-1, :]).abs_().mul_(gw).add_(reg)
        s = _sum_of_weights(wx, wy, reg)
        a1 = 1.0 - a0
        k = torch.mul(a0, a0).addcmul_(a1, a1).add_(s).reciprocal_()
        inv_s = s.reciprocal_()
        k_f, k_b = torch.mul(a0, k), k.mul_(a1)
        phases: tuple[torch.Tensor | None, ...] = (None,)
        if ordering == "red-black":
            even_y = torch.arange(h, device=fb.device) % 2 == 0
            even_x = torch.arange(w, device=fb.device) % 2 == 0
            red = even_y[:, None] == even_x[None, :]
            phases = (red, ~red)

        chunk = depth if h * w <= _ALL_CHANNELS_MAX_PIXELS else 1
        scratch = torch.empty((3, chunk, h, w), dtype=torch.float32, device=fb.device)
        for _ in range(n_iter):
            for colour in phases:
                for c in range(0, depth, chunk):
                    f, b = fb[c:c + chunk], fb[depth + c:depth + c + chunk]
                    f_bar = _neighbour_sum(f, wx, wy, reg, scratch[0]).mul_(inv_s)
                    b_bar = _neighbour_sum(b, wx, wy, reg, scratch[1]).mul_(inv_s)
                    r = torch.addcmul(img[c:c + chunk], a0, f_bar, value=-1, out=scratch[2])
                    r.addcmul_(a1, b_bar, value=-1)
                    f_new = f_bar.addcmul_(k_f, r).clamp_(0.0, 1.0)
                    b_new = b_bar.addcmul_(k_b, r).clamp_(0.0, 1.0)
                    if colour is None:
                        f.copy_(f_new)
                        b.copy_(b_new)
                    else:
                        torch.where(colour, f_new, f, out=f)
                        torch.where(colour, b_new, b, out=b)
        del scratch, wx, wy, s, inv_s, a1, k_f, k_b, phases
    return fb[:depth], fb[depth:]
