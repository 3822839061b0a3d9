"""Composites the Composition-1K way (Xu et al. 2017, Adobe's compose script).

The recipe matters to users who compare against published numbers, so it is kept literally:
the background is scaled *up* (bicubic) only when smaller than the foreground, then cropped at the
top-left; the ``exact`` blend reproduces the script's per-pixel 8-bit truncation, ``float``
rounds instead.  Background choice and the train/test split are pure functions of
(seed, sample id), so reruns and other machines pick the same ones.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import numpy as np
from PIL import Image

Split = Literal["train", "test"]


def _unit_interval(*keys: object) -> float:
    """A stable number in [0, 1) from keys (unlike ``hash()``, identical across processes)."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for(sample_id: str, seed: int, test_fraction: float) -> Split:
    return "test" if _unit_interval("split", seed, sample_id) < test_fraction else "train"


def assign_backgrounds(sample_id: str, bg_ids: list[str], count: int, seed: int) -> list[str]:
    """``count`` distinct backgrounds for one foreground (fewer if the pool is smaller)."""
    pool = sorted(set(bg_ids))
    n = min(count, len(pool))
    if n == 0:
        return []
    rng = np.random.default_rng(int(_unit_interval("backgrounds", seed, sample_id) * 2**63))
    picks = rng.choice(len(pool), size=n, replace=False)
    return [pool[i] for i in picks]


def effects_rng(sample_id: str, bg_id: str, seed: int) -> np.random.Generator:
    """The generator one composite's effects are drawn from: a pure function of its identity."""
    return np.random.default_rng(int(_unit_interval("effects", seed, sample_id, bg_id) * 2**63))


def fit_background(background: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale up (only if needed, keeping aspect) so it covers HxW, then crop the top-left."""
    bh, bw = background.shape[:2]
    ratio = max(width / bw, height / bh)
    if ratio > 1:
        size = (math.ceil(bw * ratio), math.ceil(bh * ratio))
        background = np.asarray(Image.fromarray(background).resize(size, Image.BICUBIC))
    return np.ascontiguousarray(background[:height, :width])


def composite(
    foreground: np.ndarray,
    alpha: np.ndarray,
    background: np.ndarray,
    mode: Literal["exact", "float"] = "exact",
) -> np.ndarray:
    """F·α + B·(1−α) in 8-bit sRGB (no gamma), as Composition-1K does.

    ``alpha`` is uint8 0..255 (as stored on disk, so a composite can be re-made from the files);
    ``background`` must already be HxW (see :func:`fit_background`).
    """
    if alpha.dtype != np.uint8:
        raise TypeError("alpha must be uint8 0..255: composites are made from the stored alpha")
    if foreground.shape[:2] != alpha.shape or background.shape[:2] != alpha.shape:
        raise ValueError(
            f"shape mismatch: fg {foreground.shape}, alpha {alpha.shape}, bg {background.shape}"
        )
    a = (alpha.astype(np.float64) / 255.0)[:, :, None]
    blend = a * foreground.astype(np.float64) + background.astype(np.float64) * (1.0 - a)
    blended = np.floor(blend) if mode == "exact" else np.rint(blend)
    out = np.clip(blended, 0, 255).astype(np.uint8)
    # The script copies the endpoints verbatim rather than blending them.
    out[alpha == 255] = foreground[alpha == 255]
    out[alpha == 0] = background[alpha == 0]
    return out
