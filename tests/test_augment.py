"""The on-the-fly augmentation steps (tasks/augment.py), each on its own."""

from __future__ import annotations

import numpy as np
import pytest

from matteforge.tasks import augment


def _disc(size: int = 101, radius: int = 30, soft: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - size // 2, xx - size // 2)
    if soft:  # a 4 px linear ramp at the edge
        return np.clip(np.rint((radius - distance) / 4 * 255 + 127.5), 0, 255).astype(np.uint8)
    return np.where(distance <= radius, 255, 0).astype(np.uint8)


def _rgb(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_mixed_foregrounds_composite_like_one_over_the_other():
    rng = np.random.default_rng(0)
    fg1, fg2, bg = (_rgb(rng, (40, 50)) for _ in range(3))
    a1, a2 = (rng.integers(0, 256, (40, 50), dtype=np.uint8) for _ in range(2))
    fg, alpha = augment.mix_foregrounds(fg1, a1, fg2, a2)
    x1, x2 = a1[..., None] / 255.0, a2[..., None] / 255.0
    over = x1 * fg1 + (1 - x1) * (x2 * fg2 + (1 - x2) * bg)  # F1 over (F2 over B)
    mixed = augment.blend(fg / 255.0, alpha / 255.0, bg / 255.0) * 255.0
    assert np.abs(mixed - over).max() <= 1.5  # both outputs are stored as 8 bits
    assert np.abs(alpha - (1 - (1 - a1 / 255.0) * (1 - a2 / 255.0)) * 255).max() <= 0.5


def test_mixing_keeps_each_foreground_where_the_other_is_clear_and_resizes_the_second():
    rng = np.random.default_rng(1)
    fg1, a1 = _rgb(rng, (30, 40)), np.zeros((30, 40), np.uint8)
    a1[:, :20] = 255
    fg2, a2 = _rgb(rng, (60, 80)), np.zeros((60, 80), np.uint8)
    a2[:, 40:] = 255
    fg, alpha = augment.mix_foregrounds(fg1, a1, fg2, a2)
    assert fg.shape == (30, 40, 3) and alpha.shape == (30, 40)
    assert np.all(alpha[:, :19] == 255) and np.all(alpha[:, 21:] == 255)
    assert np.array_equal(fg[:, :19], fg1[:, :19])


def test_affine_with_neutral_ranges_is_the_identity_and_flip_mirrors():
    rng = np.random.default_rng(2)
    fg, alpha = _rgb(rng, (33, 47)), _disc(47, 15)[:33]
    neutral = {"degrees": 0.0, "scale": (1.0, 1.0), "shear": 0.0}
    same_fg, same_alpha = augment.random_affine(fg, alpha, rng, flip=0.0, **neutral)
    assert np.array_equal(same_fg, fg) and np.array_equal(same_alpha, alpha)
    flip_fg, flip_alpha = augment.random_affine(fg, alpha, rng, flip=1.0, **neutral)
    assert np.array_equal(flip_fg, fg[:, ::-1]) and np.array_equal(flip_alpha, alpha[:, ::-1])


def test_affine_scales_about_the_centre_and_keeps_opaque_pixels_exact():
    alpha = _disc(201, 40)
    fg = np.full((201, 201, 3), 200, np.uint8)
    rng = np.random.default_rng(3)
    _, bigger = augment.random_affine(fg, alpha, rng, degrees=0, scale=(1.25, 1.25), shear=0)
    ratio = np.count_nonzero(bigger >= 128) / np.count_nonzero(alpha >= 128)
    assert ratio == pytest.approx(1.25**2, rel=0.03)
    assert bigger[100, 100] == 255 and bigger[0, 0] == 0
    _, turned = augment.random_affine(fg, alpha, np.random.default_rng(4))
    assert turned[100, 100] == 255 and set(np.unique(turned)) >= {0, 255}


def test_affine_draws_depend_only_on_the_generator_state():
    fg, alpha = _rgb(np.random.default_rng(5), (64, 64)), _disc(64, 20)
    one = augment.random_affine(fg, alpha, np.random.default_rng(7))
    again = augment.random_affine(fg, alpha, np.random.default_rng(7))
    other = augment.random_affine(fg, alpha, np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(one, again, strict=True))
    assert not np.array_equal(one[1], other[1])


@pytest.mark.parametrize(("fg_width", "bg_width"), [(1, 1), (3, 11), (29, 5), (29, 29)])
def test_trimap_band_reaches_the_erosion_widths_into_each_side(fg_width, bg_width):
    alpha = np.zeros((20, 120), np.uint8)
    alpha[:, :60] = 255  # a straight edge between columns 59 and 60
    row = augment.trimap_from_alpha(alpha, fg_width, bg_width)[10]
    unknown = np.flatnonzero(row == augment.UNKNOWN)
    assert unknown.min() == 60 - fg_width and unknown.max() == 60 + bg_width - 1
    assert row[0] == 255 and row[-1] == 0


def test_every_partial_alpha_pixel_is_unknown_and_values_are_0_128_255():
    alpha = _disc(101, 30, soft=True)
    trimap = augment.trimap_from_alpha(alpha, 2, 2)
    partial = (alpha > 0) & (alpha < 255)
    assert partial.any() and np.all(trimap[partial] == augment.UNKNOWN)
    assert set(np.unique(trimap)) == {0, 128, 255}
    assert np.all(alpha[trimap == 255] == 255) and np.all(alpha[trimap == 0] == 0)


def test_random_trimap_draws_widths_from_1_to_29_and_uses_them():
    alpha = _disc(81, 25)
    rng = np.random.default_rng(9)
    widths = []
    for _ in range(300):
        trimap, (fg_width, bg_width) = augment.random_trimap(alpha, rng)
        widths += [fg_width, bg_width]
        assert np.array_equal(trimap, augment.trimap_from_alpha(alpha, fg_width, bg_width))
    assert min(widths) == 1 and max(widths) == augment.MAX_EROSION == 29


@pytest.mark.parametrize(("y", "x"), [(0, 0), (99, 149), (50, 75), (3, 140)])
def test_crop_is_centred_on_an_unknown_pixel_and_stays_inside(y, x):
    unknown = np.zeros((100, 150), bool)
    unknown[y, x] = True
    top, left, size = augment.choose_crop(unknown, 64, np.random.default_rng(0))
    assert size == 64 and 0 <= top <= 100 - 64 and 0 <= left <= 150 - 64
    assert top <= y < top + size and left <= x < left + size
    if 32 <= y <= 100 - 32 and 32 <= x <= 150 - 32:
        assert (top + 32, left + 32) == (y, x)


def test_crop_is_limited_by_the_image_and_falls_back_without_unknown_pixels():
    unknown = np.zeros((40, 90), bool)
    assert augment.choose_crop(unknown, 64, np.random.default_rng(0))[2] == 40
    top, left, size = augment.choose_crop(unknown, 16, np.random.default_rng(1))
    assert size == 16 and 0 <= top <= 24 and 0 <= left <= 74


def test_crop_resize_keeps_label_values_with_nearest_and_sizes_the_output():
    trimap = augment.trimap_from_alpha(_disc(101, 30), 4, 4)
    box = (10, 10, 80)
    for out_size in (40, 80, 160):
        labels = augment.crop_resize(trimap, box, out_size, nearest=True)
        assert labels.shape == (out_size, out_size)
        assert set(np.unique(labels)) == {0, 128, 255}
    image = _rgb(np.random.default_rng(2), (101, 101))
    assert augment.crop_resize(image, box, 50).shape == (50, 50, 3)
    assert np.array_equal(augment.crop_resize(image, box, 80), image[10:90, 10:90])


def test_colour_jitter_without_amplitude_is_the_identity():
    rgb = np.random.default_rng(3).random((20, 30, 3), dtype=np.float32)
    same = augment.color_jitter(rgb, np.random.default_rng(0), hue=0, saturation=0, value=0)
    assert np.abs(same - rgb).max() < 1e-5


def test_colour_jitter_turns_colours_keeps_greys_and_stays_in_range():
    rgb = np.random.default_rng(4).random((20, 30, 3), dtype=np.float32)
    rgb[0] = 0.4  # a grey row
    out = augment.color_jitter(rgb, np.random.default_rng(5), hue=0.1, saturation=0, value=0)
    assert np.abs(out[0] - 0.4).max() < 1e-5
    assert np.abs(out[1:] - rgb[1:]).max() > 0.01
    strong = augment.color_jitter(rgb, np.random.default_rng(6), hue=0.5, saturation=0.9,
                                  value=0.9)
    assert strong.dtype == np.float32 and strong.min() >= 0.0 and strong.max() <= 1.0


def test_background_window_fills_the_target_and_varies_with_the_generator():
    bg = _rgb(np.random.default_rng(7), (300, 500))
    centred = augment.background_window(bg, 100, 100)
    assert centred.shape == (100, 100, 3)
    assert np.array_equal(centred, augment.background_window(bg, 100, 100))
    a = augment.background_window(bg, 100, 100, np.random.default_rng(1))
    b = augment.background_window(bg, 100, 100, np.random.default_rng(2))
    assert a.shape == b.shape == (100, 100, 3) and not np.array_equal(a, b)
    small = augment.background_window(bg[:20, :30], 64, 48, np.random.default_rng(3))
    assert small.shape == (64, 48, 3)  # enlarged when smaller than the target


def test_blend_is_the_compositing_equation():
    rng = np.random.default_rng(8)
    fg, bg = rng.random((5, 6, 3)), rng.random((5, 6, 3))
    alpha = rng.random((5, 6))
    out = augment.blend(fg, alpha, bg)
    assert out.dtype == np.float32
    assert np.allclose(out, alpha[..., None] * fg + (1 - alpha[..., None]) * bg, atol=1e-6)
