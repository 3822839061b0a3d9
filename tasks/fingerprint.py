"""A picture's identity before the build processes it: content id and perceptual hash.

Near-identical photos (frames of one clip) must share a train/test split, and a split is
needed before a sample's composites are made, so every input is fingerprinted first, in a
cheap pass of its own: the perceptual hash only needs a 32x32 grey picture, so JPEGs are
decoded at reduced scale in the DCT domain (Pillow's draft mode), a few milliseconds.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from matteforge.tasks.ingest import SAMPLE_ID_HEX, content_hash
from matteforge.tasks.near_duplicates import hash_hex, perceptual_hash

_DRAFT_SIDE = 256  # JPEG draft side: within 2 bits of a full decode on the dev JPEGs (64: 4)


def fingerprint(data: bytes, max_pixels: int) -> tuple[str, str] | None:
    """(sample_id, perceptual hash as hex) of an image file, or None when it does not decode.

    Files the build will refuse (empty, corrupt, over ``max_pixels``) get None: they never
    reach a split.  The hash is of the upright picture, like everything the build makes.
    """
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.size[0] * im.size[1] > max_pixels or min(im.size) < 1:
                return None
            if im.format == "JPEG":
                im.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(_as_rgb(im), dtype=np.uint8)
    except Exception:  # any decoder error: the shard's ingest records why
        return None
    return content_hash(data)[:SAMPLE_ID_HEX], hash_hex(perceptual_hash(rgb))


def _as_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB by the data's range for deep grey modes (as ingest does), else Pillow's."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        from matteforge.tasks.ingest import _scale_to_8bit

        grey = _scale_to_8bit(np.asarray(im), im.mode, [])
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    if im.mode in ("RGBA", "LA", "PA", "P"):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")
