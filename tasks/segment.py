"""Segment stage: person alpha/probability map plus a person-presence score (pure, no I/O).

The mask comes from a pluggable backend (`matteforge.models.backends`: rvm by default, meet,
mediapipe-selfie). Presence is judged separately, because segmenters find "a person" where there
is none (selfie marks most of a cat photo): from evidence a reviewer can read in the manifest —
BlazeFace face scores and how person-like the mask is (see `presence_from_evidence`).

Example::

    seg = load_segmenter("rvm")
    result = seg.predict(rgb_uint8)            # result.probability: HxW float32 in [0, 1]
    keep = is_person(result)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import cv2
import numpy as np
import torch

from matteforge.config import SegmentConfig, UserModelConfig
from matteforge.models.backends import (
    MatteBackend,
    as_rgb,
    letterbox,
    load_backend,
    long_side_size,
    model_device,
)
from matteforge.models.executors.tflite_torch import TFLiteModule, load_tflite
from matteforge.models.identity import ModelIdentity, Weights, gate_index
from matteforge.models.registry import FACE_WEIGHTS
from matteforge.models.weights import resolve_weights, sha256_file

T_co = TypeVar("T_co", covariant=True)
DEFAULT_MODEL = "rvm"  # lowest mask error measured (docs/segment.md); configs/permissive.yaml
# PRESENCE_CALIBRATED (models/identity.py): backends whose own mask the presence rules below were
# calibrated on; any other backend (meet hallucinates people on coffee and wallpapers) gets its
# presence evidence from the selfie mask.
EVIDENCE_SIZE = 256  # long side of the mask the evidence is measured on
FACE_SIZE = 128
HEAD_WINDOW_FRACTIONS = (0.25, 0.5, 1.0)  # head-search windows, as fractions of mask width

# Chosen by measurement (torch executor, 2026-11-22) on 13 real portraits and 14 real photos
# without people. face = max BlazeFace score (whole image + 3 head windows), soft = unsure/mask
# pixels, top = mask share of the top row. Every image lands at 0 or 1, so any threshold in
# (0, 1) separates them; 0.5 keeps the widest margin on each ramp (soft 0.65, top 0.375).
#   image               face  area  soft  top  presence | image              face  area  soft  top
#   astronaut           0.95  0.55  0.07  0.00  1       | coffee             0.44  0.21  1.86  0.00
#   camera (gray)       0.91  0.33  0.16  0.00  1       | chelsea (cat)      0.57  0.95  0.05  0.59
#   bgmv2 (full body)   0.94  0.10  0.43  0.00  1       | rocket             0.11  0.00  0.05  0.00
#   p3m a1 (blurred)    0.47  0.63  0.12  0.00  1       | hubble_deep_field  0.62  0.04  1.76  0.00
#   p3m a2 (blurred)    0.43  0.70  0.21  0.01  1       | brick              0.09  0.00  0.00  0.00
#   p3m a3 (blurred)    0.79  0.37  0.10  0.00  1       | grass              0.20  0.00  0.00  0.00
#   p3m a4 (blurred)    0.38  0.48  0.09  0.00  1       | gravel             0.15  0.00  0.00  0.00
#   p3m b1 (hood)       0.68  0.57  0.06  0.00  1       | stereo_motorcycle  0.55  0.02  3.64  0.00
#   p3m b2              0.62  0.39  0.19  0.00  1       | mate_Aqua          0.61  0.16  1.17  0.00
#   p3m b3              0.73  0.47  0.29  0.07  1       | mate_Dune          0.12  0.00  0.64  0.00
#   p3m c1              0.97  0.70  0.04  0.00  1       | mate_Garden        0.41  0.42  0.84  0.00
#   p3m c2              0.97  0.29  0.25  0.12  1       | mate_GreenMeadow   0.31  0.00  0.00  0.00
#   p3m c3 (from back)  0.59  0.46  0.15  0.00  1       | mate_Storm/Wood    <0.1  0.00  0.00  0.00
# (all negatives: presence 0). Known gap: an animal the selfie model segments decisively, framed
# like a portrait and without a strong face score, would pass; the manifest keeps the evidence.
# The same rules on the rvm mask (2026-11-22, same images): every portrait 1, every other photo 0;
# rvm leaves the 14 non-person photos empty (area <= 0.001; the cat's few pixels are all unsure).
# meet's mask does not fit them (coffee and two wallpapers score 1, the astronaut 0.13), so
# backends outside PRESENCE_CALIBRATED are gated on the selfie mask instead.
PRESENCE_THRESHOLD: float = 0.5


@dataclass(frozen=True)
class SegmentResult:
    probability: np.ndarray  # HxW float32 in [0,1], full input resolution (models' mean)
    presence: float  # person-presence score in [0,1]
    evidence: dict[str, float]  # the figures behind `presence`
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # model id → its own map

    def model_maps(self) -> dict[str, np.ndarray]:
        """Each model's map; one entry (the probability) for a single model or a stored mask."""
        return self.maps or {"model": self.probability}


class Segmenter(Protocol):
    model_id: str  # the mask model, recorded per manifest row and in dataset.json
    weights_sha256: str
    license: str
    models: dict[str, str]  # every model behind a result (mask, presence mask, face): sha256

    def predict(self, image: np.ndarray) -> SegmentResult: ...


def ensemble_map(maps: Mapping[str, np.ndarray]) -> np.ndarray:
    """The mean of the models' maps (float32): what the recipe treats as the model's answer."""
    if not maps:
        raise ValueError("at least one model map is needed")
    arrays = [np.asarray(m, dtype=np.float32) for m in maps.values()]
    return arrays[0] if len(arrays) == 1 else np.mean(arrays, axis=0, dtype=np.float32)


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def presence_from_evidence(ev: dict[str, float]) -> float:
    """Mask must be decisive, and either a clear face or portrait-like framing must back it.

    Real portraits give masks with few unsure pixels relative to their area (< 0.45 measured);
    textures, food and landscapes give soft, patchy ones (> 0.8). The cat mask is decisive too,
    but it fills the frame and covers the top edge, where a portrait's head leaves background;
    a strong face (a close-up selfie may touch the top edge) overrides that framing veto.
    """
    quality = (1.0 - _ramp(ev["soft_ratio"], 0.5, 0.8)) * _ramp(ev["mask_area"], 0.002, 0.01)
    framing = 1.0 - _ramp(ev["top_contact"], 0.25, 0.5)
    face = _ramp(ev["face_score"], 0.75, 0.9)
    return quality * max(face, framing)


def is_person(result: SegmentResult, threshold: float = PRESENCE_THRESHOLD) -> bool:
    return result.presence >= threshold


def square_crop(image: np.ndarray, cy: float, cx: float, side: float) -> np.ndarray:
    """Crop a square window, padding with black where it leaves the image (keeps the scale)."""
    side_px = max(1, round(side))
    y0, x0 = round(cy - side_px / 2), round(cx - side_px / 2)
    out = np.zeros((side_px, side_px, 3), np.uint8)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(image.shape[0], y0 + side_px), min(image.shape[1], x0 + side_px)
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    return out


def mask_evidence(prob: np.ndarray) -> dict[str, float]:
    """Resolution-free mask statistics, computed at model resolution."""
    fg = prob > 0.5
    area = float(fg.mean())
    soft = float(((prob > 0.2) & (prob < 0.8)).mean())
    edges = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
    return {
        "mask_area": area,
        "soft_ratio": min(soft / max(area, 1e-3), 100.0),
        "mask_confidence": float(prob[fg].mean()) if area > 0 else 0.0,
        "top_contact": float(fg[0].mean()),
        "border_contact": float(edges.mean()),
    }


def head_windows(fg: np.ndarray, image_shape: tuple[int, ...]) -> list[tuple[float, float, float]]:
    """Square windows (cy, cx, side) where a head would sit: at the top of the mask.

    BlazeFace short-range only sees faces that fill a good part of its 128 px input, so a small
    face in a full-body shot is found only in a crop around the head.
    """
    if not fg.any():
        return []
    sy, sx = image_shape[0] / fg.shape[0], image_shape[1] / fg.shape[1]
    ys, xs = np.nonzero(fg)
    top = fg[ys.min() : ys.min() + max(1, int(0.15 * fg.shape[0]))]
    cx = (np.nonzero(top)[1].mean() + 0.5) * sx
    width = (xs.max() + 1 - xs.min()) * sx
    windows = []
    for frac in HEAD_WINDOW_FRACTIONS:
        side = max(32.0, frac * width)
        windows.append((ys.min() * sy + 0.35 * side, cx, side))
    return windows


def evidence_map(prob: np.ndarray) -> np.ndarray:
    """The mask at EVIDENCE_SIZE long side (area-averaged), as the evidence was calibrated."""
    h, w = long_side_size(*prob.shape[:2], EVIDENCE_SIZE)
    if (h, w) == prob.shape[:2]:
        return prob
    return cv2.resize(prob, (w, h), interpolation=cv2.INTER_AREA)


class GatedSegmenter:
    """One mask backend or several (an ensemble), gated by BlazeFace and mask evidence.

    With several backends the result's probability is the mean of their maps, and each map is
    kept (``SegmentResult.maps``) for the recipe's agreement checks. `presence` is the backend
    whose mask the evidence is measured on when none of the mask backends is one the rules were
    calibrated on (then the first calibrated one is used).
    """

    def __init__(
        self,
        backend: MatteBackend | Sequence[MatteBackend],
        face: TFLiteModule,
        face_sha256: str,
        presence: MatteBackend | None = None,
        device: str = "cpu",
        gate_index: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.backends = list(backend) if isinstance(backend, Sequence) else [backend]
        self.backend = self.backends[0]
        self.presence_backend = presence
        self.gate_index = gate_index
        self.face = face.to(self.device)
        identity = ModelIdentity.combine(
            self.backends, presence, Weights(FACE_WEIGHTS.model_id, face_sha256,
                                             FACE_WEIGHTS.license))
        self.model_id = identity.model_id
        self.weights_sha256 = identity.weights_sha256
        self.license = identity.license
        self.models = identity.models  # all weights behind a result

    def _face_scores(self, crops: Sequence[np.ndarray]) -> list[float]:
        """BlazeFace's best score in each crop, all crops in one forward pass."""
        canvases = np.stack([letterbox(c, FACE_SIZE)[0] for c in crops])
        x = torch.from_numpy(canvases.astype(np.float32) / 127.5 - 1.0).to(self.device)
        with torch.inference_mode():
            _, scores = self.face(x)
        best = torch.sigmoid(scores.clamp(-100, 100)).reshape(len(crops), -1).amax(dim=1)
        return best.cpu().tolist()

    def predict(self, image: np.ndarray) -> SegmentResult:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[SegmentResult]:
        """``predict`` for several portraits, each model run once over all of them (batched
        per input size where the backend can): on a GPU one forward serves a whole batch."""
        images = [as_rgb(image) for image in images]
        if not images:
            return []
        arrays = [predict_batch(b, images) for b in self.backends]
        ids = [b.model_id for b in self.backends]
        gates = (arrays[self.gate_index] if self.presence_backend is None
                 else predict_batch(self.presence_backend, images))
        evidences, crops, owner = [], [], []
        for k, image in enumerate(images):
            small = evidence_map(gates[k])
            evidences.append(mask_evidence(small))
            for crop in [image] + [square_crop(image, *win)
                                   for win in head_windows(small > 0.5, image.shape)]:
                crops.append(crop)
                owner.append(k)
        face = [0.0] * len(images)
        for k, score in zip(owner, self._face_scores(crops), strict=True):
            face[k] = max(face[k], score)
        results = []
        for k, evidence in enumerate(evidences):
            # the same model twice (e.g. at two sizes) keeps both maps
            maps = {(i if ids.count(i) == 1 else f"{i}#{n}"): per_image[k]
                    for n, (i, per_image) in enumerate(zip(ids, arrays, strict=True))}
            evidence["face_score"] = face[k]
            results.append(SegmentResult(ensemble_map(maps), presence_from_evidence(evidence),
                                         evidence, maps if len(maps) > 1 else {}))
        return results


class _Predicts(Protocol[T_co]):
    def predict(self, image: np.ndarray) -> T_co: ...


def predict_batch(model: _Predicts[T_co], images: Sequence[np.ndarray]) -> list[T_co]:
    """A backend's maps or a segmenter's results for several images: batched where it can
    (``predict_batch``), one ``predict`` each where it cannot (a plugin backend, a stored mask
    when reprocessing)."""
    batch = getattr(model, "predict_batch", None)
    return list(batch(images)) if batch is not None else [model.predict(i) for i in images]


# Portraits per model batch on a GPU when segment.batch_size is not set; on the CPU a batch
# gains nothing (one core already runs a forward flat out) and holds every decoded image of it.
GPU_BATCH = 8


def batch_size(cfg: SegmentConfig) -> int:
    """Portraits a shard sends through the models together (``segment.batch_size``)."""
    if cfg.batch_size is not None:
        return cfg.batch_size
    return GPU_BATCH if torch.device(model_device(cfg.device)).type == "cuda" else 1


ModelName = str | UserModelConfig


def load_segmenter(
    name: ModelName | tuple[ModelName, ...] = DEFAULT_MODEL,
    weights_path: str | None = None,
    cache_dir: str | None = None,
    device: str = "auto",
    size: int | tuple[int, ...] | None = None,
    passes: int | None = None,
) -> Segmenter:
    """Load once per process (each Dask worker pays the load once, not once per batch).

    `name` is a built-in backend or your own model's settings (`segment.model` in the config),
    or a tuple of them (an ensemble); `device` is `segment.device` ("auto": a GPU when torch
    sees one). `size` is the backend's input long side where it has one
    (rvm: one or more, default 384 and 640), `passes` rvm's number of frames (2); None = the
    default (in an ensemble both go to rvm alone).
    """
    return _load_cached(name, weights_path, cache_dir, device, size, passes)


def segmenter_for(cfg: SegmentConfig) -> Segmenter:
    """The segmenter a build's `segment` section asks for."""
    size = tuple(cfg.size) if isinstance(cfg.size, list) else cfg.size  # hashable for the cache
    model = tuple(cfg.model) if isinstance(cfg.model, list) else cfg.model
    return load_segmenter(model, weights_path=cfg.weights_path, device=cfg.device, size=size,
                          passes=cfg.passes)


@functools.lru_cache(maxsize=8)
def _load_cached(
    name: ModelName | tuple[ModelName, ...],
    weights_path: str | None,
    cache_dir: str | None,
    device: str,
    size: int | tuple[int, ...] | None,
    passes: int | None,
) -> Segmenter:
    names = name if isinstance(name, tuple) else (name,)
    if len(names) > 1 and weights_path is not None:
        raise ValueError("segment.weights_path names one model's weights; an ensemble reads "
                         "each model's from its environment variable (docs/segment.md)")
    if len(names) > 1:  # size and passes are rvm's
        backends = [load_backend(n, None, cache_dir, device, size if n == "rvm" else None,
                                 passes if n == "rvm" else None) for n in names]
    else:
        backends = [load_backend(names[0], weights_path, cache_dir, device, size, passes)]
    gate = gate_index(names)
    presence = None
    if gate is None:
        presence = load_backend("mediapipe-selfie", None, cache_dir, device)
    face_path = resolve_weights(FACE_WEIGHTS, None, cache_dir)
    return GatedSegmenter(
        backends, load_tflite(face_path), sha256_file(face_path), presence, model_device(device),
        gate or 0,
    )
