"""The dataset's own image files: deterministic bytes for the same array (no timestamps in
PNGs), and those bytes back to the array.

:func:`decode` is for files :func:`encode` wrote (PNG/JPEG, 8-bit grey or RGB, no EXIF); photos
from outside, in any format, go through ``tasks/ingest.decode_image``.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np


def encode(image: np.ndarray, fmt: str = "png", jpeg_quality: int = 95) -> bytes:
    """RGB (HxWx3) or single-channel (HxW) uint8 → PNG or JPEG bytes."""
    if image.dtype != np.uint8:
        raise TypeError(f"expected uint8, got {image.dtype}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
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
