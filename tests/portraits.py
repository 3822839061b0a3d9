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


# The build's machinery with the smallest real model (MediaPipe selfie) and few composites: for
# tests of orchestration, signals, crashes and storage, where the recipe's quality is not the
# subject (tests/test_build_flow.py runs the default recipe end to end).
LIGHT_CONFIG = """\
name: light
seed: 1
segment: {model: mediapipe-selfie}
composite: {per_foreground_train: 1, per_foreground_test: 1, test_fraction: 0.5}
run: {shard_size: 1, n_workers: 1}
"""


def light_config(folder: Path) -> Path:
    """``LIGHT_CONFIG`` written to ``folder/light.yaml``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "light.yaml"
    path.write_text(LIGHT_CONFIG)
    return path
