"""Training-time augmentation for on-the-fly composites (Composition-1K / GCA-Matting practice).

Each step is a pure function of arrays and a ``numpy.random.Generator``, so a training item is
a function of (seed, epoch, index) alone: the same in any DataLoader worker, on any machine.
The order :class:`matteforge.torch.MattingDataset` uses is the one of Deep Image Matting and
its successors: mix two foregrounds → random affine → crop around the unknown band (resized to
the training size) → trimap by random erosion → colour jitter on the foreground → a random
background window → composite.

Geometry runs on 8-bit alpha so fully opaque and fully transparent pixels stay exactly 255 and
0 through warps and resizes (the trimap's known regions are defined by those exact values);
colour work and the final blend run in float32 on [0, 1].
"""

from __future__ import annotations

import math

import cv2
import numpy as np

UNKNOWN = 128  # trimap values follow tasks/trimap.py: 0 background, 128 unknown, 255 foreground
MAX_EROSION = 29  # widest random erosion, px (GCA-Matting draws kernel sizes 1..29)


def mix_foregrounds(
    fg1: np.ndarray, alpha1: np.ndarray, fg2: np.ndarray, alpha2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground 1 over foreground 2: one cut-out with the coverage of both.

    α = 1 − (1−α₁)(1−α₂) and F = (F₁α₁ + F₂α₂(1−α₁)) / α, so that αF + (1−α)B equals
    compositing F₁ over (F₂ over B) for any background B.  Foreground 2 is resized to the size of
    foreground 1 first.  Inputs and outputs are uint8 (HxWx3 and HxW); where α = 0 the colour is
    F₁'s (it is never seen).
    """
    height, width = alpha1.shape
    if alpha2.shape != alpha1.shape:
        fg2 = cv2.resize(fg2, (width, height), interpolation=cv2.INTER_LINEAR)
        alpha2 = cv2.resize(alpha2, (width, height), interpolation=cv2.INTER_LINEAR)
    a1 = alpha1.astype(np.float32)[..., None] / 255.0
    a2 = alpha2.astype(np.float32)[..., None] / 255.0
    alpha = 1.0 - (1.0 - a1) * (1.0 - a2)
    premultiplied = fg1.astype(np.float32) * a1 + fg2.astype(np.float32) * a2 * (1.0 - a1)
    fg = np.where(alpha > 0, premultiplied / np.maximum(alpha, 1e-6), fg1.astype(np.float32))
    return _u8(fg), _u8(alpha[..., 0] * 255.0)


def affine_matrix(
    height: int, width: int, *, angle: float, scale: float, shear: float, flip: bool
) -> np.ndarray:
    """2x3 matrix about the image centre: flip, then shear (x by y), scale and rotate (degrees)."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    theta, sh = math.radians(angle), math.radians(shear)
    rotate = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    linear = scale * rotate @ np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
    if flip:
        linear = linear @ np.diag([-1.0, 1.0])
    offset = np.array([cx, cy]) - linear @ np.array([cx, cy])
    return np.hstack([linear, offset[:, None]])


def random_affine(
    fg: np.ndarray,
    alpha: np.ndarray,
    rng: np.random.Generator,
    *,
    degrees: float = 30.0,
    scale: tuple[float, float] = (0.8, 1.25),
    shear: float = 10.0,
    flip: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp foreground and alpha together by one random affine (GCA-Matting's ranges).

    Angle and shear are uniform in ±``degrees``/±``shear``, the scale uniform in ``scale``, a
    horizontal flip has probability ``flip``.  The image keeps its size; what leaves the frame is
    lost, what enters it is transparent (α = 0, colour of the nearest edge pixel).
    """
    height, width = alpha.shape
    matrix = affine_matrix(
        height, width, angle=rng.uniform(-degrees, degrees), scale=rng.uniform(*scale),
        shear=rng.uniform(-shear, shear), flip=bool(rng.random() < flip),
    )
    size = (width, height)
    warped_fg = cv2.warpAffine(fg, matrix, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
    warped_alpha = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped_fg, warped_alpha


def trimap_from_alpha(alpha: np.ndarray, fg_width: int, bg_width: int) -> np.ndarray:
    """0/128/255 trimap: the opaque region eroded by ``fg_width`` px, the clear one by ``bg_width``.

    Every pixel with 0 < α < 255 is unknown, and the band reaches exactly ``fg_width`` px into
    the opaque side and ``bg_width`` px into the transparent side of a straight edge (elliptic
    kernels of size 2w+1).  The image border does not erode anything.
    """
    trimap = np.full(alpha.shape, UNKNOWN, np.uint8)
    for value, width in ((255, fg_width), (0, bg_width)):
        region = (alpha == value).astype(np.uint8)
        if width > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
            region = cv2.erode(region, kernel)
        trimap[region == 1] = value
    return trimap


def random_trimap(
    alpha: np.ndarray, rng: np.random.Generator, low: int = 1, high: int = MAX_EROSION
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`trimap_from_alpha` with both erosion widths uniform in ``low``..``high`` px.

    Returns the trimap and the (foreground, background) widths drawn.  Independent widths per
    side, as in GCA-Matting, so a network does not learn that the edge is the band's middle.
    """
    fg_width, bg_width = (int(w) for w in rng.integers(low, high + 1, size=2))
    return trimap_from_alpha(alpha, fg_width, bg_width), (fg_width, bg_width)


def choose_crop(
    unknown: np.ndarray, side: int, rng: np.random.Generator
) -> tuple[int, int, int]:
    """(top, left, size) of a square window centred on a random unknown pixel.

    ``unknown`` is a boolean HxW map.  The window is ``min(side, H, W)`` px wide and shifted
    into the image when the centre is near a border, so it always contains the chosen pixel.
    With no unknown pixel the centre is any pixel.
    """
    height, width = unknown.shape
    size = int(min(side, height, width))
    ys, xs = np.nonzero(unknown)
    if len(ys):
        pick = int(rng.integers(len(ys)))
        cy, cx = int(ys[pick]), int(xs[pick])
    else:
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top = min(max(cy - size // 2, 0), height - size)
    left = min(max(cx - size // 2, 0), width - size)
    return top, left, size


def crop_resize(
    array: np.ndarray, box: tuple[int, int, int], out_size: int, *, nearest: bool = False
) -> np.ndarray:
    """Cut ``box`` (from :func:`choose_crop`) and resize it to ``out_size`` square.

    Area averaging when shrinking, bilinear when enlarging; ``nearest`` for label maps (trimaps).
    """
    top, left, size = box
    window = array[top:top + size, left:left + size]
    if size == out_size:
        return np.ascontiguousarray(window)
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if size > out_size else cv2.INTER_LINEAR
    return cv2.resize(window, (out_size, out_size), interpolation=interpolation)


def color_jitter(
    rgb: np.ndarray,
    rng: np.random.Generator,
    *,
    hue: float = 0.1,
    saturation: float = 0.2,
    value: float = 0.2,
) -> np.ndarray:
    """Random HSV change of a float RGB image in [0, 1] (HxWx3 float32 in and out).

    Hue turns by up to ±``hue`` of the colour circle; saturation and value are multiplied by
    factors uniform in 1 ± ``saturation`` / 1 ± ``value`` and clipped to [0, 1].  Greys stay
    grey under a hue turn.  Applied to the foreground only, so the network sees people of
    other colours and lighting without a background to match them.
    """
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * rng.uniform(-hue, hue), 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - saturation, 1 + saturation), 0.0, 1.0)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(1 - value, 1 + value), 0.0, 1.0)
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)


def background_window(
    background: np.ndarray, height: int, width: int, rng: np.random.Generator | None = None,
    *, min_fraction: float = 0.5,
) -> np.ndarray:
    """A window of ``background`` with the target's aspect, resized to ``height`` x ``width``.

    The window is the largest one of that aspect, shrunk by a factor uniform in
    [``min_fraction``, 1] and placed uniformly; without ``rng`` it is the largest, centred.
    A 2560 px background under a 512 px crop thus shows a scene, not a texture patch.
    """
    bh, bw = background.shape[:2]
    fit = min(bh / height, bw / width)
    factor = 1.0 if rng is None else rng.uniform(min_fraction, 1.0)
    wh = max(1, min(bh, round(height * fit * factor)))
    ww = max(1, min(bw, round(width * fit * factor)))
    if rng is None:
        top, left = (bh - wh) // 2, (bw - ww) // 2
    else:
        top, left = int(rng.integers(bh - wh + 1)), int(rng.integers(bw - ww + 1))
    window = background[top:top + wh, left:left + ww]
    shrink = wh > height or ww > width
    return cv2.resize(window, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def blend(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """α·F + (1−α)·B in float32 (HxWx3 colours in [0, 1], HxW alpha in [0, 1])."""
    a = alpha[..., None]
    return (a * fg + (1.0 - a) * bg).astype(np.float32)


def _u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
