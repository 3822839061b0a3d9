from __future__ import annotations

import numpy as np
import pytest

from matteforge.tasks.trimap import band_width, make_trimap, structuring_element, unknown_fraction


def _disk(size: int = 101, radius: int = 30) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - size // 2) ** 2 + (xx - size // 2) ** 2) <= radius**2).astype(np.float32)


@pytest.mark.parametrize("shape", ["ellipse", "rect", "cross"])
def test_values_are_exactly_0_128_255(shape):
    tri = make_trimap(_disk(), kernel_shape=shape, half_width=4)
    assert tri.dtype == np.uint8
    assert set(np.unique(tri)) == {0, 128, 255}


def test_band_straddles_the_mask_edge_with_the_given_width():
    tri = make_trimap(_disk(radius=30), half_width=5)
    row = tri[50]  # horizontal line through the centre: edge at x = 20 and x = 80
    unknown = np.flatnonzero(row == 128)
    left = unknown[unknown < 50]
    assert left.min() == 20 - 5 and left.max() == 20 + 5
    assert row[50] == 255 and row[0] == 0


def test_wider_band_has_more_unknown():
    narrow = unknown_fraction(make_trimap(_disk(), half_width=2))
    wide = unknown_fraction(make_trimap(_disk(), half_width=8))
    assert 0 < narrow < wide


def test_uint8_mask_input_matches_float_probability():
    prob = _disk()
    assert np.array_equal(
        make_trimap(prob, half_width=3), make_trimap((prob * 255).astype(np.uint8), half_width=3)
    )


def test_band_width_scales_with_image_and_respects_minimum():
    assert band_width(4000, 3000, fraction=0.01) == 40
    assert band_width(100, 80, fraction=0.01, minimum=3) == 3
    assert band_width(4000, 3000, fixed=7) == 7


def test_bad_arguments_raise_clearly():
    with pytest.raises(ValueError, match="kernel shape"):
        structuring_element("hexagon", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HxW"):
        make_trimap(np.zeros((4, 4, 3)))


def test_trimap_of_real_photo_mask_has_band_only_near_edges(astronaut):
    gray = astronaut.mean(axis=2) / 255.0
    tri = make_trimap(gray, threshold=0.5, half_width=3)
    assert 0.0 < unknown_fraction(tri) < 0.6
