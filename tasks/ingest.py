"""Ingest: bytes → upright 8-bit RGB array, or a reason why not.

Decoding goes through Pillow because it knows EXIF orientation, 16-bit, palette, CMYK and
multi-frame files, and reports the declared size *before* decoding pixels, so a decompression
bomb is refused without allocating it.  Nothing here raises for bad input: every outcome is an
:class:`IngestResult` with a status, so one broken file never stops a build.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SAMPLE_ID_HEX = 20  # 80 bits of the content hash: unique for any realistic collection
# Formats that are one family: a camera JPEG often opens as MPO (JPEG plus extra pictures).
_SAME_FAMILY = {"MPO": "JPEG"}
_EXIF_ORIENTATION = 0x0112


@dataclass
class IngestResult:
    status: str  # "ok" | "failed" | "rejected"
    reason: str  # short machine-readable code, "" when ok
    detail: str  # human-readable explanation
    content_sha256: str
    n_bytes: int
    width: int = 0
    height: int = 0
    source_format: str = ""
    notes: list[str] = field(default_factory=list)
    image: np.ndarray | None = None

    @property
    def sample_id(self) -> str:
        return self.content_sha256[:SAMPLE_ID_HEX]


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_rgb8(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Any Pillow mode → HxWx3 uint8, keeping 16-bit precision by scaling rather than clipping."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _scale_to_8bit(np.asarray(im), im.mode, notes)
        notes.append(f"converted_from:{im.mode}")
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        # A portrait's own transparency is not a trustworthy matte; never use it as ground truth.
        notes.append("source_alpha_ignored")
    if im.mode != "RGB":
        notes.append(f"converted_from:{im.mode}")
        im = im.convert("RGBA").convert("RGB") if has_alpha else im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


# The ranges single-channel data is read in, smallest first: the first that holds every value
# is taken as the file's full scale (a float TIFF in 0..1, 8-bit values stored as 32-bit, ...).
_RANGES = ((1.0, "0..1"), (255.0, "0..255"), (65535.0, "0..65535"))


def _scale_to_8bit(arr: np.ndarray, mode: str, notes: list[str]) -> np.ndarray:
    """Grey data of any depth → uint8, by the range the data is in, said in ``notes``.

    The mode alone does not tell the scale: a float TIFF usually holds 0..1, a 32-bit integer
    file may hold 8- or 16-bit values.  16-bit modes are 0..65535 by definition.  Data beyond
    0..65535 (or negative) is stretched from its minimum to its maximum; NaN counts as 0.
    """
    data = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        top, label = 65535.0, "0..65535"
    elif low < 0 or high > 65535.0:
        data, top = data - low, max(high - low, 1e-12)
        label = f"{low:g}..{high:g}"
    else:
        is_float = mode == "F"
        top, label = next(((t, n) for t, n in _RANGES if high <= t and (is_float or t > 1.0)),
                          _RANGES[-1])
    notes.append(f"scaled_from:{label}")
    return np.clip(np.rint(data * (255.0 / top)), 0, 255).astype(np.uint8)


def _extension_note(name: str | None, fmt: str) -> str | None:
    """A note when the file's extension names another format than its bytes have.

    The bytes decide (a PNG named ``.jpg`` decodes as the PNG it is); the note tells whoever
    exported the collection that its names are not to be trusted.
    """
    if not name or not fmt:
        return None
    expected = Image.registered_extensions().get(posixpath.splitext(name)[1].lower())
    if expected is None or _SAME_FAMILY.get(expected, expected) == _SAME_FAMILY.get(fmt, fmt):
        return None
    return f"extension_mismatch:{fmt}"


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block is ignored, as exif_transpose would
        return 1


def decode_image(
    data: bytes, *, max_pixels: int = 40_000_000, min_side: int = 1, name: str | None = None
) -> IngestResult:
    """Decode ``data``; the result carries the image (status ok) or the reason it was refused.

    ``name`` (the file's name or URI) is only compared with the detected format, for a note.
    """
    digest = content_hash(data)
    result = IngestResult(
        status="failed", reason="", detail="", content_sha256=digest, n_bytes=len(data)
    )
    if not data:
        result.reason, result.detail = "empty_file", "the file has 0 bytes"
        return result
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            result.source_format = im.format or ""
            if note := _extension_note(name, result.source_format):
                result.notes.append(note)
            width, height = im.size
            result.width, result.height = width, height
            if width * height > max_pixels:
                result.status, result.reason = "rejected", "too_large"
                result.detail = f"{width}x{height} = {width * height} pixels > max {max_pixels}"
                return result
            if min(width, height) < min_side:
                result.status, result.reason = "rejected", "too_small"
                result.detail = f"{width}x{height}: shorter side < {min_side} px"
                return result
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1:
                result.notes.append(f"multi_frame:first_of_{n_frames}")
                im.seek(0)
            im.load()
            if _orientation(im) not in (0, 1):
                result.notes.append(f"exif_transposed:{_orientation(im)}")
            im = ImageOps.exif_transpose(im)
            result.image = _to_rgb8(im, result.notes)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        result.status, result.reason, result.detail = "rejected", "too_large", str(exc)
        return result
    except UnidentifiedImageError:
        result.reason, result.detail = "not_an_image", "no known image format recognised"
        return result
    except Exception as exc:  # Pillow plugins raise many types (struct.error, ...) on bad bytes
        result.reason, result.detail = "decode_error", f"{type(exc).__name__}: {exc}"[:2000]
        result.image = None
        return result
    result.height, result.width = result.image.shape[:2]
    result.status = "ok"
    return result
