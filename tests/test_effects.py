from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from matteforge.tasks.effects import (
    EFFECTS,
    EffectSpec,
    adjust_tone,
    apply_background_effects,
    apply_foreground_effects,
    bokeh_blur,
    disc_kernel,
    mosaic,
    motion_blur,
    retouch_skin,
    sample_effects,
    skin_mask,
    specs_from_json,
    specs_to_json,
    zoom_blur,
)


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    from skimage import data

    return data.chelsea()  # 300x451: odd, non-square sizes catch off-by-one tiling


@pytest.fixture(scope="module")
def person_alpha() -> np.ndarray:
    """A hand-drawn matte for skimage's astronaut: head and shoulders, feathered edge."""
    alpha = np.zeros((512, 512), np.float32)
    cv2.ellipse(alpha, (226, 112), (72, 100), 0, 0, 360, 1.0, -1)  # head and hair
    cv2.ellipse(alpha, (200, 420), (185, 240), 0, 180, 360, 1.0, -1)  # suit, shoulders up
    alpha[420:] = 0
    alpha[420:, 20:370] = 1.0
    return np.clip(cv2.GaussianBlur(alpha, (0, 0), 2.0), 0, 1)


FACE = (slice(100, 165), slice(195, 255))  # cheeks, nose, mouth
NECK_RING = (slice(185, 235), slice(175, 265))  # black collar lining inside the helmet ring


def _laplacian_variance(image: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F).var())


def _local_variance(image: np.ndarray) -> np.ndarray:
    """Per-pixel variance over a 7x7 window of the grey image (texture, pores, blemishes)."""
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    mean = cv2.blur(g, (7, 7))
    return cv2.blur(g * g, (7, 7)) - mean * mean


NONTRIVIAL = {
    "bokeh": lambda im: bokeh_blur(im, 9),
    "motion_blur": lambda im: motion_blur(im, 15, 40.0),
    "zoom_blur": lambda im: zoom_blur(im, 0.1, (0.4, 0.6)),
    "mosaic": lambda im: mosaic(im, 13),
    "tone": lambda im: adjust_tone(im, 0.05, 1.1, 0.8, 0.3),
}
IDENTITY = {
    "bokeh": lambda im: bokeh_blur(im, 0),
    "motion_blur": lambda im: motion_blur(im, 0, 40.0),
    "motion_blur_length_1": lambda im: motion_blur(im, 1, 40.0),
    "zoom_blur": lambda im: zoom_blur(im, 0.0),
    "mosaic": lambda im: mosaic(im, 1),
    "tone": lambda im: adjust_tone(im),
}


@pytest.mark.parametrize("name", sorted(NONTRIVIAL))
def test_each_effect_keeps_shape_and_dtype_and_leaves_its_input_alone(name, chelsea):
    before = chelsea.copy()
    out = NONTRIVIAL[name](chelsea)
    assert out.shape == chelsea.shape and out.dtype == np.uint8
    assert not np.array_equal(out, chelsea)
    assert np.array_equal(chelsea, before)


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_zero_strength_is_the_identity_and_returns_a_new_array(name, chelsea):
    out = IDENTITY[name](chelsea)
    assert np.array_equal(out, chelsea)
    assert not np.shares_memory(out, chelsea)


def test_zero_retouch_is_the_identity(astronaut, person_alpha):
    assert np.array_equal(retouch_skin(astronaut, person_alpha, 0.0), astronaut)


def test_bokeh_removes_high_frequency_energy(astronaut):
    sharp = _laplacian_variance(astronaut)
    small, large = (
        _laplacian_variance(bokeh_blur(astronaut, 4)),
        _laplacian_variance(bokeh_blur(astronaut, 12)),
    )
    assert large < small < 0.2 * sharp


@pytest.mark.parametrize("radius", [3, 7, 12])
def test_bokeh_turns_a_bright_point_into_a_disc_of_the_radius(radius):
    image = np.zeros((61, 61, 3), np.uint8)
    image[30, 30] = 255
    out = bokeh_blur(image, radius)
    lit = out[..., 0] > 0
    expected = np.zeros((61, 61), bool)
    expected[30 - radius : 31 + radius, 30 - radius : 31 + radius] = disc_kernel(radius) > 0
    assert np.array_equal(lit, expected)
    ys, xs = np.nonzero(lit)
    assert np.hypot(ys - 30, xs - 30).max() == pytest.approx(radius, abs=0.5)
    # The disc is flat (a lens aperture, not a Gaussian blob) ...
    assert len(np.unique(out[lit])) == 1
    # ... and the highlight boost keeps it brighter than a plain average would.
    assert out[30, 30, 0] > bokeh_blur(image, radius, highlight_gamma=1.0)[30, 30, 0] * 2


@pytest.mark.parametrize(("length", "angle"), [(21, 0.0), (21, 30.0), (15, 90.0), (31, 135.0)])
def test_motion_blur_turns_a_dot_into_a_line_of_that_length_and_angle(length, angle):
    image = np.zeros((81, 81, 3), np.uint8)
    image[40, 40] = 255
    out = motion_blur(image, length, angle)[..., 0].astype(np.float64)
    ys, xs = np.nonzero(out > 0.3 * out.max())
    # Rows grow downwards, so "counter-clockwise from +x" means y = −(row − 40).
    x, y = xs - 40.0, -(ys - 40.0)
    direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
    along = x * direction[0] + y * direction[1]
    across = -x * direction[1] + y * direction[0]
    assert np.abs(across).max() <= 1.0  # a thin line ...
    assert along.max() - along.min() == pytest.approx(length - 1, abs=1.5)  # ... this long
    assert out.sum() == pytest.approx(255.0, abs=3 * length)  # energy kept (rounding per pixel)


def test_motion_blur_along_x_is_exactly_a_row_of_that_many_pixels():
    image = np.zeros((9, 41, 3), np.uint8)
    image[4, 20] = 210
    out = motion_blur(image, 7, 0.0)
    assert np.array_equal(np.nonzero(out[..., 0])[1], np.arange(17, 24))
    assert set(np.nonzero(out[..., 0])[0]) == {4}
    assert np.all(out[4, 17:24, 0] == 30)


def test_zoom_blur_keeps_the_centre_and_blurs_more_towards_the_edges(astronaut):
    out = zoom_blur(astronaut, 0.12, (0.5, 0.5))
    diff = np.abs(out.astype(np.int16) - astronaut.astype(np.int16)).mean(axis=2)
    centre = diff[254:259, 254:259].mean()  # within 2 px of the centre
    ring = diff[176:336, 176:336].mean()
    corners = np.mean([diff[:64, :64].mean(), diff[:64, -64:].mean(), diff[-64:, -64:].mean()])
    assert centre < 1.5
    assert 5 * centre < ring < corners
    # The outer rows lose nearly all fine detail; the middle 16x16 (rays ≤ 1.4 px) keeps it.
    near = (slice(248, 264), slice(248, 264))
    far = _laplacian_variance(out[:64]) / _laplacian_variance(astronaut[:64])
    assert far < 0.1
    assert _laplacian_variance(out[near]) / _laplacian_variance(astronaut[near]) > 0.3


def test_mosaic_makes_constant_blocks_of_the_block_mean(chelsea):
    block = 16
    out = mosaic(chelsea, block)
    h, w = chelsea.shape[:2]
    for y in range(0, h, block):
        for x in range(0, w, block):
            tile = out[y : y + block, x : x + block].reshape(-1, 3)
            assert np.all(tile == tile[0])
            mean = chelsea[y : y + block, x : x + block].reshape(-1, 3).mean(axis=0)
            assert np.abs(tile[0] - mean).max() <= 0.5 + 1e-9


def test_skin_mask_is_high_on_the_face_and_zero_outside_the_person(astronaut, person_alpha):
    mask = skin_mask(astronaut, person_alpha)
    assert mask.shape == person_alpha.shape and mask.dtype == np.float32
    assert np.median(mask[FACE]) > 0.9
    assert np.all(mask[person_alpha == 0] == 0)
    # The beige wall is skin-coloured: only the matte keeps it out.
    wall = (slice(20, 90), slice(320, 370))
    assert person_alpha[wall].max() == 0
    assert skin_mask(astronaut, np.ones_like(person_alpha))[wall].mean() > 0.5
    assert mask[NECK_RING].mean() < 0.05
    # Stored uint8 alpha gives the same mask.
    stored = np.rint(person_alpha * 255).astype(np.uint8)
    assert np.abs(skin_mask(astronaut, stored) - mask).max() < 0.01


def test_retouch_smooths_skin_and_leaves_non_skin_and_outside_untouched(astronaut, person_alpha):
    out = retouch_skin(astronaut, person_alpha, amount=1.0, smoothing=6.0, detail=0.3)
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    before = np.median(_local_variance(astronaut)[FACE])
    after = np.median(_local_variance(out)[FACE])
    assert after < 0.6 * before
    mask = skin_mask(astronaut, person_alpha)
    assert np.array_equal(out[mask == 0], astronaut[mask == 0])
    assert np.array_equal(out[person_alpha == 0], astronaut[person_alpha == 0])
    nearly_not_skin = mask < 0.004
    assert np.abs(out[nearly_not_skin].astype(int) - astronaut[nearly_not_skin]).max() <= 1


def test_retouch_detail_puts_texture_back(astronaut, person_alpha):
    flat = retouch_skin(astronaut, person_alpha, 1.0, detail=0.0)
    textured = retouch_skin(astronaut, person_alpha, 1.0, detail=0.8)
    original = np.median(_local_variance(astronaut)[FACE])
    assert (
        np.median(_local_variance(flat)[FACE])
        < np.median(_local_variance(textured)[FACE])
        < original
    )


def test_tone_tweaks_do_what_they_say(coffee):
    def luma(im: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float64)

    def chroma(im: np.ndarray) -> float:
        return float(np.ptp(im.astype(np.float64), axis=2).mean())

    base = coffee.astype(np.float64)
    brighter = adjust_tone(coffee, brightness=0.1).astype(np.float64)
    unclipped = (coffee > 5) & (coffee < 225)
    assert np.abs(brighter[unclipped] - base[unclipped] - 25.5).max() <= 0.5
    assert adjust_tone(coffee, brightness=-0.1).mean() < coffee.mean()

    punchy, flat = adjust_tone(coffee, contrast=1.3), adjust_tone(coffee, contrast=0.7)
    assert luma(flat).std() < luma(coffee).std() < luma(punchy).std()
    assert luma(flat).mean() == pytest.approx(luma(coffee).mean(), abs=1.0)

    grey = adjust_tone(coffee, saturation=0.0).astype(int)
    assert np.ptp(grey, axis=2).max() <= 1
    assert chroma(adjust_tone(coffee, saturation=0.5)) < chroma(coffee)
    assert chroma(coffee) < chroma(adjust_tone(coffee, saturation=1.5))

    warm = adjust_tone(coffee, warmth=0.5).astype(np.float64)
    cool = adjust_tone(coffee, warmth=-0.5).astype(np.float64)
    assert warm[..., 0].mean() > base[..., 0].mean() > cool[..., 0].mean()
    assert warm[..., 2].mean() < base[..., 2].mean() < cool[..., 2].mean()
    assert np.array_equal(warm[..., 1], base[..., 1])


ALL_ON = dict.fromkeys(EFFECTS, 1.0)


def test_sample_effects_is_reproducible_for_a_seed():
    probs = dict.fromkeys(EFFECTS, 0.5)
    runs = [sample_effects(np.random.default_rng(7), probs) for _ in range(2)]
    assert runs[0] == runs[1]
    many = [sample_effects(np.random.default_rng(s), probs) for s in range(20)]
    assert len({specs_to_json(s) for s in many}) > 10


def test_sample_effects_respects_probabilities_zero_and_one():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert sample_effects(rng, dict.fromkeys(EFFECTS, 0.0)) == []
        assert [s.name for s in sample_effects(rng, ALL_ON)] == list(EFFECTS)
        only = sample_effects(rng, {"mosaic": 1.0, "bokeh": 0.0})
        assert [s.name for s in only] == ["mosaic"]


def test_sample_effects_frequencies_follow_probabilities():
    rng = np.random.default_rng(0)
    draws = [sample_effects(rng, {"bokeh": 0.25, "tone": 0.75}) for _ in range(2000)]
    assert np.mean([any(s.name == "bokeh" for s in d) for d in draws]) == pytest.approx(
        0.25, abs=0.04
    )
    assert np.mean([any(s.name == "tone" for s in d) for d in draws]) == pytest.approx(
        0.75, abs=0.04
    )


def test_sample_effects_rejects_unknown_names_and_bad_probabilities():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown"):
        sample_effects(rng, {"vignette": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_effects(rng, {"bokeh": 1.5})
    with pytest.raises(ValueError, match="unknown"):
        specs_from_json('[{"name": "vignette", "params": {}}]')


def test_specs_round_trip_through_json_and_replay_to_identical_bytes(astronaut, person_alpha):
    specs = sample_effects(np.random.default_rng(3), ALL_ON)
    text = specs_to_json(specs)
    assert json.loads(text)  # plain JSON, as the manifest stores it
    again = specs_from_json(text)
    assert again == specs
    assert specs_to_json(again) == text

    stored_alpha = np.rint(person_alpha * 255).astype(np.uint8)
    bg = apply_background_effects(astronaut, specs)
    fg = apply_foreground_effects(astronaut, stored_alpha, specs)
    assert not np.array_equal(bg, astronaut) and not np.array_equal(fg, astronaut)
    assert apply_background_effects(astronaut, again).tobytes() == bg.tobytes()
    assert apply_foreground_effects(astronaut, stored_alpha, again).tobytes() == fg.tobytes()


def test_each_layer_applies_only_its_own_effects(astronaut, person_alpha):
    specs = [
        EffectSpec("mosaic", {"block": 8}),
        EffectSpec("tone", {"brightness": 0.1}),
    ]
    bg = apply_background_effects(astronaut, specs)
    assert np.array_equal(bg, mosaic(astronaut, 8))
    fg = apply_foreground_effects(astronaut, person_alpha, specs)
    inside = person_alpha > 0
    assert np.array_equal(fg[inside], adjust_tone(astronaut, brightness=0.1)[inside])
    assert np.array_equal(fg[~inside], astronaut[~inside])
    assert np.array_equal(apply_background_effects(astronaut, []), astronaut)
