"""Foreground estimation: recover F from the image and alpha, so composites carry no old background.

We use pymatting's multi-level estimator (Germer et al. 2020) rather than writing our own: it is
the reference implementation of the method, numba-compiled, about 0.2 s per megapixel on one
core, and well tested.  This module only adapts dtypes and clamps the result.  The estimator
finds the background B together with F at no extra cost; the quality check
(:mod:`matteforge.tasks.quality`) uses it to see how well α, F and B explain the image.

With a ``device`` the same method runs in torch instead (:mod:`matteforge.tasks.foreground_torch`):
on a GPU this stage would otherwise dominate once the models and the alpha solve run there.
Its results are close to pymatting's, not bit-identical (it updates pixels in parallel), so the
default, ``device=None``, stays on pymatting; torch is imported only when a device is asked for.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import numpy as np
from pymatting import estimate_foreground_ml

try:  # the estimator itself: its public wrapper copies float32 input once more (~190 MB at 12 MP)
    from pymatting.foreground.estimate_foreground_ml import _estimate_fb_ml
except ImportError:  # another pymatting layout: the public function, the same result
    _estimate_fb_ml = None
# The wrapper's defaults, read from the installed pymatting, so both paths solve the same problem.
_DEFAULTS = {name: p.default for name, p in inspect.signature(estimate_foreground_ml)
             .parameters.items() if p.default is not inspect.Parameter.empty}


def _estimator() -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if _estimate_fb_ml is None:
        return lambda image, alpha: estimate_foreground_ml(image, alpha, return_background=True)
    d = _DEFAULTS
    return lambda image, alpha: _estimate_fb_ml(
        image, alpha, d["regularization"], d["n_small_iterations"], d["n_big_iterations"],
        d["small_size"], d["gradient_weight"])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float32 → uint8, in place (the float array is spent): no full-size temporaries."""
    np.multiply(x, np.float32(255), out=x)
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def _estimate_with_torch(
    image: np.ndarray, alpha: np.ndarray, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """The torch path: the same uint8/float hand-over as below, converted on the device.

    uint8 goes to the device as is (a quarter of the float32 bytes) and comes back as uint8.
    """
    import torch

    from matteforge.tasks.alpha_torch import resolve_device
    from matteforge.tasks.foreground_torch import estimate_fb_ml_torch

    def on_device(x: np.ndarray) -> torch.Tensor:
        with warnings.catch_warnings():  # a read-only array (e.g. from PIL): we only read it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(x)).to(dev)

    dev = resolve_device(device)
    h, w = alpha.shape
    pixels = on_device(image if image.dtype == np.uint8 else image.astype(np.float32))
    img = torch.empty((3, h, w), dtype=torch.float32, device=dev)
    img.copy_(pixels.permute(2, 0, 1))  # channels first, as the estimator works per plane
    img.div_(255)
    del pixels
    # copy=True: a float32 alpha on the CPU would otherwise share the caller's memory (clamp_)
    a = on_device(alpha).to(torch.float32, copy=True)
    if alpha.dtype == np.uint8:
        a.div_(255)
    d = _DEFAULTS
    fg, bg = estimate_fb_ml_torch(
        img, a.clamp_(0.0, 1.0), d["regularization"], d["n_small_iterations"],
        d["n_big_iterations"], d["small_size"], d["gradient_weight"])
    del img, a

    def to_uint8(x: torch.Tensor) -> np.ndarray:  # as _to_uint8, in place on the device
        x = x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        return x.permute(1, 2, 0).contiguous().cpu().numpy()

    return to_uint8(fg), to_uint8(bg)


def estimate_foreground_background(
    image: np.ndarray, alpha: np.ndarray, device: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """HxWx3 uint8 RGB + HxW alpha (float in [0, 1] or uint8) → (F, B), each HxWx3 uint8.

    ``device=None`` runs pymatting (the reference, the default).  A torch device (``"cpu"``,
    ``"cuda"``, ``"cuda:0"``, or ``"auto"``: CUDA when present, else the CPU) runs the torch
    port there; asking for CUDA where there is none raises a ValueError naming the fix.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if alpha.shape != image.shape[:2]:
        raise ValueError(f"alpha shape {alpha.shape} does not match image {image.shape[:2]}")
    if device is not None:
        return _estimate_with_torch(image, alpha, device)
    # pymatting works in float32 whatever it is given: handing it float32 saves the float64
    # copies (~380 MB at 12 MP) and gives the same bits, since x/255 rounded once to float32
    # equals x/255 rounded to float64 and then to float32 for every 8-bit x.
    a = alpha.astype(np.float32) / np.float32(255) if alpha.dtype == np.uint8 else alpha
    fg, bg = _estimator()(image.astype(np.float32) / np.float32(255),
                          np.clip(a, 0.0, 1.0, dtype=np.float32))
    return _to_uint8(fg), _to_uint8(bg)


def estimate_foreground(
    image: np.ndarray, alpha: np.ndarray, device: str | None = None
) -> np.ndarray:
    """HxWx3 uint8 RGB + HxW alpha (float in [0, 1] or uint8) → HxWx3 uint8 foreground.

    ``device`` as in :func:`estimate_foreground_background`.
    """
    return estimate_foreground_background(image, alpha, device)[0]
