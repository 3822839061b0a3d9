from __future__ import annotations

import math

import numpy as np
import pytest

from matteforge.tasks.composite import assign_backgrounds, composite, fit_background, split_for


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
