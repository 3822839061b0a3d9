"""`predict_batch` gives every backend's per-photo maps, with one forward per model input shape.

A GPU only pays off when a shard's portraits go through a model together; the CPU stays the
tested default, so the batched path is checked here against `predict` on torch's CPU device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnx_models import save_onnx
from skimage import data
from torch import nn

from matteforge.config import UserModelConfig
from matteforge.models.backends import (
    MatteBackend,
    MeetBackend,
    RvmBackend,
    SelfieBackend,
    group_indices,
    load_backend,
    resize,
)
from matteforge.models.executors.tflite_torch import batched_shape, load_tflite
from matteforge.models.registry import FACE_WEIGHTS
from matteforge.models.user_models import UserModelBackend
from matteforge.models.weights import fetch_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUILT_INS = ("rvm", "meet", "selfie", "modnet@384")
ATOL = 1e-4  # float rounding of batched convolutions (observed: at most 6e-5)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Mixed sizes, in an order where equal input sizes are not neighbours."""
    astronaut = data.astronaut()
    square = resize(astronaut, 384, 384)
    return [
        square,
        np.ascontiguousarray(astronaut[40:440, 100:400]),  # 400x300: rvm refines above 384
        np.ascontiguousarray(square[:, ::-1]),  # mirrored: same input shape as the first
        resize(astronaut, 256, 256),  # enlarged by every model
    ]


@pytest.fixture(scope="module", params=BUILT_INS)
def backend(request: pytest.FixtureRequest) -> MatteBackend:
    return load_backend(request.param)


def test_batch_gives_the_per_photo_maps_in_order(
    backend: MatteBackend, photos: list[np.ndarray]
) -> None:
    single = [backend.predict(photo) for photo in photos]
    batch = backend.predict_batch(photos)
    assert len(batch) == len(photos)
    for photo, one, many in zip(photos, single, batch, strict=True):
        assert many.shape == photo.shape[:2] and many.dtype == np.float32
        assert many.min() >= 0.0 and many.max() <= 1.0
        np.testing.assert_allclose(many, one, atol=ATOL)
    # the face (astronaut 512 px: rows 60-160, columns 180-260) in the 384 px square, and
    # mirrored in its mirror: each photo's own map, not a neighbour's
    assert batch[0][45:120, 135:195].mean() > 0.9
    assert batch[2][45:120, 189:249].mean() > 0.9
    assert batch[0][45:120, 189:249].mean() < batch[2][45:120, 189:249].mean()


def test_empty_batch_runs_nothing(backend: MatteBackend) -> None:
    assert backend.predict_batch([]) == []


def test_grayscale_photo_in_a_batch(backend: MatteBackend, photos: list[np.ndarray]) -> None:
    gray = photos[0][:, :, 1].copy()
    maps = backend.predict_batch([gray, np.dstack([gray] * 3)])
    np.testing.assert_array_equal(maps[0], maps[1])


def _spy_net(backend: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch size of every forward of the backend's torch module."""
    net: Callable[..., Any] = backend.net
    sizes: list[int] = []

    def spy(inputs: Any, *rest: Any) -> Any:
        x = inputs["src"] if isinstance(inputs, dict) and "src" in inputs else inputs
        if isinstance(x, dict):
            x = next(iter(x.values()))
        sizes.append(int(x.shape[0]))
        return net(inputs, *rest)

    monkeypatch.setattr(backend, "net", spy)
    return sizes


def test_one_forward_per_input_shape(photos: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    rvm = load_backend("rvm")
    assert isinstance(rvm, RvmBackend) and rvm.sizes == (384, 640) and rvm.passes == 2
    sizes = _spy_net(rvm, monkeypatch)
    rvm.predict_batch(photos)
    # per encoder size, two groups (the 384 squares with the enlarged 256 one; the 400x300
    # crop), each run `passes` times
    assert sizes == [3, 3, 1, 1] * 2
    for name, cls in (("meet", MeetBackend), ("selfie", SelfieBackend)):
        fixed = load_backend(name)
        assert isinstance(fixed, cls)
        sizes = _spy_net(fixed, monkeypatch)
        fixed.predict_batch(photos)
        assert sizes == [4], name  # a fixed input size: the whole batch in one forward


def test_group_indices_keep_first_seen_order() -> None:
    assert group_indices(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]
    assert group_indices([]) == []


# --- executors: graphs exported at batch 1 run at batch N ---------------------------------------


def test_reshape_targets_take_the_batch_only_at_batch_n() -> None:
    x = torch.zeros(4, 1, 1, 16)
    assert batched_shape([1, 16], x, 4) == [4, 16]
    assert batched_shape([1, -1, 16], x, 4) == [4, -1, 16]
    assert batched_shape([1, 16], x[:1], 1) == [1, 16]  # batch 1: as stored
    assert batched_shape([1, 64], torch.zeros(16, 4), 4) == [1, 64]  # not led by the batch


def test_blazeface_batch_keeps_its_anchors_per_photo(photos: list[np.ndarray]) -> None:
    """BlazeFace reshapes to a stored [1, -1, 16]: without the batch given back, a batch of 3
    came out as one photo of 3 x 896 anchors."""
    net = load_tflite(fetch_weights(FACE_WEIGHTS))
    canvases = np.stack([resize(p, 128, 128) for p in photos[:3]])
    x = torch.from_numpy(canvases.astype(np.float32) / 127.5 - 1.0)
    with torch.inference_mode():
        boxes, scores = net(x)
        assert boxes.shape == (3, 896, 16) and scores.shape == (3, 896, 1)
        for k in range(3):
            one_boxes, one_scores = net(x[k : k + 1])
            torch.testing.assert_close(boxes[k], one_boxes[0], atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(scores[k], one_scores[0], atol=1e-3, rtol=1e-4)


# --- user models -------------------------------------------------------------------------------


class RedLogits(nn.Module):
    """Logit = 8 * (R - 0.5), NCHW in [0, 1], with a per-photo mean so photos cannot mix."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1]
        return 8.0 * (red - 0.5) + red.mean(dim=(1, 2, 3), keepdim=True)


def _user_photos() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in ((60, 80), (50, 50), (90, 40), (60, 80))]


def _agrees(backend: MatteBackend) -> None:
    photos = _user_photos()
    single = [backend.predict(p) for p in photos]
    for photo, one, many in zip(photos, single, backend.predict_batch(photos), strict=True):
        assert many.shape == photo.shape[:2]
        np.testing.assert_allclose(many, one, atol=1e-5)


@pytest.mark.parametrize("fit", ["stretch", "letterbox"])
def test_torchscript_user_model_batches(tmp_path: Path, fit: str) -> None:
    torch.jit.script(RedLogits()).save(str(tmp_path / "red.pt"))
    settings = UserModelConfig(format="torchscript", uri=str(tmp_path / "red.pt"),
                               output="sigmoid", input_size=(32, 32), resize=fit)
    backend = load_backend(settings)
    assert isinstance(backend, UserModelBackend)
    _agrees(backend)
    assert backend.batches


def test_torch_export_at_batch_one_falls_back_to_one_photo_at_a_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    program = torch.export.export(RedLogits(), (torch.zeros(1, 3, 32, 32),))
    torch.export.save(program, str(tmp_path / "red.pt2"))
    settings = UserModelConfig(format="torch-export", uri=str(tmp_path / "red.pt2"),
                               output="sigmoid", input_size=(32, 32))
    backend = load_backend(settings)
    assert isinstance(backend, UserModelBackend)
    with caplog.at_level(logging.WARNING):
        _agrees(backend)
    assert not backend.batches
    assert "does not take batches" in caplog.text


def _onnx_red(path: Path, batch: int | str) -> Path:
    """A 1x1 conv on the red channel then a sigmoid, its batch axis fixed or named."""
    pytest.importorskip("onnx")
    from onnx import helper

    weight = np.array([8.0, 0.0, 0.0], np.float32).reshape(1, 3, 1, 1)
    bias = np.array([-4.0], np.float32)
    return save_onnx(path, [helper.make_node("Conv", ["x", "w", "b"], ["logit"]),
                            helper.make_node("Sigmoid", ["logit"], ["prob"])],
                     [("x", [batch, 3, 16, 16])], [("prob", [batch, 1, 16, 16])],
                     {"w": weight, "b": bias})


@pytest.mark.parametrize(("batch", "batches"), [("N", True), (1, False)])
def test_onnx_user_model_batches_unless_its_batch_is_fixed(
    tmp_path: Path, batch: int | str, batches: bool
) -> None:
    pytest.importorskip("onnxruntime")
    settings = UserModelConfig(format="onnx", uri=str(_onnx_red(tmp_path / "red.onnx", batch)),
                               input_size=(16, 16), channel=0)
    backend = load_backend(settings)
    assert isinstance(backend, UserModelBackend)
    _agrees(backend)
    assert backend.batches is batches


def test_a_model_error_on_one_photo_is_raised_not_taken_for_a_batch_limit(tmp_path: Path
                                                                         ) -> None:
    pytest.importorskip("onnxruntime")
    settings = UserModelConfig(format="onnx", uri=str(_onnx_red(tmp_path / "red.onnx", 1)),
                               input_size=(16, 16), output_key="alpha")
    backend = load_backend(settings)
    assert isinstance(backend, UserModelBackend)
    with pytest.raises(KeyError, match="alpha"):
        backend.predict_batch(_user_photos())
    assert backend.batches
