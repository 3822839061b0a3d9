"""Image encoding for outputs: deterministic bytes for the same array (no timestamps in PNGs)."""

from __future__ import annotations

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


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats → 0..255 bytes, rounding to nearest."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
