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

Every photo is fed at the same `input_size`, so `predict_batch` runs a whole batch as one N-batch
input. Models whose batch is fixed at 1 (an ONNX export with a static batch, a ``torch.export``
traced at batch 1) refuse N > 1: the backend then runs that model one photo at a time from then
on, which gives the same maps.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from matteforge.models.backends import as_rgb, letterbox, resize, to_full_size
from matteforge.models.identity import read_model_bytes, user_model_weights
from matteforge.models.weights import WeightsError

log = logging.getLogger(__name__)


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
    """Resize and normalize one photo (CHW or HWC, no batch axis: the caller stacks a batch);
    returns it and the crop (top, left, h, w) of the photo in the input."""
    height, width = s.input_size
    if s.resize == "letterbox":
        if height != width:
            raise ValueError("letterbox needs a square input_size")
        canvas, crop = letterbox(image, height)
    else:
        canvas, crop = resize(image, width, height), (0, 0, height, width)
    x = (canvas.astype(np.float32) / 255.0 - np.float32(s.mean)) / np.float32(s.std)
    x = x if s.layout == "nhwc" else x.transpose(2, 0, 1)
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
    """A model output (batch first) -> the first photo's HxW person map in [0, 1]."""
    return read_person_maps(output, s)[0]


def read_person_maps(output: np.ndarray, s: UserModelSettings) -> list[np.ndarray]:
    """A model output (batch first) -> one HxW person map in [0, 1] per photo, per `s.output`."""
    batch = np.asarray(output, dtype=np.float32)
    if batch.ndim not in (3, 4):
        raise ValueError(f"expected a (N, C, H, W) or (N, H, W) output, got {batch.shape}")
    return [_person_map(out, s) for out in batch]


def _person_map(out: np.ndarray, s: UserModelSettings) -> np.ndarray:
    """One photo's output (CxHxW, HxWxC for nhwc, or HxW) -> its HxW person map."""
    if out.ndim == 2:
        out = out[None]
    elif s.layout == "nhwc":
        out = out.transpose(2, 0, 1)
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
        self.batches = True  # False once the model refused a batch of N > 1

    @property
    def models(self) -> dict[str, str]:
        return {self.model_id: self.weights_sha256}

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` for each photo: all share `input_size`, so they run as one N-batch (one
        photo at a time for a model whose batch is fixed at 1)."""
        rgbs = [as_rgb(image) for image in images]
        if not rgbs:
            return []
        inputs = [prepare_input(rgb, self.settings) for rgb in rgbs]
        probs = self._person_maps(np.stack([x for x, _ in inputs]))
        mattes = []
        for rgb, (_, crop), prob in zip(rgbs, inputs, probs, strict=True):
            top, left, h, w = scale_crop(crop, self.settings.input_size, prob.shape)
            mattes.append(to_full_size(prob[top : top + h, left : left + w], *rgb.shape[:2]))
        return mattes

    def _person_maps(self, x: np.ndarray) -> list[np.ndarray]:
        """The maps of a stacked batch. A model that refuses N > 1 (or answers with another
        batch size) but takes one photo runs one photo at a time, now and from then on; an
        error it also gives on one photo is the model's own, and is raised."""
        if len(x) > 1 and self.batches:
            try:
                maps = read_person_maps(self._run(x), self.settings)
            except Exception as exc:  # onnxruntime, torch.export guards: no common type
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            else:
                if len(maps) == len(x):
                    return maps
                reason = f"a batch of {len(x)} gave {len(maps)} maps"
            first = self._one(x[:1])  # raises where the model fails on one photo too
            self.batches = False
            log.warning("%s does not take batches (%s); running it one photo at a time",
                        self.model_id, reason)
            return [first, *(self._one(x[i : i + 1]) for i in range(1, len(x)))]
        return [self._one(x[i : i + 1]) for i in range(len(x))]

    def _one(self, x: np.ndarray) -> np.ndarray:
        return read_person_maps(self._run(x), self.settings)[0]
