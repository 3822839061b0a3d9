"""The torch replay of TFLite graphs matches TFLite semantics on the real MediaPipe models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from matteforge.models.backends import letterbox
from matteforge.models.executors import tflite_torch
from matteforge.models.executors.tflite_torch import load_tflite, same_padding
from matteforge.models.registry import FACE_WEIGHTS, SELFIE_WEIGHTS
from matteforge.models.weights import fetch_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def selfie_path() -> Path:
    return fetch_weights(SELFIE_WEIGHTS)


@pytest.fixture(scope="session")
def face_path() -> Path:
    return fetch_weights(FACE_WEIGHTS)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (256, 3, 2, (0, 1)),  # odd total: the extra pixel goes after, unlike torch
        (7, 3, 1, (1, 1)),
        (5, 4, 1, (1, 2)),
        (4, 2, 2, (0, 0)),
        (1, 5, 1, (2, 2)),
    ],
)
def test_same_padding_puts_odd_pixel_after(
    size: int, kernel: int, stride: int, expected: tuple[int, int]
) -> None:
    assert same_padding(size, kernel, stride) == expected


def test_same_padding_with_dilation() -> None:
    assert same_padding(10, 3, 1, dilation=2) == (2, 2)


def _astronaut(size: int, low: float = 0.0) -> np.ndarray:
    canvas, _ = letterbox(data.astronaut(), size)
    return (canvas.astype(np.float32) / 255.0 * (1.0 - low) + low)[None]


def test_selfie_model_gives_probabilities_in_nhwc(selfie_path: Path) -> None:
    net = load_tflite(selfie_path)
    with torch.inference_mode():
        (mask,) = net(torch.from_numpy(_astronaut(256)))
    assert mask.shape == (1, 256, 256, 1)
    assert mask.dtype == torch.float32
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    assert float(mask[0, 40:80, 90:130].mean()) > 0.9  # the astronaut's face


def test_blazeface_outputs_anchor_tensors(face_path: Path) -> None:
    net = load_tflite(face_path)
    with torch.inference_mode():
        boxes, scores = net(torch.from_numpy(_astronaut(128, low=-1.0)))
    assert boxes.shape == (1, 896, 16)
    assert scores.shape == (1, 896, 1)
    assert float(torch.sigmoid(scores).max()) > 0.8


def test_unknown_op_is_named(selfie_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(tflite_torch.OPS, "HARD_SWISH")
    with pytest.raises(NotImplementedError, match="HARD_SWISH"):
        load_tflite(selfie_path)


def test_non_tflite_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="TFLite"):
        load_tflite(b"\x89PNG not a model at all")


@pytest.mark.parametrize(("which", "size", "low"), [("selfie", 256, 0.0), ("face", 128, -1.0)])
def test_matches_litert_reference(
    which: str, size: int, low: float, selfie_path: Path, face_path: Path
) -> None:
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    path = selfie_path if which == "selfie" else face_path
    x = _astronaut(size, low)
    ref = litert.Interpreter(model_path=str(path))
    ref.allocate_tensors()
    ref.set_tensor(ref.get_input_details()[0]["index"], x)
    ref.invoke()
    expected = [ref.get_tensor(d["index"]) for d in ref.get_output_details()]
    with torch.inference_mode():
        actual = load_tflite(path)(torch.from_numpy(x))
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=1e-4)


def test_average_pool_same_ignores_padding() -> None:
    """TFLite averages only real pixels at the border; a naive zero-pad would darken them."""
    opts = {"padding": 0, "stride": (1, 1), "filter": (3, 3), "dilation": (1, 1), "act": 0}
    out = tflite_torch.OPS["AVERAGE_POOL_2D"].run([torch.ones(1, 2, 5, 5)], opts)
    torch.testing.assert_close(out, torch.ones(1, 2, 5, 5))


def test_max_pool_same_pads_with_minus_infinity() -> None:
    opts = {"padding": 0, "stride": (2, 2), "filter": (2, 2), "dilation": (1, 1), "act": 0}
    out = tflite_torch.OPS["MAX_POOL_2D"].run([-torch.ones(1, 1, 3, 3)], opts)
    torch.testing.assert_close(out, -torch.ones(1, 1, 2, 2))


def test_legacy_resize_bilinear_maps_dst_times_scale() -> None:
    """align_corners=False, half_pixel_centers=False: src = dst * in / out, edge clamped."""
    x = torch.tensor([[0.0, 2.0], [4.0, 6.0]]).reshape(1, 1, 2, 2)
    opts = {"align_corners": False, "half_pixel": False}
    out = tflite_torch.OPS["RESIZE_BILINEAR"].run([x, torch.tensor([4, 4])], opts)
    row = torch.tensor([0.0, 1.0, 2.0, 2.0])
    expected = torch.stack([row, row + 2, row + 4, row + 4]).reshape(1, 1, 4, 4)
    torch.testing.assert_close(out, expected)


def test_pad_and_concat_follow_nhwc_axes() -> None:
    """Rank-4 tensors are NCHW inside, so NHWC axes in the graph must be remapped."""
    x = torch.zeros(1, 3, 2, 2)  # NCHW with C=3
    padded = tflite_torch.OPS["PAD"].run([x, torch.tensor([[0, 0], [0, 0], [0, 0], [0, 2]])], {})
    assert padded.shape == (1, 5, 2, 2)
    joined = tflite_torch.OPS["CONCATENATION"].run([x, padded], {"axis": 3, "act": 0})
    assert joined.shape == (1, 8, 2, 2)
