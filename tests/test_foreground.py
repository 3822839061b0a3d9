from __future__ import annotations

import numpy as np
import pytest

from matteforge.tasks.composite import composite
from matteforge.tasks.foreground import estimate_foreground


def test_recovers_a_known_foreground_from_its_composite(astronaut, coffee):
    fg = astronaut[:256, :256]
    bg = coffee[:256, :256]
    yy, xx = np.mgrid[:256, :256]
    alpha = np.clip((128 - np.hypot(yy - 128, xx - 128)) / 20 + 0.5, 0, 1)
    alpha8 = np.rint(alpha * 255).astype(np.uint8)
    image = composite(fg, alpha8, bg, "float")
    est = estimate_foreground(image, alpha8)
    assert est.dtype == np.uint8 and est.shape == fg.shape
    opaque = alpha8 == 255
    partial = (alpha8 > 64) & (alpha8 < 255)
    assert np.abs(est[opaque].astype(int) - fg[opaque]).mean() < 1.0
    # Where the image is a blend, the estimate is closer to the true fg than the image is.
    err_est = np.abs(est[partial].astype(int) - fg[partial]).mean()
    err_img = np.abs(image[partial].astype(int) - fg[partial]).mean()
    assert err_est < err_img


def test_shape_checks():
    with pytest.raises(ValueError):
        estimate_foreground(np.zeros((4, 4), np.uint8), np.zeros((4, 4)))
    with pytest.raises(ValueError):
        estimate_foreground(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4)))


@pytest.mark.parametrize("alpha_dtype", [np.uint8, np.float64])
def test_float32_inputs_give_the_bits_of_the_float64_reference(astronaut, alpha_dtype):
    """pymatting computes in float32 anyway: our float32 hand-over must not change a bit."""
    from pymatting import estimate_foreground_ml

    from matteforge.tasks.foreground import estimate_foreground_background

    image = astronaut[100:260, 150:330]
    yy, xx = np.mgrid[:160, :180]
    alpha8 = np.clip((xx - 40) * 3, 0, 255).astype(np.uint8)  # a ramp: every level occurs
    alpha = alpha8 if alpha_dtype == np.uint8 else alpha8 / 255.0 * (yy < 150)
    ref = alpha8 / 255.0 if alpha_dtype == np.uint8 else alpha
    expected = estimate_foreground_ml(image / 255.0, ref, return_background=True)
    got = estimate_foreground_background(image, alpha)
    for want, have in zip(expected, got, strict=True):
        assert np.array_equal(np.clip(np.rint(want * 255.0), 0, 255).astype(np.uint8), have)


def test_without_pymattings_inner_estimator_the_public_one_gives_the_same(astronaut, monkeypatch):
    import matteforge.tasks.foreground as foreground

    image = astronaut[100:200, 150:260]
    alpha = np.clip((np.arange(110)[None, :] - 30) * 4, 0, 255).astype(np.uint8).repeat(100, 0)
    direct = foreground.estimate_foreground_background(image, alpha)
    monkeypatch.setattr(foreground, "_estimate_fb_ml", None)
    public = foreground.estimate_foreground_background(image, alpha)
    for a, b in zip(direct, public, strict=True):
        assert np.array_equal(a, b)
