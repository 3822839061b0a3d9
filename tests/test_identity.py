"""The flow records the models without loading them: the ids it works out from the files must be
the ones the loaded segmenter (on the workers) reports, for every kind of model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from matteforge.config import SegmentConfig, UserModelConfig
from matteforge.models.identity import (
    ModelIdentity,
    gate_index,
    segment_identity,
    tfjs_shard_files,
)
from matteforge.models.registry import RVM
from matteforge.models.weights import WeightsError, resolve_weights
from matteforge.tasks.segment import segmenter_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _loaded(cfg: SegmentConfig) -> ModelIdentity:
    seg = segmenter_for(cfg)
    return ModelIdentity(seg.model_id, seg.weights_sha256, seg.license, dict(seg.models))


@pytest.mark.parametrize("model", [
    ["rvm", "modnet@384"],  # the default recipe
    "rvm",
    "rvm@384",  # a sized rvm is still rvm: gated on its own mask, no selfie model added
    "selfie",
    "meet",  # not calibrated: the selfie model joins for the presence evidence
    ["meet", "modnet"],
])
def test_the_identity_from_the_files_is_the_loaded_segmenters(model: str | list[str]) -> None:
    cfg = SegmentConfig(model=model)
    assert segment_identity(cfg) == _loaded(cfg)


def test_a_sized_rvm_gates_on_itself() -> None:
    assert gate_index(["modnet@384", "rvm@384,640"]) == 1
    assert gate_index(["meet", "modnet"]) is None
    cfg = SegmentConfig(model="rvm@384")
    assert "mediapipe-selfie" not in " ".join(segment_identity(cfg).models)


class Half(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 0 + 0.5


def test_a_user_model_is_named_by_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "half.pt"
    torch.jit.script(Half()).save(str(path))
    user = UserModelConfig(format="torchscript", uri=str(path), input_size=(32, 32),
                           license="MIT (mine)")
    cfg = SegmentConfig(model=user)
    identity = segment_identity(cfg)
    assert identity == _loaded(cfg)
    assert identity.model_id.startswith("user-torchscript:half.pt@")
    assert identity.license == "MIT (mine)"
    assert "mediapipe-selfie-segmentation@0.10.21" in identity.models  # presence evidence
    record = identity.record()
    assert record["id"] == identity.model_id and record["models"] == identity.models


def test_a_users_copy_of_tfjs_weights_is_hashed_as_its_model_json_names_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fine-tuned rvm (verification off) whose shard has another name: the hash is of the
    bytes the backend reads, as the loaded segmenter computes it."""
    original = resolve_weights(RVM)
    model = json.loads(original.read_text())
    for group in model["weightsManifest"]:
        for i, p in enumerate(group["paths"]):
            shutil.copy(original.parent / p, tmp_path / f"tuned-{i}.bin")
        group["paths"] = [f"tuned-{i}.bin" for i in range(len(group["paths"]))]
    mine = tmp_path / "rvm.json"
    mine.write_text(json.dumps(model))
    tuned = bytearray((tmp_path / "tuned-0.bin").read_bytes())
    tuned[-1] ^= 1  # other bytes, same size: another model
    (tmp_path / "tuned-0.bin").write_bytes(bytes(tuned))
    monkeypatch.setenv("MATTEFORGE_WEIGHTS_NO_VERIFY", "1")
    cfg = SegmentConfig(model="rvm", weights_path=str(mine))
    identity = segment_identity(cfg)
    assert identity.weights_sha256 != RVM.package.sha256("models/rvm.bin")
    assert tfjs_shard_files(mine) == (tmp_path / "tuned-0.bin",)
    assert identity.weights_sha256 == segmenter_for(cfg).weights_sha256


def test_a_model_json_that_is_not_one_is_a_weights_error(tmp_path: Path) -> None:
    bad = tmp_path / "rvm.json"
    bad.write_text("{not json")
    with pytest.raises(WeightsError, match=r"not a readable tfjs model\.json"):
        tfjs_shard_files(bad)
