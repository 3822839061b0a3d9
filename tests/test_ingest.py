from __future__ import annotations

import io

import numpy as np
from PIL import Image

from matteforge.tasks.ingest import SAMPLE_ID_HEX, decode_image


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_png_decodes_to_identical_pixels(astronaut):
    result = decode_image(_encode(Image.fromarray(astronaut)))
    assert result.status == "ok" and result.reason == ""
    assert result.image is not None and result.image.dtype == np.uint8
    np.testing.assert_array_equal(result.image, astronaut)
    assert (result.width, result.height) == (512, 512)
    assert len(result.sample_id) == SAMPLE_ID_HEX
    assert result.sample_id == result.content_sha256[:SAMPLE_ID_HEX]


def test_same_bytes_same_sample_id_different_bytes_different_id(astronaut):
    a = _encode(Image.fromarray(astronaut))
    b = _encode(Image.fromarray(astronaut[:, ::-1].copy()))
    assert decode_image(a).sample_id == decode_image(a).sample_id
    assert decode_image(a).sample_id != decode_image(b).sample_id


def test_exif_orientation_is_applied():
    # 40 wide, 20 tall, left half red; EXIF 6 = rotate 90° clockwise to display.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    result = decode_image(_encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95))
    assert result.status == "ok"
    assert result.image.shape == (40, 20, 3)  # upright: now tall
    assert result.image[5, 10, 0] > 200  # red half moved to the top
    assert result.image[35, 10, 0] < 60


def test_grayscale_and_16bit_become_rgb8():
    gray = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    r = decode_image(_encode(Image.fromarray(gray)))
    assert r.image.shape == (64, 64, 3) and (r.image[:, :, 0] == gray).all()
    deep = (np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)
    r16 = decode_image(_encode(Image.fromarray(deep)))
    assert r16.status == "ok" and r16.image.dtype == np.uint8
    np.testing.assert_allclose(r16.image[:, :, 0], np.rint(deep / 257.0), atol=1)


def test_rgba_alpha_is_dropped_and_noted():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 10
    r = decode_image(_encode(Image.fromarray(rgba, "RGBA")))
    assert r.status == "ok" and "source_alpha_ignored" in r.notes
    assert r.image.shape == (32, 32, 3) and (r.image[..., 1] == 200).all()


def test_bad_inputs_become_reasons_not_exceptions(astronaut):
    png = _encode(Image.fromarray(astronaut))
    cases = {
        b"": "empty_file",
        b"hello, I am text": "not_an_image",
        png[: len(png) // 2]: "decode_error",
    }
    for data, reason in cases.items():
        r = decode_image(data)
        assert (r.status, r.reason) == ("failed", reason), r.detail
        assert r.image is None and r.detail


def test_size_limits_reject_before_decoding():
    big = _encode(Image.new("RGB", (300, 200)))
    r = decode_image(big, max_pixels=300 * 200 - 1)
    assert (r.status, r.reason) == ("rejected", "too_large")
    small = decode_image(_encode(Image.new("RGB", (10, 200))), min_side=32)
    assert (small.status, small.reason) == ("rejected", "too_small")
