"""Inputs made from one photo: distinct files (sizes differ, so bytes and sample ids do)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def resized_copies(folder: Path, photo: np.ndarray, count: int, first_side: int = 192,
                   step: int = 16) -> list[Path]:
    """``portrait-<i>.png`` at ``first_side + step * i`` px square, for i < ``count``."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        side = first_side + step * i
        path = folder / f"portrait-{i}.png"
        Image.fromarray(photo).resize((side, side), Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    return paths
