"""binary_morphology gives OpenCV's bytes: every kernel shape, border, operation and edge case."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matteforge.tasks.morphology import _Offsets, binary_morphology
from matteforge.tasks.trimap import structuring_element

OPS = {"dilate": cv2.dilate, "erode": cv2.erode}


def _opencv(mask: np.ndarray, kernel: np.ndarray, op: str, border: str) -> np.ndarray:
    options = {"borderType": cv2.BORDER_REPLICATE} if border == "replicate" else {}
    return OPS[op](mask, kernel, **options)


def _blobs(rng: np.random.Generator, height: int, width: int, on: int) -> np.ndarray:
    noise = rng.random((height, width)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.5, 4.0))
    return (smooth > rng.uniform(0.35, 0.65)).astype(np.uint8) * np.uint8(on)


@pytest.mark.parametrize("shape", ["ellipse", "cross", "rect"])
def test_random_masks_match_opencv_for_every_operation_and_border(shape):
    rng = np.random.default_rng({"ellipse": 1, "cross": 2, "rect": 3}[shape])
    for trial in range(150):
        height, width = (int(v) for v in rng.integers(1, 80, 2))
        mask = _blobs(rng, height, width, 255 if trial % 2 else 1)
        kernel = structuring_element(shape, int(rng.integers(0, 30)))
        for op in OPS:
            for border in ("replicate", "ignore"):
                expected = _opencv(mask, kernel, op, border)
                got = binary_morphology(mask, kernel, op, border, min_radius=0)
                assert got.dtype == np.uint8
                assert np.array_equal(got, expected), (trial, op, border, kernel.shape)


@pytest.mark.parametrize("fill", [0, 1, 255])
@pytest.mark.parametrize("op", ["dilate", "erode"])
@pytest.mark.parametrize("border", ["replicate", "ignore"])
def test_uniform_masks_and_one_pixel_masks(fill, op, border):
    kernel = structuring_element("ellipse", 7)
    uniform = np.full((20, 31), fill, np.uint8)
    assert np.array_equal(binary_morphology(uniform, kernel, op, border, min_radius=0),
                          _opencv(uniform, kernel, op, border))
    for y, x in [(0, 0), (19, 30), (10, 15), (0, 17)]:
        one = np.zeros((20, 31), np.uint8)
        one[y, x] = 255
        for mask in (one, 255 - one):
            assert np.array_equal(binary_morphology(mask, kernel, op, border, min_radius=0),
                                  _opencv(mask, kernel, op, border)), (y, x)


def test_a_portrait_sized_mask_with_the_quality_rings_radius():
    """The case it is for: a person-shaped region, the ring's radius (2 % of 1600 px)."""
    mask = np.zeros((1200, 1600), np.uint8)
    cv2.ellipse(mask, (800, 1300), (500, 700), 0, 0, 360, 255, -1)  # shoulders, off the bottom
    cv2.circle(mask, (800, 420), 230, 255, -1)  # head
    cv2.line(mask, (300, 200), (1400, 900), 0, 9)  # a thin gap through it
    kernel = structuring_element("ellipse", 64)
    for op in OPS:
        for border in ("replicate", "ignore"):
            assert np.array_equal(binary_morphology(mask, kernel, op, border),
                                  _opencv(mask, kernel, op, border)), (op, border)


def test_masks_with_more_values_and_kernels_without_a_centre_go_to_opencv():
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    kernel = structuring_element("ellipse", 4)
    assert np.array_equal(binary_morphology(grey, kernel, "dilate"), cv2.dilate(grey, kernel))
    ring = kernel.copy()
    ring[4, 4] = 0
    assert _Offsets.of(ring) is None
    mask = _blobs(rng, 40, 50, 255)
    assert np.array_equal(binary_morphology(mask, ring, "erode", "replicate", min_radius=0),
                          cv2.erode(mask, ring, borderType=cv2.BORDER_REPLICATE))


def test_the_ellipse_keeps_only_its_rim_outside_the_inscribed_disk():
    """Why the distance path is cheap: at most a few offsets per kernel row are looked up."""
    offsets = _Offsets.of(structuring_element("ellipse", 92))
    assert offsets is not None and offsets.inner >= 92 * 92
    assert len(offsets.outer) <= 4 * 185


@pytest.mark.parametrize(("mask", "kernel", "border", "message"), [
    (np.zeros((4, 4), np.float32), np.ones((3, 3), np.uint8), "ignore", "uint8"),
    (np.zeros((4, 4, 3), np.uint8), np.ones((3, 3), np.uint8), "ignore", "HxW"),
    (np.zeros((4, 4), np.uint8), np.ones((2, 3), np.uint8), "ignore", "odd"),
    (np.zeros((4, 4), np.uint8), np.ones((3, 3), np.uint8), "wrap", "border"),
])
def test_wrong_arguments_are_refused(mask, kernel, border, message):
    with pytest.raises(ValueError, match=message):
        binary_morphology(mask, kernel, "dilate", border)
