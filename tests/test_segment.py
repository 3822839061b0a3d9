"""The segment stage finds the person, at full resolution, and says when there is none."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from matteforge.config import DEFAULT_MODELS, SegmentConfig, load_config
from matteforge.models.registry import FACE_WEIGHTS
from matteforge.tasks.segment import (
    DEFAULT_MODEL,
    PRESENCE_THRESHOLD,
    Segmenter,
    SegmentResult,
    is_person,
    letterbox,
    load_segmenter,
    segmenter_for,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent (a fresh clone has no ../shared)"
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# meet's own mask fails the presence rules, so it is gated on the selfie mask: tested here too.
MODELS = ("rvm", "mediapipe-selfie", "meet")


@pytest.fixture(scope="module", params=MODELS)
def segmenter(request: pytest.FixtureRequest) -> Segmenter:
    return load_segmenter(request.param)


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _gray3(image: np.ndarray) -> np.ndarray:
    return np.dstack([image] * 3)


def _shared(folder: str, *patterns: str) -> list[Path]:
    if not SHARED_DATA.is_dir():
        return []
    return sorted(p for pat in patterns for p in (SHARED_DATA / folder).glob(pat))


def test_astronaut_mask_covers_the_person(segmenter: Segmenter) -> None:
    result = segmenter.predict(data.astronaut())
    prob = result.probability
    assert prob.shape == (512, 512)
    assert prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert prob[60:160, 180:260].mean() > 0.9  # face
    assert prob[300:450, 60:250].mean() > 0.6  # orange suit (meet 0.65, the others > 0.99)
    assert prob[0:80, 460:512].mean() < 0.1  # wall behind, top-right


def test_full_resolution_for_non_square_input(segmenter: Segmenter) -> None:
    image = data.chelsea()
    assert segmenter.predict(image).probability.shape == image.shape[:2]


def test_grayscale_is_accepted_stacked_or_2d(segmenter: Segmenter) -> None:
    camera = data.camera()
    stacked = segmenter.predict(_gray3(camera))
    flat = segmenter.predict(camera)
    assert stacked.probability.shape == camera.shape
    np.testing.assert_array_equal(stacked.probability, flat.probability)


def test_rejects_non_uint8_images(segmenter: Segmenter) -> None:
    with pytest.raises(ValueError, match="uint8"):
        segmenter.predict(data.astronaut().astype(np.float32))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("astronaut", True), ("camera", True), ("chelsea", False), ("coffee", False)],
)
def test_presence_accepts_people_and_rejects_cat_and_coffee(
    segmenter: Segmenter, name: str, expected: bool
) -> None:
    image = getattr(data, name)()
    result = segmenter.predict(_gray3(image) if image.ndim == 2 else image)
    assert is_person(result) is expected, result.evidence
    assert 0.0 <= result.presence <= 1.0
    assert all(np.isfinite(v) for v in result.evidence.values())


@needs_shared
@pytest.mark.parametrize(
    "path",
    _shared("portraits", "*.jpg", "*.png") + _shared("p3m_figure_gt", "image/*.png"),
    ids=lambda p: p.name,
)
def test_shared_portraits_are_people(segmenter: Segmenter, path: Path) -> None:
    result = segmenter.predict(_read_rgb(path))
    assert is_person(result), result.evidence


@needs_shared
@pytest.mark.parametrize("path", _shared("backgrounds", "*.jpg"), ids=lambda p: p.name)
def test_shared_backgrounds_are_not_people(segmenter: Segmenter, path: Path) -> None:
    result = segmenter.predict(_read_rgb(path))
    assert not is_person(result), result.evidence


def test_threshold_is_a_probability() -> None:
    assert 0.0 < PRESENCE_THRESHOLD < 1.0
    empty = SegmentResult(np.zeros((2, 2), np.float32), 0.0, {})
    assert not is_person(empty)


def test_letterbox_keeps_aspect_and_centres() -> None:
    canvas, (top, left, h, w) = letterbox(np.full((100, 200, 3), 255, np.uint8), 256)
    assert canvas.shape == (256, 256, 3)
    assert (top, left, h, w) == (64, 0, 128, 256)
    assert canvas[:top].max() == 0 and canvas[top : top + h].min() == 255


@pytest.mark.parametrize("name", MODELS)
def test_loader_is_cached_and_reports_provenance(name: str) -> None:
    segmenter = load_segmenter(name)
    assert load_segmenter(name) is segmenter
    assert len(segmenter.weights_sha256) == 64
    assert segmenter.models[segmenter.model_id] == segmenter.weights_sha256
    assert segmenter.models[FACE_WEIGHTS.model_id] == FACE_WEIGHTS.sha256
    assert segmenter.license.startswith("GPL-3.0" if name == "rvm" else "Apache-2.0")


def test_default_model_is_rvm_alone_and_the_default_recipe_adds_modnet() -> None:
    from matteforge.cli import build_parser

    assert DEFAULT_MODEL == "rvm"  # one model: `matteforge mask`, load_segmenter()
    args = build_parser().parse_args(["mask", "x.png", "--out", "m.png"])
    assert args.model == DEFAULT_MODEL
    assert load_segmenter().model_id.startswith("rvm-mobilenetv3")
    assert SegmentConfig().model == list(DEFAULT_MODELS) == ["rvm", "modnet@384"]
    assert build_parser().parse_args(["build"]).config is None  # no --config: BuildConfig()


def test_an_ensemble_keeps_each_models_map_and_gates_on_rvm(one_torch_thread) -> None:
    seg = segmenter_for(SegmentConfig())
    assert seg.model_id.startswith("rvm-mobilenetv3") and "+modnet-photographic" in seg.model_id
    assert "GPL-3.0" in seg.license and "Apache-2.0" in seg.license
    assert len(seg.weights_sha256.split("+")) == 2
    result = seg.predict(data.astronaut())
    assert len(result.maps) == 2
    maps = list(result.maps.values())
    np.testing.assert_allclose(result.probability, (maps[0] + maps[1]) / 2, atol=1e-6)
    assert result.presence >= 0.5
    assert result.model_maps() is result.maps
    with pytest.raises(ValueError, match="weights_path"):
        load_segmenter(("rvm", "modnet"), weights_path="/x/rvm.json")


def test_build_config_sets_the_rvm_recipe() -> None:
    cfg = load_config({"segment": {"passes": 2, "size": 384}})
    seg = segmenter_for(cfg.segment)
    assert (seg.backend.passes, seg.backend.sizes) == (2, (384,))
    assert seg is segmenter_for(cfg.segment), "cached per process"
    two = segmenter_for(load_config({"segment": {"size": [384, 512]}}).segment)
    assert two.backend.sizes == (384, 512)
    assert segmenter_for(load_config({}).segment) is load_segmenter(DEFAULT_MODELS)


def test_selfie_is_the_same_segmenter_as_mediapipe_selfie() -> None:
    assert load_segmenter("selfie").model_id == load_segmenter("mediapipe-selfie").model_id


def test_permissive_config_uses_only_apache_weights() -> None:
    cfg = load_config("permissive")
    seg = segmenter_for(cfg.segment)
    assert seg.model_id.startswith("modnet") and seg.license.startswith("Apache-2.0")
    assert FACE_WEIGHTS.license.startswith("Apache-2.0")
    selfie = load_segmenter("mediapipe-selfie")  # presence is judged on the selfie mask
    assert selfie.license.startswith("Apache-2.0")
    assert set(seg.models) == {seg.model_id, selfie.model_id, FACE_WEIGHTS.model_id}


def test_unknown_segmenter_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="mediapipe-selfie"):
        load_segmenter("u2net")


def test_model_device_auto_follows_torch_and_cuda_without_a_gpu_is_one_clear_error():
    import torch

    from matteforge.models.backends import model_device

    assert model_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert model_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"segment\.device 'cuda:1'.*no CUDA device"):
            model_device("cuda:1")


def test_segment_device_is_validated_and_not_part_of_the_dataset():
    from pydantic import ValidationError

    from matteforge.config import BuildConfig

    base = BuildConfig()
    assert base.segment.device == "auto"
    for device in ("cpu", "cuda", "cuda:1"):
        cfg = BuildConfig.model_validate({"segment": {"device": device}})
        assert cfg.config_hash() == base.config_hash()
    with pytest.raises(ValidationError, match=r"segment\.device"):
        BuildConfig.model_validate({"segment": {"device": "gpu"}})
