"""Matte model backends: one interface from an RGB photo to a person alpha/probability map.

Every backend takes an RGB uint8 HxWx3 image and returns a float32 HxW map in [0, 1] at the
image's full resolution, and says which weights produced it (model id, sha256, license) so a
dataset can record them. Backends do no presence judgement; `matteforge.tasks.segment` does.

Built in (rvm, meet and selfie run as torch modules, no TensorFlow/tfjs/LiteRT at run time):

- ``rvm``: Robust Video Matting (MobileNetV3) run on a still as a short static video: the
  photo is fed `passes` times (2) so the recurrent state settles, its encoder sees the photo
  at long sides 384 and 640 (the two maps averaged), and its guided-filter refiner upsamples
  to the photo's own size (up to `RVM_REFINE_SIDE`). A real matting model: soft hair, full
  bodies. GPL-3.0 (treat so).
- ``meet``: Google Meet segmentation, input stretched to 256×144. Apache-2.0.
- ``mediapipe-selfie`` (alias ``selfie``): MediaPipe selfie segmentation, letterboxed 256×256.
  Apache-2.0.
- ``modnet``: MODNet (photographic) as ONNX, run with onnxruntime, short side 512
  (`matteforge.models.modnet`). Apache-2.0.

Every built-in also has ``predict_batch``: the maps of several photos, photos whose model
input has the same shape sharing one forward pass (what a GPU is fast at). ``predict`` is a
batch of one, so both give the same maps (up to the float rounding of batched convolutions).

Example::

    backend = load_backend("rvm")
    alpha = backend.predict(rgb)                    # HxW float32 in [0, 1]
    alphas = backend.predict_batch([rgb1, rgb2])    # one map per photo, in order
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from matteforge.models.executors.tfjs_torch import TfjsGraphModule, load_tfjs
from matteforge.models.executors.tflite_torch import TFLiteModule, load_tflite
from matteforge.models.identity import (
    PLUGIN_GROUP,
    split_model_name,
    tfjs_shard_files,
)
from matteforge.models.registry import MEET, RVM, SELFIE_WEIGHTS
from matteforge.models.weights import (
    NpmModel,
    WeightsError,
    resolve_weights,
    sha256_file,
    shards_sha256,
)

SELFIE_SIZE = 256
MEET_SIZE = (256, 144)  # width, height: the model's fixed input
# The rvm recipe; see docs/segment.md for the measurements behind each number.
RVM_SIZES = (384, 640)  # long sides the encoder sees; the maps are averaged
RVM_PASSES = 2  # frames of the static "video"; the first, from zero state, misses body parts
RVM_REFINE_SIDE = 2048  # the refiner works at the photo's size up to this long side
RVM_STATES = ("r1", "r2", "r3", "r4")


class MatteBackend(Protocol):
    """RGB photos in, HxW float32 maps in [0, 1] at each photo's size out.

    ``predict_batch(images)`` returns what ``[predict(i) for i in images]`` would, in the same
    order, running photos whose model inputs share a shape as one batch. Every built-in backend
    has it; a plugin (entry point) may have only ``predict``, so callers fall back to one
    ``predict`` per photo where it is missing (`matteforge.tasks.segment.predict_batch`).
    """

    model_id: str
    weights_sha256: str
    license: str

    def predict(self, image: np.ndarray) -> np.ndarray: ...

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...


# --- pre/post-processing (pure) ---------------------------------------------------------------


def as_rgb(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8; HxW and HxWx1 grayscale are stacked."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB image, got dtype {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return np.dstack([image.reshape(image.shape[:2])] * 3)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image)


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average when shrinking (no aliasing), bilinear when enlarging."""
    shrink = width * height < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def long_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled so the longer side is `long_side`, aspect kept."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fit into size x size keeping aspect, pad black; returns (canvas, (top, left, h, w))."""
    nh, nw = long_side_size(*image.shape[:2], size)
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = resize(image, nw, nh)
    return canvas, (top, left, nh, nw)


def to_full_size(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear to the image size, clipped to [0, 1], float32."""
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    if prob.shape != (height, width):
        prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(prob, 0.0, 1.0).astype(np.float32)


def _unit_float(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Equal-shape HxWx3 uint8 images -> one NHWC float32 batch in [0, 1]."""
    return torch.from_numpy(np.stack(images).astype(np.float32) / 255.0)


def group_indices(keys: Sequence[Hashable]) -> list[list[int]]:
    """Positions of equal keys, groups in first-seen order: each group is one forward pass.

    The key is what the model's input tensor shape depends on, so a group stacks into a batch.
    """
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


# --- backends ---------------------------------------------------------------------------------


class _Provenance:
    """What a dataset records about the weights behind a mask."""

    def __init__(self, model_id: str, weights_sha256: str, license: str, device: str) -> None:
        self.model_id = model_id
        self.weights_sha256 = weights_sha256
        self.license = license
        self.device = torch.device(device)

    @property
    def models(self) -> dict[str, str]:
        return {self.model_id: self.weights_sha256}


class RvmBackend(_Provenance):
    """Robust Video Matting on a still, fed as a static video of `passes` frames, at each of
    the encoder sizes `sizes`, the maps averaged.

    Why the passes: RVM is trained on clips, and its first frame (zero recurrent state) is its
    worst; repeating the photo lets the state settle, which recovers body parts the first
    frame misses. Why the full-size input with ``downsample_ratio``: the model's own refiner
    then upsamples the matte guided by the full-resolution photo, instead of a bilinear resize.
    Why two sizes: the body parts RVM misses change with the size its encoder sees, so the
    mean of two sizes keeps the misses of neither (docs/segment.md).
    """

    def __init__(
        self,
        net: TfjsGraphModule,
        sha: str,
        sizes: int | Sequence[int] = RVM_SIZES,
        device: str = "cpu",
        passes: int = RVM_PASSES,
        refine_side: int = RVM_REFINE_SIDE,
    ) -> None:
        super().__init__(RVM.model_id, sha, RVM.license, device)
        if passes < 1:
            raise ValueError(f"rvm passes must be >= 1, got {passes}")
        self.net = net.to(self.device)
        self.sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
        if not self.sizes:
            raise ValueError("rvm needs at least one size")
        self.passes = passes
        self.refine_side = refine_side

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` for each photo; per encoder size, photos with the same refiner-size input
        and ratio run as one batch (the recurrent state is per photo: batch N is N videos)."""
        rgbs = [as_rgb(image) for image in images]
        per_size = [self._maps_at(rgbs, size) for size in self.sizes]
        mattes = []
        for k, rgb in enumerate(rgbs):
            maps = [by_size[k] for by_size in per_size]
            mean = maps[0] if len(maps) == 1 else np.mean(maps, axis=0, dtype=np.float32)
            mattes.append(to_full_size(mean, *rgb.shape[:2]))
        return mattes

    def _maps_at(self, rgbs: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
        """Each photo's full-size matte with the encoder at `size`, one forward per group."""
        plans = [self._input_plan(rgb.shape[:2], size) for rgb in rgbs]
        maps: list[np.ndarray] = [np.empty(0, np.float32)] * len(rgbs)
        for members in group_indices(plans):
            x = torch.cat([self._input(rgbs[i], size)[0] for i in members])
            pha = self._forward(x, plans[members[0]][2])
            for i, matte in zip(members, pha, strict=True):
                maps[i] = to_full_size(matte, *rgbs[i].shape[:2])
        return maps

    def _forward(self, x: torch.Tensor, ratio: float) -> np.ndarray:
        """NHWC batch -> N mattes (NxHxW) after `passes` frames of the static video.

        The recurrent inputs start as zero scalars (broadcast over the batch) and come back
        as per-photo NHWC states, so every photo keeps its own state."""
        feeds: dict[str, torch.Tensor] = {
            "src": x,
            "downsample_ratio": torch.tensor(ratio, dtype=torch.float32, device=self.device),
        }
        feeds.update({f"{r}i": torch.zeros((), device=self.device) for r in RVM_STATES})
        with torch.inference_mode():
            for _ in range(self.passes - 1):  # only the recurrent outputs: no refiner work
                out = self.net(feeds, [f"{r}o" for r in RVM_STATES])
                feeds.update({f"{r}i": out[f"{r}o"] for r in RVM_STATES})
            return self.net(feeds, ["pha"])["pha"][..., 0].cpu().numpy()

    def _input_plan(self, shape: tuple[int, ...], size: int) -> tuple[int, int, float]:
        """(h, w) of the photo at the refiner's size, and the ratio that brings it to `size`:
        everything the model's input depends on, hence the batching key."""
        long_side = max(shape[:2])
        if long_side <= size:  # small photo: the encoder sees it enlarged, nothing to refine
            return (*long_side_size(shape[0], shape[1], size), 1.0)
        h, w = long_side_size(shape[0], shape[1], min(long_side, self.refine_side))
        return h, w, size / max(h, w)

    def _input(self, image: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The photo at the refiner's size (a batch of one), and the ratio to `size`."""
        h, w, ratio = self._input_plan(image.shape, size)
        if (h, w) != image.shape[:2]:
            image = resize(image, w, h)
        x = _unit_float([image]).to(self.device)
        return x, torch.tensor(ratio, dtype=torch.float32, device=self.device)


class MeetBackend(_Provenance):
    """Google Meet segmentation: stretched (not letterboxed) to its 256×144 input."""

    def __init__(self, net: TfjsGraphModule, sha: str, device: str = "cpu") -> None:
        super().__init__(MEET.model_id, sha, MEET.license, device)
        self.net = net.to(self.device)

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` for each photo; the input size is fixed, so all run as one batch (the
        graph was exported at batch 1: see `tfjs_torch` for how its reshapes take N)."""
        rgbs = [as_rgb(image) for image in images]
        if not rgbs:
            return []
        x = _unit_float([resize(rgb, *MEET_SIZE) for rgb in rgbs]).to(self.device)
        with torch.inference_mode():
            logits = self.net({"input_1": x}, ["segment"])["segment"]
            person = torch.softmax(logits, dim=-1)[..., 1].cpu().numpy()
        return [to_full_size(p, *rgb.shape[:2]) for p, rgb in zip(person, rgbs, strict=True)]


class SelfieBackend(_Provenance):
    """MediaPipe selfie segmentation, letterboxed to 256×256 (sigmoid inside the model)."""

    def __init__(self, net: TFLiteModule, sha: str, device: str = "cpu") -> None:
        super().__init__(SELFIE_WEIGHTS.model_id, sha, SELFIE_WEIGHTS.license, device)
        self.net = net.to(self.device)

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` for each photo; every canvas is 256×256, so all run as one batch, and
        each map is cut out of its canvas by its own letterbox box."""
        rgbs = [as_rgb(image) for image in images]
        if not rgbs:
            return []
        boxed = [letterbox(rgb, SELFIE_SIZE) for rgb in rgbs]
        with torch.inference_mode():
            (out,) = self.net(_unit_float([canvas for canvas, _ in boxed]).to(self.device))
        probs = out[..., 0].cpu().numpy()
        return [
            to_full_size(prob[top : top + h, left : left + w], *rgb.shape[:2])
            for prob, rgb, (_, (top, left, h, w)) in zip(probs, rgbs, boxed, strict=True)
        ]


# --- loading ----------------------------------------------------------------------------------


def _load_npm(
    model: NpmModel, weights_path: str | None, cache_dir: str | None
) -> tuple[TfjsGraphModule, str]:
    try:
        path = resolve_weights(model, weights_path, cache_dir)
    except WeightsError as exc:
        hint = "Or use a model that needs no npm: mediapipe-selfie (--config permissive)."
        raise WeightsError(f"{exc}\n{hint}") from None
    net = load_tfjs(path)
    return net, shards_sha256(tfjs_shard_files(path))


def _rvm(
    weights_path: str | None,
    cache_dir: str | None,
    device: str,
    size: int | Sequence[int] | None,
    passes: int | None = None,
) -> RvmBackend:
    net, sha = _load_npm(RVM, weights_path, cache_dir)
    sizes = RVM_SIZES if size is None else size
    passes = RVM_PASSES if passes is None else passes
    return RvmBackend(net, sha, sizes, device=device, passes=passes)


def _meet(
    weights_path: str | None, cache_dir: str | None, device: str, size: int | None
) -> MeetBackend:
    net, sha = _load_npm(MEET, weights_path, cache_dir)
    return MeetBackend(net, sha, device=device)


def _selfie(
    weights_path: str | None, cache_dir: str | None, device: str, size: int | None
) -> SelfieBackend:
    path = resolve_weights(SELFIE_WEIGHTS, weights_path, cache_dir)
    return SelfieBackend(load_tflite(path), sha256_file(path), device=device)


def _modnet(
    weights_path: str | None, cache_dir: str | None, device: str, size: int | None
) -> MatteBackend:
    from matteforge.models.modnet import load_modnet  # imports onnxruntime only when used

    return load_modnet(weights_path, cache_dir, device, size)


Loader = Callable[[str | None, str | None, str, int | None], MatteBackend]
BACKENDS: dict[str, Loader] = {
    "rvm": _rvm,
    "meet": _meet,
    "mediapipe-selfie": _selfie,
    "selfie": _selfie,
    "modnet": _modnet,
}


def load_backend(
    name: str | Any,
    weights_path: str | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
    size: int | Sequence[int] | None = None,
    passes: int | None = None,
) -> MatteBackend:
    """Fetch (first use) or locate the weights and build the backend `name`.

    `name` is a built-in name, the name of a plugin (an entry point in the group
    ``matteforge.backends`` whose object is a loader with the built-ins' signature), or
    user-model settings (`matteforge.config.UserModelConfig`). `size` is the input long side
    where the model has one (rvm: one or more encoder sizes); `passes` is rvm's alone.
    """
    if isinstance(name, str) and "@" in name:
        name, named_size = split_model_name(name)
        if size is not None:
            raise ValueError(f"{name!r}: give its size once (in the name or as size)")
        size = named_size if name == "rvm" or named_size is None else named_size[0]
    if passes is not None and name != "rvm":
        raise ValueError(f"passes applies to the rvm model only, not {name!r}")
    # "auto" stays "auto" for modnet: onnxruntime decides by its own providers (modnet.py)
    torch_device = model_device(device)
    if name == "rvm":
        return _rvm(weights_path, cache_dir, torch_device, size, passes)
    if not isinstance(name, str):
        from matteforge.models.user_models import UserModelBackend

        return UserModelBackend(name, torch_device)
    plugins = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    if name in BACKENDS:
        loader: Loader = BACKENDS[name]
    elif name in plugins:  # other packages: [project.entry-points."matteforge.backends"]
        loader = plugins[name].load()
    else:
        known = [*BACKENDS, *plugins]
        raise ValueError(f"unknown segmenter {name!r}; known: {', '.join(map(repr, known))}")
    return loader(weights_path, cache_dir, device if name == "modnet" else torch_device, size)


def model_device(device: str) -> str:
    """The torch device a model runs on: "auto" is a GPU when torch sees one, else the CPU.

    Asking for CUDA where there is none is a one-line error here, not torch's lazy
    initialisation error in the middle of a shard.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"segment.device {device!r} asked for, but torch sees no CUDA "
                         "device; use 'cpu' or 'auto'")
    return device
