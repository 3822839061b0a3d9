"""Every mask backend maps an RGB photo to a full-size [0, 1] map and names its weights."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from matteforge.metrics import sad
from matteforge.models.backends import (
    BACKENDS,
    RVM_PASSES,
    RVM_SIZES,
    RVM_STATES,
    MatteBackend,
    RvmBackend,
    load_backend,
    long_side_size,
    resize,
    to_full_size,
)
from matteforge.models.registry import HUMAN_MODELS
from matteforge.tasks.composite import composite, fit_background

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ("rvm", "meet", "mediapipe-selfie")


@pytest.fixture(scope="module", params=NAMES)
def backend(request: pytest.FixtureRequest) -> MatteBackend:
    return load_backend(request.param)


def test_astronaut_map_is_full_size_and_finds_the_person(backend: MatteBackend) -> None:
    prob = backend.predict(data.astronaut())
    assert prob.shape == (512, 512) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert prob[60:160, 180:260].mean() > 0.9  # face
    assert prob[300:450, 60:250].mean() > 0.6  # orange suit (meet: 0.65, the others > 0.99)
    assert prob[0:80, 460:512].mean() < 0.1  # wall behind, top-right


def test_non_square_and_grayscale_inputs(backend: MatteBackend) -> None:
    cat = data.chelsea()
    assert backend.predict(cat).shape == cat.shape[:2]
    camera = data.camera()
    np.testing.assert_array_equal(backend.predict(camera), backend.predict(np.dstack([camera] * 3)))


def test_float_images_are_refused(backend: MatteBackend) -> None:
    with pytest.raises(ValueError, match="uint8"):
        backend.predict(data.astronaut().astype(np.float32))


def test_provenance_names_pinned_weights_and_license(backend: MatteBackend) -> None:
    pinned = dict(HUMAN_MODELS.files)
    if backend.model_id.startswith("rvm"):
        assert backend.weights_sha256 == pinned["models/rvm.bin"]
        assert backend.license.startswith("GPL-3.0")
    elif backend.model_id.startswith("meet"):
        assert backend.weights_sha256 == pinned["models/meet.bin"]
        assert backend.license.startswith("Apache-2.0")
    else:
        assert backend.license.startswith("Apache-2.0")
    assert len(backend.weights_sha256) == 64


def test_rvm_input_size_is_configurable() -> None:
    small = load_backend("rvm", size=256)
    assert isinstance(small, RvmBackend) and small.sizes == (256,)
    assert float(small._input(data.astronaut(), 256)[1]) == 0.5
    prob = small.predict(data.astronaut())
    assert prob.shape == (512, 512)
    assert prob[300:450, 60:250].mean() > 0.9


def _rvm_frames(rvm: RvmBackend, x: torch.Tensor, ratio: float, frames: int) -> np.ndarray:
    """RVM run by hand as a video of `frames` identical frames, every output computed."""
    state = {f"{r}i": torch.zeros(()) for r in RVM_STATES}
    with torch.inference_mode():
        for _ in range(frames):
            out = rvm.net({"src": x, "downsample_ratio": torch.tensor(ratio), **state},
                          ["pha", *(f"{r}o" for r in RVM_STATES)])
            state = {f"{r}i": out[f"{r}o"] for r in RVM_STATES}
    return out["pha"][0, :, :, 0].numpy()


def test_rvm_passes_are_frames_of_a_static_video() -> None:
    """One pass is the zero-state still; n passes feed each pass's state to the next."""
    image = data.astronaut()  # 512 px: the encoder's size, no refinement above it
    x = torch.from_numpy(image.astype(np.float32) / 255.0)[None]
    for passes in (1, 3):
        rvm = load_backend("rvm", size=512, passes=passes)
        assert isinstance(rvm, RvmBackend) and rvm.passes == passes
        np.testing.assert_allclose(rvm.predict(image), _rvm_frames(rvm, x, 1.0, passes),
                                   atol=1e-6)
    default = load_backend("rvm")
    assert isinstance(default, RvmBackend)
    assert (default.passes, default.sizes) == (RVM_PASSES, RVM_SIZES)


def test_rvm_default_is_the_mean_of_its_sizes() -> None:
    image = data.astronaut()
    maps = [load_backend("rvm", size=s).predict(image) for s in RVM_SIZES]
    np.testing.assert_allclose(load_backend("rvm").predict(image), np.mean(maps, axis=0),
                               atol=1e-6)
    both = load_backend("rvm", size=list(RVM_SIZES))
    assert isinstance(both, RvmBackend) and both.sizes == RVM_SIZES


def test_rvm_refines_at_the_photo_size_up_to_the_cap() -> None:
    rvm = load_backend("rvm", size=512, passes=2)
    assert isinstance(rvm, RvmBackend)
    wide = np.zeros((600, 1200, 3), np.uint8)
    x, ratio = rvm._input(wide, 512)
    assert tuple(x.shape) == (1, 600, 1200, 3) and float(ratio) == pytest.approx(512 / 1200)
    huge = np.zeros((3000, 4000, 3), np.uint8)
    x, ratio = rvm._input(huge, 512)
    assert tuple(x.shape) == (1, 1536, 2048, 3) and float(ratio) == pytest.approx(0.25)
    small = np.zeros((300, 450, 3), np.uint8)
    x, ratio = rvm._input(small, 512)
    assert tuple(x.shape) == (1, 341, 512, 3) and float(ratio) == 1.0
    photo = cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(photo.astype(np.float32) / 255.0)[None]
    np.testing.assert_allclose(rvm.predict(photo), _rvm_frames(rvm, x, 0.5, 2), atol=1e-6)


def test_passes_are_refused_for_other_models() -> None:
    with pytest.raises(ValueError, match="rvm model only"):
        load_backend("meet", passes=2)
    with pytest.raises(ValueError, match="rvm passes must be >= 1"):
        load_backend("rvm", passes=0)


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'rvm'.*'meet'.*'mediapipe-selfie'"):
        load_backend("u2net")
    assert set(NAMES) <= set(BACKENDS)


PLUGIN = """
import numpy as np

class Ellipse:
    model_id, weights_sha256, license = "ellipse@1", "0" * 64, "CC0-1.0"

    def predict(self, image):
        h, w = image.shape[:2]
        y, x = np.ogrid[:h, :w]
        inside = ((y - h / 2) / (h / 2)) ** 2 + ((x - w / 2) / (w / 3)) ** 2 <= 1
        return inside.astype(np.float32)

def load(weights_path, cache_dir, device, size):
    return Ellipse()
"""


def test_plugin_backend_registered_by_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package adds a backend through the `matteforge.backends` entry points."""
    (tmp_path / "mf_ellipse.py").write_text(PLUGIN)
    info = tmp_path / "mf_ellipse-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mf-ellipse\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[matteforge.backends]\nellipse = mf_ellipse:load\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    backend = load_backend("ellipse")
    prob = backend.predict(data.astronaut())
    assert backend.model_id == "ellipse@1"
    assert prob[256, 256] == 1.0 and prob[0, 0] == 0.0
    with pytest.raises(ValueError, match="'ellipse'"):
        load_backend("u2net")


def test_long_side_size_keeps_aspect() -> None:
    assert long_side_size(300, 454, 512) == (338, 512)
    assert long_side_size(1000, 10, 100) == (100, 1)


def test_resize_and_back_to_full_size() -> None:
    img = np.zeros((40, 60, 3), np.uint8)
    assert resize(img, 30, 20).shape == (20, 30, 3)
    full = to_full_size(np.array([[1.5, -0.5]], np.float32), 3, 4)
    assert full.shape == (3, 4) and full.dtype == np.float32
    assert full.min() >= 0.0 and full.max() <= 1.0


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (fresh clone)")
def test_rvm_masks_beat_selfie_on_real_composites() -> None:
    """P3M portraits with true alpha, composited Composition-1K style onto real wallpapers."""
    images = sorted((SHARED_DATA / "p3m_figure_gt" / "image").glob("*.png"))[:5]
    backgrounds = sorted((SHARED_DATA / "backgrounds").glob("*.jpg"))[:3]
    rvm, selfie = load_backend("rvm"), load_backend("mediapipe-selfie")
    errors: dict[str, list[float]] = {"rvm": [], "selfie": []}
    for path in images:
        fg = _read_rgb(path)
        alpha = cv2.imread(str(path).replace("/image/", "/alpha/"), cv2.IMREAD_GRAYSCALE)
        for bg_path in backgrounds:
            merged = composite(fg, alpha, fit_background(_read_rgb(bg_path), *alpha.shape))
            truth = alpha.astype(np.float32) / 255.0
            errors["rvm"].append(sad(rvm.predict(merged), truth))
            errors["selfie"].append(sad(selfie.predict(merged), truth))
    # measured 2026-11-22 on all 10 x 6: rvm 1.21, selfie 3.66 (mean SAD)
    assert np.mean(errors["rvm"]) < 0.6 * np.mean(errors["selfie"]), errors
