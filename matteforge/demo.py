"""Demo inputs from the real photos scikit-image ships, so the demo needs no download.

Portraits: the astronaut (Eileen Collins) and the cameraman.  Negatives mixed into the input
(a cat, a coffee cup) must come out rejected.  Backgrounds: the remaining person-less photos.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PORTRAITS = ("astronaut.png", "camera.png")
NEGATIVES = ("chelsea.png", "coffee.png")
BACKGROUNDS = ("rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "brick.png",
               "grass.png", "gravel.png")


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def prepare_demo_data(root: Path) -> tuple[Path, Path]:
    """Copy the demo photos into ``root/portraits`` and ``root/backgrounds``; returns both."""
    source = skimage_data_dir()
    portraits, backgrounds = root / "portraits", root / "backgrounds"
    for folder, names in ((portraits, PORTRAITS + NEGATIVES), (backgrounds, BACKGROUNDS)):
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = folder / name
            if not target.exists():
                shutil.copyfile(source / name, target)
    return portraits, backgrounds
