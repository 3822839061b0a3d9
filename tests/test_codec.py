"""``codec.decode``: the dataset's own files back to the arrays ``encode`` was given.

Each former reader of those files (report, torch dataset, reprocess, evaluate) is written out
here as it was, and must agree with ``decode`` on every kind of file a build writes: grey PNGs
(mask, alpha_model, trimap, alpha), RGB PNGs (image, fg) and PNG or JPEG composites.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from matteforge.dataset.codec import decode, encode
from matteforge.dataset.evaluate import decode_matte
from matteforge.tasks.ingest import decode_image


@pytest.fixture(scope="module")
def rgb(astronaut) -> np.ndarray:
    return np.ascontiguousarray(astronaut[40:217, 90:331])  # odd sizes: no 8x8 JPEG blocks


@pytest.fixture(scope="module")
def grey(rgb) -> np.ndarray:
    """A soft matte: every level 0..255 and the hard 0/255 ends."""
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    return np.clip((xx - 40) * 2 + (yy % 7), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def noise(rgb) -> np.ndarray:
    """The hardest case for two JPEG decoders to agree on."""
    return np.random.default_rng(3).integers(0, 256, rgb.shape, dtype=np.uint8)


def _former_report(data: bytes) -> np.ndarray:
    """``report._decode_artifact`` as it was."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.dtype != np.uint8:
        image = (image // 257).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def _former_ingest_rgb(data: bytes) -> np.ndarray:
    """torch ``_rgb`` and reprocess's fg: ingest's decoder."""
    image = decode_image(data).image
    assert image is not None
    return image


def _former_first_channel(data: bytes) -> np.ndarray:
    """reprocess ``_gray`` (and the CLI's ``_read_gray``): ingest's RGB, first channel."""
    return np.ascontiguousarray(_former_ingest_rgb(data)[:, :, 0])


def _former_torch_grey(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.uint8 and a.shape == b.shape and np.array_equal(a, b)


def test_png_round_trips_exactly_for_grey_and_rgb(rgb, grey):
    assert _same(decode(encode(grey)), grey)
    assert _same(decode(encode(grey), "grey"), grey)
    assert _same(decode(encode(rgb)), rgb)
    assert _same(decode(encode(rgb), "rgb"), rgb)


def test_jpeg_keeps_shape_and_channels_and_is_near_the_original(rgb, grey):
    for image in (rgb, grey):
        for quality in (95, 85):
            back = decode(encode(image, "jpg", quality))
            assert back.dtype == np.uint8 and back.shape == image.shape
            assert np.abs(back.astype(int) - image).mean() < 3.0
            assert _same(decode(encode(back, "png")), back)  # what it decodes to is stable


def test_modes_give_rgb_or_grey_whatever_was_stored(rgb, grey):
    assert _same(decode(encode(grey), "rgb"), np.dstack([grey] * 3))
    assert _same(decode(encode(np.dstack([grey] * 3)), "grey"), grey)  # grey RGB: exact luma
    assert decode(encode(rgb), "grey").shape == grey.shape


def test_grey_files_decode_as_every_former_reader_read_them(grey):
    trimap = np.where(grey == 0, 0, np.where(grey == 255, 255, 128)).astype(np.uint8)
    for matte in (grey, trimap, np.where(grey > 127, 255, 0).astype(np.uint8)):
        data = encode(matte)
        assert _same(decode(data), _former_report(data))
        assert _same(decode(data, "grey"), _former_torch_grey(data))
        assert _same(decode(data, "grey"), _former_first_channel(data))
        assert _same(decode(data, "grey"), decode_matte(data))  # evaluate's reader of alphas


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_colour_files_decode_as_every_former_reader_read_them(rgb, noise, fmt):
    for image in (rgb, noise):
        data = encode(image, fmt)
        assert _same(decode(data), _former_report(data))
        assert _same(decode(data, "rgb"), _former_ingest_rgb(data))  # torch, reprocess


def test_what_the_report_reader_handled_beyond_the_dataset_is_kept(grey, rgb):
    deep = cv2.imencode(".png", grey.astype(np.uint16) * 257)[1].tobytes()
    assert _same(decode(deep), _former_report(deep))
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    with_alpha = cv2.imencode(".png", bgra)[1].tobytes()
    assert _same(decode(with_alpha), rgb)


def test_exif_orientation_is_not_applied(rgb):
    """Foreign photos (EXIF, any format) go through ingest; the dataset's files carry none."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif)
    assert decode(buf.getvalue()).shape == rgb.shape
    assert _former_ingest_rgb(buf.getvalue()).shape == (rgb.shape[1], rgb.shape[0], 3)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n broken"])
def test_undecodable_bytes_raise_value_error(data):
    with pytest.raises(ValueError, match="not a decodable image"):
        decode(data)


def test_an_unknown_mode_is_refused(grey):
    with pytest.raises(ValueError, match="unknown decode mode"):
        decode(encode(grey), "bgr")  # type: ignore[arg-type]
