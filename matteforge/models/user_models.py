"""Users' own segmentation models (torch.export, TorchScript or ONNX) as mask backends.

The file comes from any fsspec URI, optionally pinned by sha256; how to feed it (input size,
stretch or letterbox, mean/std on RGB / 255, NCHW or NHWC) and how to read its output
(probability, sigmoid, softmax channel, argmax class) are settings, so most published person
segmenters fit without code. A torchvision DeepLabV3 (VOC person = class 15), for example, is
exported once with ``torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 3, 520,
520),)), "deeplab.pt2")`` and configured as ``{format: torch-export, uri: ..., input_size: [520,
520], output_key: out, output: argmax, channel: 15, mean: [0.485, 0.456, 0.406], std: [0.229,
0.224, 0.225]}``.

TorchScript archives carry code that torch runs on load: load only models you trust.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from matteforge.models.backends import as_rgb, letterbox, resize, to_full_size
from matteforge.models.identity import read_model_bytes, user_model_weights
from matteforge.models.weights import WeightsError


class UserModelSettings(Protocol):
    """What `matteforge.config.UserModelConfig` holds (kept structural: no config import)."""

    format: str
    uri: str
    sha256: str | None
    license: str
    input_size: tuple[int, int]
    resize: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str
    output: str
    channel: int
    output_key: str | int


Runner = Callable[[np.ndarray], Any]  # NCHW/NHWC float32 batch -> the model's raw outputs


def prepare_input(image: np.ndarray, s: UserModelSettings) -> tuple[np.ndarray, tuple[int, ...]]:
    """Resize and normalize to a batch of one; returns it and the crop (top, left, h, w)."""
    height, width = s.input_size
    if s.resize == "letterbox":
        if height != width:
            raise ValueError("letterbox needs a square input_size")
        canvas, crop = letterbox(image, height)
    else:
        canvas, crop = resize(image, width, height), (0, 0, height, width)
    x = (canvas.astype(np.float32) / 255.0 - np.float32(s.mean)) / np.float32(s.std)
    x = x[None] if s.layout == "nhwc" else x.transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x, dtype=np.float32), crop


def scale_crop(
    crop: tuple[int, ...], input_size: tuple[int, int], output_shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """The letterbox crop in output pixels, for models whose output is smaller than the input."""
    sy, sx = output_shape[0] / input_size[0], output_shape[1] / input_size[1]
    top, left, h, w = crop
    return round(top * sy), round(left * sx), max(1, round(h * sy)), max(1, round(w * sx))


def select_output(outputs: Any, key: str | int, names: Sequence[str] = ()) -> Any:
    """One output out of a tensor, tuple/list or dict (TorchScript) or named list (ONNX)."""
    if isinstance(outputs, dict):
        return outputs[key if key in outputs else str(key)]
    if isinstance(outputs, (tuple, list)):
        if isinstance(key, str):
            if key not in names:
                raise KeyError(f"no output named {key!r}; outputs: {list(names)}")
            return outputs[list(names).index(key)]
        return outputs[key]
    if key not in (0, "0"):
        raise KeyError(f"the model has one output; output_key {key!r} does not exist")
    return outputs


def read_person_map(output: np.ndarray, s: UserModelSettings) -> np.ndarray:
    """A model output (batch first) -> HxW person map in [0, 1], per `s.output`."""
    out = np.asarray(output, dtype=np.float32)[0]
    if out.ndim == 2:
        out = out[None]
    elif s.layout == "nhwc":
        out = out.transpose(2, 0, 1)
    if out.ndim != 3:
        raise ValueError(f"expected a (1, C, H, W) or (1, H, W) output, got {output.shape}")
    if s.output == "argmax":
        return (out.argmax(axis=0) == s.channel).astype(np.float32)
    if s.channel >= out.shape[0]:
        raise ValueError(f"channel {s.channel} does not exist: the output has {out.shape[0]}")
    if s.output == "softmax":
        shifted = np.exp(out - out.max(axis=0, keepdims=True))
        return shifted[s.channel] / shifted.sum(axis=0)
    if s.output == "sigmoid":
        return 1.0 / (1.0 + np.exp(-out[s.channel]))
    return out[s.channel]


def _torch_runner(
    module: Callable[[torch.Tensor], Any], s: UserModelSettings, device: str
) -> Runner:
    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            raw = select_output(module(torch.from_numpy(x).to(device)), s.output_key)
        return raw.float().cpu().numpy()

    return run


def _torchscript_runner(data: bytes, s: UserModelSettings, device: str) -> Runner:
    return _torch_runner(torch.jit.load(io.BytesIO(data), map_location=device).eval(), s, device)


def _export_runner(data: bytes, s: UserModelSettings, device: str) -> Runner:
    """A `torch.export.save` archive (.pt2): torch's successor to TorchScript."""
    return _torch_runner(torch.export.load(io.BytesIO(data)).module().to(device), s, device)


def _onnx_runner(data: bytes, s: UserModelSettings, device: str) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise WeightsError("ONNX models need onnxruntime: pip install 'matteforge[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the worker's thread budget
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(data, options, providers=providers)
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray) -> Any:
        return select_output(session.run(None, {input_name: x}), s.output_key, names)

    return run


_RUNNERS: dict[str, Callable[[bytes, UserModelSettings, str], Runner]] = {
    "torch-export": _export_runner,
    "torchscript": _torchscript_runner,
    "onnx": _onnx_runner,
}


class UserModelBackend:
    """A user model behind the backend interface, with provenance from the file's bytes."""

    def __init__(self, settings: UserModelSettings, device: str = "cpu") -> None:
        data = read_model_bytes(settings.uri, settings.sha256)
        self.settings = settings
        weights = user_model_weights(settings.format, settings.uri, settings.license, data)
        self.model_id, self.weights_sha256 = weights.model_id, weights.weights_sha256
        self.license = weights.license
        self._run = _RUNNERS[settings.format](data, settings, device)

    @property
    def models(self) -> dict[str, str]:
        return {self.model_id: self.weights_sha256}

    def predict(self, image: np.ndarray) -> np.ndarray:
        image = as_rgb(image)
        x, crop = prepare_input(image, self.settings)
        prob = read_person_map(self._run(x), self.settings)
        top, left, h, w = scale_crop(crop, self.settings.input_size, prob.shape)
        return to_full_size(prob[top : top + h, left : left + w], *image.shape[:2])
