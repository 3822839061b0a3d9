"""Users' own TorchScript and ONNX models plug in by configuration, from any fsspec URI.

The models are made here: a red-channel "segmenter" whose answer is known for every pixel, and a
DeepLab-like one with a dict output and 21 classes (VOC person = 15).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from onnx_models import save_onnx
from torch import nn

from matteforge.config import UserModelConfig, load_config
from matteforge.models.backends import load_backend
from matteforge.models.user_models import read_person_map, scale_crop
from matteforge.models.weights import WeightsError
from matteforge.tasks.segment import load_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RedLogits(nn.Module):
    """Logit = 8 * (R - 0.5) for NCHW input in [0, 1]: red pixels are 'person'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * (x[:, :1] - 0.5)


class VocLike(nn.Module):
    """DeepLab-shaped: dict with 'out' (1, 21, H/2, W/2); class 15 wins where red is high."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        small = nn.functional.avg_pool2d(x, 2)
        logits = torch.zeros(x.shape[0], 21, small.shape[2], small.shape[3])
        logits[:, 0] = 0.5
        logits[:, 15] = small[:, 0]
        return {"out": logits, "aux": logits * 0}


def _half_red(height: int = 60, width: int = 80) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2, 0] = 255
    return image


def _save_script(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def test_torchscript_from_a_file_reads_sigmoid_of_its_logits(tmp_path: Path) -> None:
    path = _save_script(RedLogits(), tmp_path / "red.pt")
    settings = UserModelConfig(
        format="torchscript",
        uri=str(path),
        output="sigmoid",
        input_size=(32, 32),
        license="MIT (test)",
    )
    backend = load_backend(settings)
    prob = backend.predict(_half_red())
    assert prob.shape == (60, 80) and prob.dtype == np.float32
    expected = 1.0 / (1.0 + np.exp(-4.0))  # sigmoid(8 * 0.5)
    np.testing.assert_allclose(prob[:, :30], expected, atol=1e-5)
    np.testing.assert_allclose(prob[:, 50:], 1.0 - expected, atol=1e-5)
    assert backend.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert backend.model_id == f"user-torchscript:red.pt@{backend.weights_sha256[:12]}"
    assert backend.license == "MIT (test)"


def test_torch_export_archive_with_a_dict_output(tmp_path: Path) -> None:
    program = torch.export.export(VocLike(), (torch.zeros(1, 3, 64, 64),))
    torch.export.save(program, str(tmp_path / "voc.pt2"))
    settings = UserModelConfig(
        format="torch-export",
        uri=str(tmp_path / "voc.pt2"),
        output_key="out",
        output="argmax",
        channel=15,
        input_size=(64, 64),
    )
    prob = load_backend(settings).predict(_half_red())
    assert prob[:, :35].min() == 1.0 and prob[:, 45:].max() == 0.0


def test_dict_output_argmax_class_15_like_deeplab_from_an_fsspec_uri(tmp_path: Path) -> None:
    data = _save_script(VocLike(), tmp_path / "voc.pt").read_bytes()
    with fsspec.open("memory://models/voc.pt", "wb") as f:
        f.write(data)
    settings = UserModelConfig(
        format="torchscript",
        uri="memory://models/voc.pt",
        output_key="out",
        output="argmax",
        channel=15,
        input_size=(64, 64),
        resize="letterbox",
    )
    prob = load_backend(settings).predict(_half_red())
    assert prob.shape == (60, 80)
    assert prob[:, :35].min() == 1.0 and prob[:, 45:].max() == 0.0


def test_sha256_pin_refuses_other_bytes(tmp_path: Path) -> None:
    path = _save_script(RedLogits(), tmp_path / "red.pt")
    settings = UserModelConfig(format="torchscript", uri=str(path), sha256="0" * 64)
    with pytest.raises(WeightsError, match="0" * 64):
        load_backend(settings)
    with pytest.raises(WeightsError, match="cannot read"):
        load_backend(UserModelConfig(format="torchscript", uri=str(tmp_path / "absent.pt")))


def _onnx_red_model(path: Path, layout: str) -> Path:
    """1x1 conv on the red channel (+ bias) then Softmax over two channels: person = channel 1."""
    pytest.importorskip("onnx")
    from onnx import helper

    weight = np.zeros((2, 3, 1, 1), np.float32)
    weight[1, 0] = 8.0  # channel 1 logit = 8 R - 4, channel 0 logit = 0
    bias = np.array([0.0, -4.0], np.float32)
    nodes = []
    src = "x"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        src = "x_nchw"
    nodes += [
        helper.make_node("Conv", [src, "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob_nchw"], axis=1),
    ]
    out = "prob_nchw"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["prob_nchw"], ["prob"], perm=[0, 2, 3, 1]))
        out = "prob"
    shape_in: list[int | str] = [1, 16, 16, 3] if layout == "nhwc" else [1, 3, 16, 16]
    shape_out: list[int | str] = [1, 16, 16, 2] if layout == "nhwc" else [1, 2, 16, 16]
    return save_onnx(path, nodes, [("x", shape_in)], [(out, shape_out)],
                     {"w": weight, "b": bias})


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_onnx_model_through_onnxruntime(tmp_path: Path, layout: str) -> None:
    pytest.importorskip("onnxruntime")
    path = _onnx_red_model(tmp_path / "red.onnx", layout)
    settings = UserModelConfig(
        format="onnx",
        uri=f"file://{path}",
        input_size=(16, 16),
        layout=layout,
        output="probability",
        channel=1,
    )
    prob = load_backend(settings).predict(_half_red())
    expected = 1.0 / (1.0 + np.exp(-4.0))
    np.testing.assert_allclose(prob[:, :30], expected, atol=1e-5)
    np.testing.assert_allclose(prob[:, 50:], 1.0 - expected, atol=1e-5)


def test_onnx_output_selected_by_a_name_that_does_not_exist_is_reported(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = _onnx_red_model(tmp_path / "red.onnx", "nchw")
    settings = UserModelConfig(
        format="onnx", uri=str(path), input_size=(16, 16), output_key="alpha", channel=1
    )
    with pytest.raises(KeyError, match="prob_nchw"):
        load_backend(settings).predict(_half_red())


def test_mean_and_std_normalize_the_input(tmp_path: Path) -> None:
    """With mean 0.5 / std 0.5 the red channel arrives in [-1, 1]: red 1 -> logit 4 * 1."""
    path = _save_script(RedLogits(), tmp_path / "red.pt")
    settings = UserModelConfig(
        format="torchscript",
        uri=str(path),
        input_size=(8, 8),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        output="sigmoid",
    )
    prob = load_backend(settings).predict(_half_red())
    np.testing.assert_allclose(prob[:, :30], 1.0 / (1.0 + np.exp(-4.0)), atol=1e-5)  # 8*(1-.5)


@pytest.mark.parametrize(
    ("output", "channel", "expected"),
    [
        ("probability", 1, [0.2, 0.9]),
        ("sigmoid", 0, [0.5, 1.0 / (1.0 + np.exp(-1.0))]),
        ("softmax", 1, [1.0 / (1.0 + np.exp(-0.2)), 1.0 / (1.0 + np.exp(1.0 - 0.9))]),
        ("argmax", 1, [1.0, 0.0]),
    ],
)
def test_output_readings(output: str, channel: int, expected: list[float]) -> None:
    raw = np.array([[[[0.0, 1.0]], [[0.2, 0.9]]]], np.float32)  # (1, C=2, H=1, W=2)
    s = UserModelConfig(format="onnx", uri="x", output=output, channel=channel)  # type: ignore[arg-type]
    np.testing.assert_allclose(read_person_map(raw, s)[0], expected, rtol=1e-6)


def test_crop_scales_to_a_smaller_output() -> None:
    assert scale_crop((16, 0, 32, 64), (64, 64), (32, 32)) == (8, 0, 16, 32)


def test_config_yaml_mapping_becomes_a_user_model_and_segments(tmp_path: Path) -> None:
    path = _save_script(RedLogits(), tmp_path / "red.pt")
    cfg = load_config(
        {
            "segment": {
                "model": {
                    "format": "torchscript",
                    "uri": str(path),
                    "input_size": [16, 16],
                    "output": "sigmoid",
                }
            }
        }
    )
    assert isinstance(cfg.segment.model, UserModelConfig)
    again = load_config(cfg.model_dump(mode="json"))  # what Dask workers receive
    assert again.segment.model == cfg.segment.model
    seg = load_segmenter(cfg.segment.model)
    assert seg is load_segmenter(again.segment.model), "cached per process like built-ins"
    result = seg.predict(_half_red())
    assert result.probability.shape == (60, 80)
    # presence for models it was not calibrated on is judged on the selfie mask
    assert "mediapipe-selfie-segmentation@0.10.21" in seg.models
    assert seg.license == "unknown (user model)"
