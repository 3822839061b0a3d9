from __future__ import annotations

import math

import numpy as np
import pytest

from matteforge.tasks.composite import (
    assign_backgrounds,
    composite,
    fit_background,
    make_composite,
    split_for,
)
from matteforge.tasks.effects import EffectSpec, apply_background_effects, apply_foreground_effects


def _reference_pixel(f: int, b: int, a: int) -> int:
    """Adobe's compose script, one channel: endpoints copied, otherwise int() truncation."""
    alpha = a / 255
    if alpha >= 1:
        return f
    if alpha > 0:
        return int(alpha * f + b * (1 - alpha))
    return b


def test_exact_mode_matches_the_adobe_script_pixel_for_pixel():
    rng = np.random.default_rng(1)
    fg = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (17, 23), dtype=np.uint8)
    alpha[0, :5] = 0
    alpha[1, :5] = 255
    out = composite(fg, alpha, bg, "exact")
    for y in range(17):
        for x in range(23):
            for c in range(3):
                ref = _reference_pixel(int(fg[y, x, c]), int(bg[y, x, c]), int(alpha[y, x]))
                assert out[y, x, c] == ref


def _float64_reference(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray, mode: str) -> np.ndarray:
    """The blend as it was written before the integer one: float64, floor or rint, endpoints
    copied (Adobe's script, vectorised)."""
    a = (alpha.astype(np.float64) / 255.0)[:, :, None]
    blend = a * fg.astype(np.float64) + bg.astype(np.float64) * (1.0 - a)
    out = np.clip(np.floor(blend) if mode == "exact" else np.rint(blend), 0, 255).astype(np.uint8)
    out[alpha == 255] = fg[alpha == 255]
    out[alpha == 0] = bg[alpha == 0]
    return out


@pytest.mark.parametrize("mode", ["exact", "float"])
def test_integer_blend_equals_the_float64_reference_for_every_alpha_fg_bg(mode):
    # Every (alpha, F, B) of 8-bit values: 256 alphas x 65,536 (F, B) pairs, 16 alphas a time.
    f, b = (v.astype(np.uint8) for v in np.meshgrid(np.arange(256), np.arange(256)))
    fg = np.stack([f.ravel(), b.ravel(), f.ravel()[::-1]], axis=1)[None]  # F, B in two orders
    bg = np.stack([b.ravel(), f.ravel(), b.ravel()[::-1]], axis=1)[None]
    for first in range(0, 256, 16):
        alpha = np.repeat(np.arange(first, first + 16, dtype=np.uint8)[:, None], f.size, axis=1)
        fgs, bgs = np.repeat(fg, 16, axis=0), np.repeat(bg, 16, axis=0)
        np.testing.assert_array_equal(composite(fgs, alpha, bgs, mode),
                                      _float64_reference(fgs, alpha, bgs, mode))


def test_make_composite_replays_effects_then_blends(coffee):
    fg, bg = coffee[:64, :80], coffee[100:164, 200:280]
    alpha = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (64, 1))
    specs = [EffectSpec("mosaic", {"block": 4}), EffectSpec("tone", {"brightness": 0.05})]
    expected = composite(apply_foreground_effects(fg, alpha, specs), alpha,
                         apply_background_effects(bg, specs), "exact")
    np.testing.assert_array_equal(make_composite(fg, alpha, bg, specs, "exact"), expected)
    np.testing.assert_array_equal(make_composite(fg, alpha, bg), composite(fg, alpha, bg))


def test_float_mode_rounds_and_differs_from_exact_by_at_most_one():
    rng = np.random.default_rng(2)
    fg, bg = (rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2))
    alpha = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    diff = composite(fg, alpha, bg, "float").astype(int) - composite(fg, alpha, bg).astype(int)
    assert diff.min() >= 0 and diff.max() <= 1


def test_composite_rejects_float_alpha_and_mismatched_shapes():
    fg = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(TypeError):
        composite(fg, np.zeros((4, 4), np.float32), fg)
    with pytest.raises(ValueError):
        composite(fg, np.zeros((4, 5), np.uint8), fg)


def test_background_scaled_up_only_when_smaller_then_cropped_top_left(coffee):
    big = fit_background(coffee, 100, 120)  # coffee is 400x600: no scaling, plain crop
    assert np.array_equal(big, coffee[:100, :120])
    small = fit_background(coffee, 800, 600)  # ratio max(600/600, 800/400) = 2
    assert small.shape == (800, 600, 3)
    h, w = coffee.shape[:2]
    assert (math.ceil(w * 2), math.ceil(h * 2)) == (1200, 800)


def test_background_assignment_is_deterministic_distinct_and_capped():
    pool = [f"bg{i:02d}" for i in range(30)]
    first = assign_backgrounds("sample-a", pool, 10, seed=3)
    assert first == assign_backgrounds("sample-a", list(reversed(pool)), 10, seed=3)
    assert len(set(first)) == 10
    assert first != assign_backgrounds("sample-b", pool, 10, seed=3)
    assert first != assign_backgrounds("sample-a", pool, 10, seed=4)
    assert sorted(assign_backgrounds("s", pool[:4], 100, seed=0)) == pool[:4]
    assert assign_backgrounds("s", [], 5, seed=0) == []


def test_split_is_stable_and_follows_the_fraction():
    ids = [f"{i:020x}" for i in range(2000)]
    splits = [split_for(i, 0, 0.2) for i in ids]
    assert splits == [split_for(i, 0, 0.2) for i in ids]
    assert 0.17 < splits.count("test") / len(ids) < 0.23
    assert all(split_for(i, 0, 0.0) == "train" for i in ids[:50])
    assert all(split_for(i, 0, 1.0) == "test" for i in ids[:50])


def test_a_background_is_fitted_once_per_size_and_the_cache_stays_in_its_budget(tmp_path, coffee):
    from PIL import Image

    from matteforge.dataset.storage import locate
    from matteforge.steps.shard import BackgroundCache, BackgroundRef

    Image.fromarray(coffee).save(tmp_path / "coffee.png")
    ref = BackgroundRef("c", str(tmp_path / "coffee.png"), "bg/c.png")
    cache = BackgroundCache(locate(str(tmp_path)), [ref], fitted_bytes=2 * 800 * 600 * 3)
    first = cache.fitted("c", 800, 600)  # scaled up: the costly case
    assert cache.fitted("c", 800, 600) is first and not first.flags.writeable
    np.testing.assert_array_equal(first, fit_background(coffee, 800, 600))
    for height in (801, 802):  # two more sizes: the first one leaves
        cache.fitted("c", height, 600)
    assert cache.fitted("c", 800, 600) is not first
