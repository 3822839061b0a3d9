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
