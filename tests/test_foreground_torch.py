"""The torch port of pymatting's multi-level foreground estimator, run on torch's CPU device.

The port updates pixels in parallel (red-black by default) where pymatting sweeps them in place,
so after pymatting's 2 iterations per large level the two differ a little.  The thresholds below
are about 1.5x the worst seen when this was written (8-bit levels): over the 10 P3M portraits,
|ΔF| where α > 0.1 had a per-image mean of at most 0.21 (0.12 over all) and a 99th percentile
of at most 6; |ΔB| where α < 0.9 a mean of at most 0.19 and a 99th percentile of at most 5.
Jacobi ordering was about twice as far (mean 0.29, 99th percentile up to 13).  Given enough
iterations both orderings reach pymatting's fixed point (|Δ| < 0.005 levels): the equations are
the same, only the order of the updates differs.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pymatting import estimate_foreground_ml
from scipy.ndimage import binary_erosion, gaussian_filter

from matteforge.tasks.foreground import estimate_foreground, estimate_foreground_background
from matteforge.tasks.foreground_torch import estimate_fb_ml_torch, level_sizes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _portraits() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from conftest import shared_data

    root = shared_data("p3m_figure_gt")
    return [(path.name, np.asarray(Image.open(path).convert("RGB")),
             np.asarray(Image.open(root / "alpha" / path.name).convert("L")))
            for path in sorted((root / "image").glob("*.png"))]


def _soft_alpha(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A head-and-shoulders ellipse with a noisy soft edge (about 6 % of pixels partial)."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h * 0.55) / (h * 0.42), (xx - w * 0.5) / (w * 0.3))
    noise = gaussian_filter(np.random.default_rng(seed).normal(size=(h, w)), 3) * 8
    return np.rint(np.clip((1 - r) * 12 + 0.5 + noise, 0, 1) * 255).astype(np.uint8)


def _differences(image: np.ndarray, alpha8: np.ndarray, orderings: tuple[str, ...] = ("red-black",)
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per ordering, |ΔF| where α > 0.1 and |ΔB| where α < 0.9, torch vs pymatting, in levels."""
    want_f, want_b = estimate_foreground_background(image, alpha8)
    a = alpha8 / 255.0
    out = []
    for ordering in orderings:
        if ordering == "red-black":  # the default, through the public function
            have_f, have_b = estimate_foreground_background(image, alpha8, device="cpu")
        else:
            f, b = estimate_fb_ml_torch(torch.from_numpy(image).permute(2, 0, 1) / 255.0,
                                        torch.from_numpy(alpha8) / 255.0, ordering=ordering)
            have_f, have_b = (np.rint(x.permute(1, 2, 0).numpy() * 255) for x in (f, b))
        out.append((np.abs(want_f.astype(float) - have_f)[a > 0.1],
                    np.abs(want_b.astype(float) - have_b)[a < 0.9]))
    return out


@pytest.fixture(scope="module")
def portrait_differences() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Red-black and Jacobi against pymatting on each P3M portrait (one pymatting run each)."""
    return {name: _differences(image, alpha8, ("red-black", "jacobi"))
            for name, image, alpha8 in _portraits()}


def test_close_to_pymatting_on_real_portraits(portrait_differences):
    for name, ((d_f, d_b), _) in portrait_differences.items():
        assert d_f.mean() < 0.3 and np.percentile(d_f, 99) <= 8, name
        assert d_b.mean() < 0.3 and np.percentile(d_b, 99) <= 7, name
    assert np.mean([d[0][0].mean() for d in portrait_differences.values()]) < 0.2


def test_red_black_is_closer_to_pymatting_than_jacobi(portrait_differences):
    red_black, jacobi = (np.mean([d[i][0].mean() for d in portrait_differences.values()])
                         for i in (0, 1))
    assert red_black < 0.6 * jacobi


def test_close_to_pymatting_on_a_synthetic_matte(astronaut):
    """Runs without ../shared too; measured: F mean 0.20–0.22, p99 5; B mean 0.14–0.15, p99 4."""
    for seed in (0, 1):
        [(d_f, d_b)] = _differences(astronaut, _soft_alpha(512, 512, seed))
        assert d_f.mean() < 0.3 and np.percentile(d_f, 99) <= 7
        assert d_b.mean() < 0.25 and np.percentile(d_b, 99) <= 6


def test_known_pixels_keep_the_image(astronaut):
    """Where α = 1, F is the image; where α = 0, B is (pymatting: the same to a level or two)."""
    alpha8 = _soft_alpha(512, 512)
    fg, bg = estimate_foreground_background(astronaut, alpha8, device="cpu")
    for values, known in ((fg, alpha8 == 255), (bg, alpha8 == 0)):
        err = np.abs(values[known].astype(int) - astronaut[known])
        assert err.mean() < 0.1 and np.percentile(err, 99) <= 2
        inside = binary_erosion(known, np.ones((3, 3)), border_value=1)
        assert np.abs(values[inside].astype(int) - astronaut[inside]).max() <= 1


@pytest.mark.parametrize(("ordering", "iterations"), [("red-black", 2000), ("jacobi", 4000)])
def test_converges_to_pymattings_fixed_point(astronaut, ordering, iterations):
    """Same equations: iterated to convergence, both land where pymatting does (measured
    0.0024 and 0.0057 levels at most)."""
    image = np.ascontiguousarray(astronaut[::12, ::9]).astype(np.float32) / np.float32(255)
    alpha = _soft_alpha(*image.shape[:2]).astype(np.float32) / np.float32(255)
    want = estimate_foreground_ml(image, alpha, n_big_iterations=iterations,
                                  return_background=True)
    have = estimate_fb_ml_torch(torch.from_numpy(image).permute(2, 0, 1),
                                torch.from_numpy(alpha), n_big_iterations=iterations,
                                ordering=ordering)
    for w, h in zip(want, have, strict=True):
        assert np.abs(w - h.permute(1, 2, 0).numpy()).max() * 255 < 0.02


@pytest.mark.parametrize("shape", [(37, 53), (1, 40), (40, 1), (1, 1), (2, 2)])
def test_shapes_and_dtypes(astronaut, shape):
    image = np.ascontiguousarray(astronaut[: shape[0], : shape[1]])
    alpha8 = np.linspace(0, 255, image.shape[0] * image.shape[1]).reshape(shape).astype(np.uint8)
    fg, bg = estimate_foreground_background(image, alpha8, device="cpu")
    assert fg.dtype == bg.dtype == np.uint8 and fg.shape == bg.shape == image.shape
    f, b = estimate_fb_ml_torch(torch.from_numpy(image).permute(2, 0, 1) / 255.0,
                                torch.from_numpy(alpha8) / 255.0)
    for x in (f, b):
        assert x.dtype == torch.float32 and x.shape == (3, *shape)
        assert x.min() >= 0 and x.max() <= 1
    assert np.array_equal(estimate_foreground(image, alpha8, device="cpu"), fg)


def test_level_schedule_is_pymattings():
    """(h, w) per level as pymatting's numba code computes them (its round and pow)."""
    assert level_sizes(454, 300) == [(1, 1), (2, 2), (4, 4), (8, 7), (15, 13), (30, 24),
                                     (59, 45), (117, 84), (230, 159), (454, 300)]
    assert level_sizes(3000, 4000)[-4:] == [(405, 503), (790, 1004), (1539, 2004), (3000, 4000)]
    assert level_sizes(1, 1) == [(1, 1)]  # pymatting divides by zero here


def test_default_device_is_pymatting_bit_for_bit(astronaut):
    image = astronaut[200:330, 180:290]
    alpha8 = _soft_alpha(*image.shape[:2])
    want = estimate_foreground_ml(image / 255.0, alpha8 / 255.0, return_background=True)
    want = [np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8) for x in want]
    have = estimate_foreground_background(image, alpha8)
    assert all(np.array_equal(w, h) for w, h in zip(want, have, strict=True))
    assert np.array_equal(estimate_foreground(image, alpha8, device=None), want[0])


def test_float_alpha_is_clipped_and_left_as_it_was(astronaut):
    image = astronaut[:64, :64]
    alpha = np.linspace(-0.2, 1.2, 64 * 64, dtype=np.float32).reshape(64, 64)
    before = alpha.copy()
    got = estimate_foreground_background(image, alpha, device="cpu")
    assert np.array_equal(alpha, before)
    clipped = estimate_foreground_background(image, np.clip(alpha, 0, 1), device="cpu")
    assert all(np.array_equal(g, c) for g, c in zip(got, clipped, strict=True))


def test_auto_runs_on_the_cpu_without_cuda(astronaut):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: 'auto' means CUDA here")
    image, alpha8 = astronaut[:48, :40], _soft_alpha(48, 40)
    auto = estimate_foreground_background(image, alpha8, device="auto")
    cpu = estimate_foreground_background(image, alpha8, device="cpu")
    assert all(np.array_equal(a, c) for a, c in zip(auto, cpu, strict=True))


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_names_the_fix(astronaut, device):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match=r"no CUDA device.*'cpu' or 'auto'"):
        estimate_foreground_background(astronaut[:8, :8], np.zeros((8, 8), np.uint8), device)


def test_bad_arguments():
    with pytest.raises(ValueError, match="ordering"):
        estimate_fb_ml_torch(torch.zeros(3, 4, 4), torch.zeros(4, 4), ordering="gauss-seidel")
    with pytest.raises(ValueError, match="expected a"):
        estimate_fb_ml_torch(torch.zeros(4, 4, 3), torch.zeros(4, 4))


def test_the_default_path_does_not_import_torch():
    code = ("import sys, matteforge.tasks.foreground as f; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
