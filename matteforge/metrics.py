"""Alpha-matting error measures as the Deep Image Matting (Xu et al. 2017) evaluation defines them.

Published Composition-1K numbers come from the authors' MATLAB scripts, and Python ports often
differ from them in small ways (threshold rounding, filter size, normalisation, scaling), which
makes numbers incomparable. These functions follow the MATLAB conventions on purpose:

* SAD = Σ|p − g| / 1000 and MSE = mean (p − g)², over the region, alpha in [0, 1].
* Gradient: both mattes min-max normalised over the whole image, first derivatives of a Gaussian
  (σ = 1.4, kernel half-size from a 1e-2 truncation, unit-energy, replicated borders), then
  Σ(|∇p| − |∇g|)² / 1000 over the region.
* Connectivity: for thresholds 0, 0.1, …, 1 the largest 4-connected component of
  (p ≥ t) & (g ≥ t) over the whole image; each pixel's level ℓ is the last threshold before it
  left that component (1 if it never did); d = α − ℓ, φ = 1 − d·[d ≥ 0.15];
  Σ|φ_p − φ_g| / 1000 over the region.

The region is a boolean mask (usually the trimap's unknown pixels, see ``unknown_region``); the
default is the whole image. Mattes may be uint8 (0..255) or float in [0, 1].
"""

import itertools
import math

import numpy as np
from scipy import ndimage

TRIMAP_UNKNOWN = 128
# The MATLAB scripts divide the sums by 1000 because Composition-1K images are large.
SUM_SCALE = 1000.0
CONNECTIVITY_MIN_DROP = 0.15


def unknown_region(trimap: np.ndarray) -> np.ndarray:
    """Boolean mask of the trimap's unknown pixels (value 128), where the benchmarks score."""
    return np.asarray(trimap) == TRIMAP_UNKNOWN


def _as_alpha(matte: np.ndarray) -> np.ndarray:
    """float64 alpha in [0, 1]; uint8 mattes are divided by 255 as the MATLAB scripts do."""
    matte = np.asarray(matte)
    if matte.dtype == np.uint8:
        return matte.astype(np.float64) / 255.0
    if matte.dtype == np.bool_ or np.issubdtype(matte.dtype, np.floating):
        return matte.astype(np.float64)
    raise TypeError(f"matte must be uint8 or float, got {matte.dtype}")


def _prepare(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, g = _as_alpha(pred), _as_alpha(gt)
    if p.ndim != 2 or p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must be the same HxW shape")
    if mask is None:
        region = np.ones(p.shape, dtype=bool)
    else:
        region = np.asarray(mask, dtype=bool)
        if region.shape != p.shape:
            raise ValueError(f"mask {region.shape} does not match the mattes {p.shape}")
    return p, g, region


def sad(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Sum of absolute differences over the region, in thousands."""
    p, g, region = _prepare(pred, gt, mask)
    return float(np.abs(p - g)[region].sum() / SUM_SCALE)


def mse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared difference over the region (papers print it ×1e3); 0 for an empty region.

    An empty region has nothing wrong in it, and 0 keeps dataset averages free of NaN.
    """
    p, g, region = _prepare(pred, gt, mask)
    if not region.any():
        return 0.0
    return float(np.mean((p - g)[region] ** 2))


def gaussian_derivative_kernels(sigma: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    """``(d/dx, d/dy)`` kernels: Gaussian across, derivative of Gaussian along, unit energy.

    The half-size is where the Gaussian falls to 1e-2 of a unit-area peak, as in the
    ``gaussgradient`` routine the DIM scripts call (σ = 1.4 gives 9x9 kernels).
    """
    epsilon = 1e-2
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(u**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dgauss = -u * gauss / sigma**2
    kx = np.outer(gauss, dgauss)
    kx /= np.sqrt(np.sum(kx**2))
    return kx, kx.T.copy()


def _min_max(a: np.ndarray) -> np.ndarray:
    """Min-max normalise like MATLAB's mat2gray; a constant matte has no gradient either way."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else a


def gradient_magnitude(alpha: np.ndarray, sigma: float = 1.4) -> np.ndarray:
    """|∇α| with Gaussian-derivative filters on the min-max normalised matte."""
    kx, ky = gaussian_derivative_kernels(sigma)
    a = _min_max(alpha)
    gx = ndimage.convolve(a, kx, mode="nearest")
    gy = ndimage.convolve(a, ky, mode="nearest")
    return np.hypot(gx, gy)


def gradient_error(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, sigma: float = 1.4
) -> float:
    """Σ(|∇p| − |∇g|)² / 1000 over the region: penalises blur and spurious edges."""
    p, g, region = _prepare(pred, gt, mask)
    diff = gradient_magnitude(p, sigma) - gradient_magnitude(g, sigma)
    return float(np.sum(diff[region] ** 2) / SUM_SCALE)


def _thresholds(step: float) -> np.ndarray:
    """0, step, …, 1, rounded to decimals so that e.g. 153/255 ≥ 0.6 holds as in MATLAB.

    Plain ``k * 0.1`` gives 0.6000000000000001 and would drop exact-threshold pixels.
    """
    count = math.floor(1.0 / step + 1e-9)
    return np.round(np.arange(count + 1) * step, 10)


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """Largest 4-connected component; ties go to the one met first in column-major order.

    Labelling the transpose numbers components in MATLAB's (column-major) order, so argmax's
    first-wins rule picks what ``max`` over ``bwconncomp`` sizes picks.
    """
    labels, count = ndimage.label(binary.T)
    if count == 0:
        return np.zeros_like(binary)
    sizes = np.bincount(labels.ravel())[1:]
    return (labels == np.argmax(sizes) + 1).T


def connectivity_levels(pred: np.ndarray, gt: np.ndarray, step: float = 0.1) -> np.ndarray:
    """Per-pixel ℓ: the last threshold at which the pixel was still in the common component."""
    thresholds = _thresholds(step)
    level = np.full(pred.shape, -1.0)
    for previous, threshold in itertools.pairwise(thresholds):
        component = _largest_component((pred >= threshold) & (gt >= threshold))
        dropped = (level == -1) & ~component
        level[dropped] = previous
    level[level == -1] = 1.0
    return level


def connectivity_error(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, step: float = 0.1
) -> float:
    """Σ|φ_p − φ_g| / 1000 over the region: penalises alpha cut off from the main body."""
    p, g, region = _prepare(pred, gt, mask)
    level = connectivity_levels(p, g, step)
    dp, dg = p - level, g - level
    phi_p = 1.0 - dp * (dp >= CONNECTIVITY_MIN_DROP)
    phi_g = 1.0 - dg * (dg >= CONNECTIVITY_MIN_DROP)
    return float(np.abs(phi_p - phi_g)[region].sum() / SUM_SCALE)
