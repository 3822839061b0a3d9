"""The dataset's own image files: deterministic bytes for the same array (no timestamps in
PNGs), and those bytes back to the array.

:func:`decode` is for files :func:`encode` wrote (PNG/JPEG, 8-bit grey or RGB, no EXIF); photos
from outside, in any format, go through ``tasks/ingest.decode_image``.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

# How every PNG here is compressed (lossless; only the bytes and the time depend on it): zlib's
# run-length strategy after the Paeth filter. Measured with cv2.imencode, one thread:
# - 0.7 MP composites over the shared photo backgrounds (2 cores, load about 2): level 6 194 ms
#   and 573 KB; level 1 42-48 ms, 670 KB; RLE + Paeth 29-35 ms, 547 KB; RLE + Up 27 ms, 593 KB;
#   level 0 24 ms, 2.1 MB.  benchmarks/stages.py --config comp1k sets it against level 1.
# - a sample's six files at 1 MP through the default recipe (quiet machine), per portrait: 4 P3M
#   figures: level 6 554 ms and 1743 KB together, RLE + Paeth 98 ms and 1741 KB (image 290 ->
#   46 ms, fg 211 -> 37 ms; the masks, trimap and alphas 3-5 ms each and a few KB smaller);
#   ../shared/data/portraits' two: 482 ms, 1814 KB -> 97 ms, 1790 KB.
# OpenCV < 4.11 has no filter flag: there it is RLE after libpng's adaptive filters (about 40 ms
# for the composite, the same size).
_PNG_FLAGS: list[int] = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                         cv2.IMWRITE_PNG_STRATEGY_RLE] + (
    [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
    if hasattr(cv2, "IMWRITE_PNG_FILTER") else [])


def encode(image: np.ndarray, fmt: str = "png", jpeg_quality: int = 95) -> bytes:
    """RGB (HxWx3) or single-channel (HxW) uint8 → PNG (lossless, see ``_PNG_FLAGS``) or JPEG
    bytes."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected uint8, got {image.dtype}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, _PNG_FLAGS)
    elif fmt in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f"unsupported output format {fmt!r} (png or jpg)")
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()


# What a reader wants back: the file's own channels, or always colour, or always one channel.
DecodeMode = Literal["stored", "rgb", "grey"]


def decode(data: bytes, mode: DecodeMode = "stored") -> np.ndarray:
    """PNG or JPEG bytes as :func:`encode` writes them → uint8 array; ``decode(encode(x))`` is
    ``x`` for PNG.  Every reader of the dataset's files (report, torch dataset, reprocess,
    evaluate) uses this one, so a JPEG composite is the same pixels in each of them.

    ``mode``: ``"stored"`` keeps the file's channels (HxW grey, HxWx3 RGB); ``"rgb"`` always
    gives HxWx3 (a grey file's levels in all three channels); ``"grey"`` always gives HxW (a
    grey file's levels as stored; a colour file by OpenCV's luma).  A 16-bit file is brought to
    8 bits (``// 257``) and an alpha channel is dropped.  EXIF orientation is never applied:
    :func:`encode` writes none, and a file that has one is not the dataset's own.

    Raises ValueError when ``data`` is not an image OpenCV can read.
    """
    if mode not in ("stored", "rgb", "grey"):
        raise ValueError(f"unknown decode mode {mode!r} (stored, rgb or grey)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if image is None:
        raise ValueError("not a decodable image")
    if image.dtype != np.uint8:
        image = (image // 257).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if mode == "rgb" and image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if mode == "grey" and image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats → 0..255 bytes, rounding to nearest."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
