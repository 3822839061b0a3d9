"""Which weights a segmenter stands for, worked out from the files alone: no torch, no model.

A build's flow process records the mask model (``dataset.json``, the plan's check that a row was
made by today's weights) but never runs it. Loading the segmenter there to read its ids cost
~2-3 s of one core (torch's import, the graphs built) before the first shard could start: serial
time that no number of Dask workers shortens (issue 19). The workers load the models; the flow
asks this module, which reads only the registry and the weight files' bytes.

The ids are the ones a loaded segmenter reports (``tasks/segment.GatedSegmenter`` builds its own
with :meth:`ModelIdentity.combine`, and a test holds the two equal for every built-in model,
ensembles and user models). A plugin backend's ids are known only to its loader, so for a
config naming one the segmenter is loaded after all (:func:`segment_identity`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

import fsspec

from matteforge.models.registry import (
    FACE_WEIGHTS,
    MEET,
    MODNET_WEIGHTS,
    RVM,
    SELFIE_WEIGHTS,
)
from matteforge.models.weights import (
    NpmModel,
    WeightsError,
    WheelMember,
    resolve_weights,
    sha256_file,
    shards_sha256,
)

if TYPE_CHECKING:
    from matteforge.config import SegmentConfig

PLUGIN_GROUP = "matteforge.backends"
BUILT_IN: dict[str, NpmModel | WheelMember] = {
    "rvm": RVM,
    "meet": MEET,
    "mediapipe-selfie": SELFIE_WEIGHTS,
    "selfie": SELFIE_WEIGHTS,
    "modnet": MODNET_WEIGHTS,
}
# Backends whose own mask the presence rules were calibrated on (tasks/segment.py); a segmenter
# with none of them gets its presence evidence from the selfie model, an extra model it records.
PRESENCE_CALIBRATED = frozenset({"rvm", "mediapipe-selfie", "selfie"})


class Provenance(Protocol):
    """What every backend says about its weights."""

    model_id: str
    weights_sha256: str
    license: str


@dataclass(frozen=True)
class Weights:
    """One model's provenance, as a backend built from those weights would report it."""

    model_id: str
    weights_sha256: str
    license: str


@dataclass(frozen=True)
class ModelIdentity:
    """A segmenter's provenance: its mask models joined, and every weights file behind it."""

    model_id: str
    weights_sha256: str
    license: str
    models: dict[str, str] = field(default_factory=dict)

    @classmethod
    def combine(cls, backends: Sequence[Provenance], presence: Provenance | None,
                face: Provenance) -> ModelIdentity:
        """The mask backends (an ensemble's members in order), the presence model, the face."""
        models = {b.model_id: b.weights_sha256 for b in backends}
        if presence is not None:
            models[presence.model_id] = presence.weights_sha256
        models[face.model_id] = face.weights_sha256
        return cls("+".join(b.model_id for b in backends),
                   "+".join(b.weights_sha256 for b in backends),
                   "; ".join(dict.fromkeys(b.license for b in backends)), models)

    def record(self) -> dict[str, Any]:
        """``dataset.json``'s ``model``."""
        return {"id": self.model_id, "sha256": self.weights_sha256, "license": self.license,
                "models": dict(self.models)}


def split_model_name(name: str) -> tuple[str, tuple[int, ...] | None]:
    """``"modnet@384"`` → ``("modnet", (384,))``; ``"rvm@384,640"`` → both sizes; no ``@``: None.

    The size a model's input is scaled to is part of its recipe, so an ensemble can give each
    member its own (``segment.model: [rvm, modnet@384]``).
    """
    base, at, sizes = name.partition("@")
    if not at:
        return name, None
    try:
        parsed = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        raise ValueError(f"model {name!r}: the size after '@' must be whole numbers, "
                         f"e.g. modnet@384 or rvm@384,640") from None
    return base, parsed


def gate_index(names: Sequence[object]) -> int | None:
    """The first model whose mask the presence rules were calibrated on (``rvm@384`` is rvm);
    None: the segmenter adds the selfie model for its presence evidence."""
    for i, name in enumerate(names):
        if isinstance(name, str) and split_model_name(name)[0] in PRESENCE_CALIBRATED:
            return i
    return None


def plugin_names() -> list[str]:
    """Backends other packages add (entry points in the group ``matteforge.backends``)."""
    return [ep.name for ep in entry_points(group=PLUGIN_GROUP)]


def check_model_name(name: str) -> None:
    """Refuse an unknown model name (``name`` or ``name@size``), saying what it may have meant.

    Called when a config is validated, so a typo stops a build before any server or worker
    starts.
    """
    base, _ = split_model_name(name)
    known = [*BUILT_IN, *plugin_names()]
    if base in known:
        return
    close = difflib.get_close_matches(base, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown segmentation model {base!r}: {hint}known: {', '.join(known)}")


def tfjs_shard_files(model_json: Path) -> tuple[Path, ...]:
    """The weight shards a tfjs model.json names, in order (they lie beside it)."""
    try:
        model = json.loads(Path(model_json).read_text(encoding="utf-8"))
        return tuple(model_json.parent / p for g in model["weightsManifest"] for p in g["paths"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{model_json} is not a readable tfjs model.json: {exc}") from None


def read_model_bytes(uri: str, sha256: str | None) -> bytes:
    """A user model file's bytes from a path or fsspec URI, checked against `sha256` if given."""
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except (OSError, ValueError, ImportError) as exc:
        raise WeightsError(f"cannot read the user model {uri}: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if sha256 and actual != sha256.lower():
        raise WeightsError(f"{uri} has sha256 {actual}, expected {sha256}")
    return data


def user_model_weights(model_format: str, uri: str, license: str, data: bytes) -> Weights:
    """A user model's provenance from its file's bytes (the URI's name, never credentials)."""
    sha = hashlib.sha256(data).hexdigest()
    name = PurePosixPath(uri.split("?")[0]).name or "model"
    return Weights(f"user-{model_format}:{name}@{sha[:12]}", sha, license)


def built_in_weights(name: str, weights_path: str | None = None,
                     cache_dir: str | None = None) -> Weights:
    """A built-in model's provenance: its weights located (fetched once, verified) and hashed.

    The hash is of the files the backend reads: a tfjs model's shards as its model.json names
    them, a single file's bytes otherwise; so a user's own (unverified) copy is recorded as what
    it is.
    """
    spec = BUILT_IN[name]
    path = resolve_weights(spec, weights_path, cache_dir)
    sha = (shards_sha256(tfjs_shard_files(path)) if isinstance(spec, NpmModel)
           else sha256_file(path))
    return Weights(spec.model_id, sha, spec.license)


def face_weights(cache_dir: str | None = None) -> Weights:
    """The presence gate's face detector (BlazeFace), which every segmenter runs."""
    path = resolve_weights(FACE_WEIGHTS, None, cache_dir)
    return Weights(FACE_WEIGHTS.model_id, sha256_file(path), FACE_WEIGHTS.license)


def segment_identity(cfg: SegmentConfig, cache_dir: str | None = None) -> ModelIdentity:
    """What ``tasks/segment.segmenter_for(cfg)`` would report, without loading a model.

    Plugins are the exception: only their loader knows their ids, so the segmenter is loaded.
    """
    names = cfg.model_names()
    if any(isinstance(n, str) and split_model_name(n)[0] not in BUILT_IN for n in names):
        from matteforge.tasks.segment import segmenter_for

        seg = segmenter_for(cfg)
        return ModelIdentity(seg.model_id, seg.weights_sha256, seg.license, dict(seg.models))
    backends: list[Provenance] = []
    for name in names:
        if isinstance(name, str):
            backends.append(built_in_weights(split_model_name(name)[0], cfg.weights_path,
                                             cache_dir))
        else:
            data = read_model_bytes(name.uri, name.sha256)
            backends.append(user_model_weights(name.format, name.uri, name.license, data))
    presence = (None if gate_index(names) is not None
                else built_in_weights("mediapipe-selfie", None, cache_dir))
    return ModelIdentity.combine(backends, presence, face_weights(cache_dir))
