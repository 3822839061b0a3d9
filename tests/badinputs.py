"""A catalogue of awkward input files, generated from a portrait at test time.

Nothing binary is committed: every kind is a function of a portrait array, so the catalogue
documents itself and the same kinds drive the unit tests over ``decode_image`` and the one
end-to-end build in tests/test_bad_inputs.py.  docs/inputs.md is the same table in prose.

``status``/``reason``/``note`` are what a samples-manifest row says for the kind when the
portrait shows a person (ingest's verdict, then the pipeline's).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Make = Callable[[np.ndarray], bytes]


@dataclass(frozen=True)
class Kind:
    kind: str
    filename: str  # name in the input folder (its extension is part of the case)
    make: Make
    status: str
    reason: str = ""
    note: str = ""  # a note the row's ``notes`` must contain


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png(p: np.ndarray) -> bytes:
    return encode(Image.fromarray(p), "PNG")


def _jpeg(p: np.ndarray) -> bytes:
    return encode(Image.fromarray(p), "JPEG", quality=90)


def _gray(p: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(p).convert("L"))


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def declared_size_png(width: int, height: int) -> bytes:
    """A valid PNG signature and header declaring ``width``x``height``, with one tiny IDAT.

    A decompression bomb's first line of defence is the declared size: this file is ~70 bytes
    and would need width*height*3 bytes of memory if anything decoded it.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def _png16(p: np.ndarray) -> bytes:
    deep = _gray(p).astype(np.uint16) * 257
    return encode(Image.fromarray(deep), "PNG")


def _rgba(p: np.ndarray) -> bytes:
    """The portrait with a left-to-right alpha ramp that must NOT become the ground truth."""
    ramp = np.broadcast_to(np.linspace(0, 255, p.shape[1]).astype(np.uint8), p.shape[:2])
    return encode(Image.fromarray(np.dstack([p, ramp]), "RGBA"), "PNG")


def _gray_alpha(p: np.ndarray) -> bytes:
    la = np.dstack([_gray(p), np.full(p.shape[:2], 200, np.uint8)])
    return encode(Image.fromarray(la, "LA"), "PNG")


def _palette(p: np.ndarray) -> bytes:
    return encode(Image.fromarray(p).quantize(256), "PNG")


def _cmyk(p: np.ndarray) -> bytes:
    return encode(Image.fromarray(p).convert("CMYK"), "JPEG", quality=90)


def exif_rotated(p: np.ndarray) -> bytes:
    """Pixels stored rotated 90° counter-clockwise, EXIF 6 says "rotate 90° clockwise to view"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(p, 1))
    return encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif)


def _frames(p: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(p), Image.fromarray(p[:, ::-1].copy()),
            Image.fromarray(255 - p)]


def _gif(p: np.ndarray) -> bytes:
    first, *rest = _frames(p)
    return encode(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)


def _tiff(p: np.ndarray) -> bytes:
    first, second, _ = _frames(p)
    return encode(first, "TIFF", save_all=True, append_images=[second])


def _html(_: np.ndarray) -> bytes:
    return (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
            b"<body><h1>Not Found</h1></body></html>\n")


CATALOGUE: tuple[Kind, ...] = (
    Kind("empty", "empty.jpg", lambda p: b"", "failed", "empty_file"),
    Kind("truncated_jpeg", "truncated.jpg", lambda p: _jpeg(p)[: len(_jpeg(p)) // 2],
         "failed", "decode_error"),
    Kind("truncated_png", "truncated.png", lambda p: _png(p)[: len(_png(p)) // 2],
         "failed", "decode_error"),
    Kind("random_bytes", "noise.jpg", lambda p: np.random.default_rng(7).bytes(4096),
         "failed", "not_an_image"),
    Kind("text", "notes.png", lambda p: b"name,age\nalice,30\nbob,41\n", "failed",
         "not_an_image"),
    Kind("html_as_jpeg", "download.jpg", _html, "failed", "not_an_image"),
    Kind("png_named_jpeg", "really-a-png.jpg", _png, "ok", "", "extension_mismatch:PNG"),
    Kind("png_16bit", "deep16.png", _png16, "ok", "", "converted_from:I;16"),
    Kind("grayscale", "gray.png", lambda p: _png(_gray(p)), "ok", "", "converted_from:L"),
    Kind("grayscale_alpha", "gray-alpha.png", _gray_alpha, "ok", "", "source_alpha_ignored"),
    Kind("rgba", "rgba.png", _rgba, "ok", "", "source_alpha_ignored"),
    Kind("palette", "palette.png", _palette, "ok", "", "converted_from:P"),
    Kind("cmyk_jpeg", "cmyk.jpg", _cmyk, "ok", "", "converted_from:CMYK"),
    Kind("exif_rotated", "rotated.jpg", exif_rotated, "ok", "", "exif_transposed"),
    Kind("one_pixel", "dot.png", lambda p: _png(p[:1, :1]), "rejected", "too_small"),
    Kind("one_row_100000", "strip.png",
         lambda p: encode(Image.new("RGB", (100_000, 1), (90, 120, 200)), "PNG"),
         "rejected", "too_small"),
    Kind("decompression_bomb", "bomb.png", lambda p: declared_size_png(50_000, 50_000),
         "rejected", "too_large"),
    Kind("animated_gif", "animated.gif", _gif, "ok", "", "multi_frame:first_of_3"),
    Kind("multipage_tiff", "pages.tif", _tiff, "ok", "", "multi_frame:first_of_2"),
)


def write_catalogue(folder: Path, portrait: np.ndarray) -> dict[str, Path]:
    """Every kind of :data:`CATALOGUE` as a file in ``folder``; kind → path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for item in CATALOGUE:
        path = folder / item.filename
        path.write_bytes(item.make(portrait))
        paths[item.kind] = path
    return paths
