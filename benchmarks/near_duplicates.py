"""How many bits apart near-duplicates are, against distinct photos: picks NEAR_DUPLICATE_BITS.

    python benchmarks/near_duplicates.py [--frames 40] [--seed 0] [--scale 100000]

Why: grouping links hashes within a threshold transitively, so a threshold too high merges
distinct photos (a big group skews the split), one too low lets frames of one clip leak
between train and test.  For thresholds 0..16 it prints

* false merges: pairs of distinct photos within the threshold, over all pairs of every photo
  available: scikit-image's colour photos and every image under ../shared/data (masks skipped:
  files under an ``alpha``/``mask``/``matte``/``trimap`` folder or with such a name), decoded
  with the build's own ``decode_image``; pixel-identical copies count once;
* true merges: simulated clip frames of each photo (a 1–8 px shift on each axis with the
  uncovered edge cropped, scale 0.9–1.0, brightness ±5 %, gaussian noise σ 0–2, JPEG quality
  70–95, all at once) that are within the threshold of the original.

Then the chosen threshold (the rule is in ``choose_threshold``) and how long ``assign_groups``
takes at it on ``--scale`` synthetic hashes (random ones plus clusters of near ones).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata

from matteforge.tasks.ingest import decode_image
from matteforge.tasks.near_duplicates import assign_groups, hamming, perceptual_hash

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Colour photos only (colorwheel is a drawing; cat is chelsea; the motorcycle is a stereo pair
# whose two views would be a near-duplicate, so only the left one).
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "skimage_astronaut": skdata.astronaut,
    "skimage_coffee": skdata.coffee,
    "skimage_chelsea": skdata.chelsea,
    "skimage_rocket": skdata.rocket,
    "skimage_hubble": skdata.hubble_deep_field,
    "skimage_immunohistochemistry": skdata.immunohistochemistry,
    "skimage_retina": skdata.retina,
    "skimage_motorcycle": lambda: skdata.stereo_motorcycle()[0],
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
NOT_PHOTOS = ("alpha", "mask", "matte", "trimap")
THRESHOLDS = range(17)
MIN_TRUE_MERGE = 0.999
MARGIN_BITS = 2


def is_photo_path(path: Path) -> bool:
    """An image file that is not a matte: masks sit in folders (or files) named after them."""
    words = [p.lower() for p in path.parts[:-1]] + [path.stem.lower()]
    return path.suffix.lower() in IMAGE_SUFFIXES and not any(
        tag in word for word in words for tag in NOT_PHOTOS
    )


def load_photos(shared: Path) -> dict[str, np.ndarray]:
    """Name → RGB photo; a pixel-identical copy (the shared astronaut PNG) is kept once."""
    photos = {name: load() for name, load in PHOTOS.items()}
    if shared.is_dir():
        for path in sorted(p for p in shared.rglob("*") if p.is_file() and is_photo_path(p)):
            decoded = decode_image(path.read_bytes(), name=path.name)
            if decoded.status == "ok" and decoded.image is not None:
                photos[str(path.relative_to(shared))] = decoded.image
    seen: dict[str, str] = {}
    for name in list(photos):
        digest = hashlib.sha256(photos[name].tobytes() + str(photos[name].shape).encode())
        if (other := seen.setdefault(digest.hexdigest(), name)) != name:
            print(f"  {name}: same pixels as {other}, counted once")
            del photos[name]
    return photos


def simulate_frame(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A neighbouring frame of a clip: shifted, rescaled, re-lit, noisy, re-encoded."""
    h, w = image.shape[:2]
    dy, dx = (int(v) for v in rng.integers(1, 9, size=2))
    top, left = (dy, dx) if rng.random() < 0.5 else (0, 0)
    frame = image[top : h - (dy - top), left : w - (dx - left)]
    scale = rng.uniform(0.9, 1.0)
    size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    gain = np.clip(np.rint(np.arange(256) * rng.uniform(0.95, 1.05)), 0, 255).astype(np.uint8)
    sigma = rng.uniform(0.0, 2.0)
    noise = np.empty(frame.shape, np.int16)
    cv2.randn(noise, (0.0,) * 3, (sigma,) * 3)  # OpenCV's generator: numpy's is ~5x slower here
    frame = cv2.add(cv2.LUT(frame, gain), noise, dtype=cv2.CV_8U)  # saturating
    quality = int(rng.integers(70, 96))
    ok, jpeg = cv2.imencode(".jpg", frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1]


def choose_threshold(false_merges: dict[int, int], true_rate: dict[int, float]) -> int:
    """The smallest threshold matching ≥ 99.9 % of frames, plus one step of margin.

    Distances come in steps of 2 (every hash has the same 32 set bits, see perceptual_hash), so
    the margin is 2 bits: room for frames a little further than simulated.  No more than that,
    because the few hundred distinct pairs measured here bound the false-merge rate only to
    ~1 %, while a build of 10⁵ photos has 5·10⁹ pairs, and merges chain transitively.
    """
    matched = [t for t in true_rate if true_rate[t] >= MIN_TRUE_MERGE]
    chosen = min(matched, default=max(true_rate)) + MARGIN_BITS
    if chosen not in false_merges or false_merges[chosen] > 0:
        raise SystemExit("no threshold matches the frames without merging distinct photos")
    return chosen


def time_assign_groups(count: int, threshold: int, rng: np.random.Generator) -> tuple[float, int]:
    """Seconds for assign_groups on ``count`` synthetic hashes, and how many new ones joined.

    Half are known, half new; 90 % are random 64-bit values with the DC bit set (as pHashes
    have it), 10 % are one of the first ``count // 10`` with 3 bits flipped: near copies.
    """
    hashes = rng.integers(0, 1 << 63, size=count, dtype=np.uint64) | np.uint64(1 << 63)
    flips = np.bitwise_or.reduce(
        np.uint64(1) << rng.integers(0, 63, size=(count, 3), dtype=np.uint64), axis=1
    )
    near = rng.random(count) < 0.1
    hashes = np.where(near, hashes[np.arange(count) % max(1, count // 10)] ^ flips, hashes)
    keys = [f"s{i:07d}" for i in range(count)]
    half = count // 2
    known = {k: (int(h), k) for k, h in zip(keys[:half], hashes[:half], strict=True)}
    new = {k: int(h) for k, h in zip(keys[half:], hashes[half:], strict=True)}
    start = time.perf_counter()
    groups = assign_groups(new, known, threshold)
    seconds = time.perf_counter() - start
    return seconds, sum(group != key for key, group in groups.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="simulated frames per photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=100_000, help="hashes to group; 0 skips")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    cv2.setRNGSeed(args.seed)

    photos = load_photos(SHARED)
    hashes = {name: perceptual_hash(image) for name, image in photos.items()}
    pairs = [hamming(hashes[a], hashes[b]) for a, b in itertools.combinations(sorted(hashes), 2)]
    frames = [
        hamming(hashes[name], perceptual_hash(simulate_frame(image, rng)))
        for name, image in photos.items()
        for _ in range(args.frames)
    ]
    print(f"{len(photos)} photos, {len(pairs)} pairs of distinct photos, {len(frames)} frames")
    print(
        f"distinct pairs: min {min(pairs)} bits, 1st pct {np.percentile(pairs, 1):.1f}, "
        f"median {np.median(pairs):.0f}, mean {np.mean(pairs):.1f} ± {np.std(pairs):.1f}"
    )
    print(
        f"frames vs original: median {np.median(frames):.0f} bits, "
        f"99th pct {np.percentile(frames, 99):.1f}, max {max(frames)}"
    )
    closest = min(
        itertools.combinations(sorted(hashes), 2),
        key=lambda ab: hamming(hashes[ab[0]], hashes[ab[1]]),
    )
    print(f"closest distinct pair: {closest[0]} / {closest[1]}")

    false_merges = {t: sum(d <= t for d in pairs) for t in THRESHOLDS}
    true_rate = {t: float(np.mean([d <= t for d in frames])) for t in THRESHOLDS}
    print("\nthreshold  false merges        true merges")
    for t in THRESHOLDS:
        print(
            f"{t:9d}  {false_merges[t]:4d} / {len(pairs)} "
            f"{100 * false_merges[t] / len(pairs):5.1f} %  {100 * true_rate[t]:6.1f} %"
        )
    chosen = choose_threshold(false_merges, true_rate)
    merged = false_merges[chosen]
    bound = f" (< {100 * 3 / len(pairs):.1f} % at 95 %: rule of three)" if merged == 0 else ""
    print(
        f"\nchosen threshold: {chosen} bits: false merges {merged}/{len(pairs)}{bound}, "
        f"true merges {100 * true_rate[chosen]:.1f} %"
    )

    if args.scale:
        seconds, joined = time_assign_groups(args.scale, chosen, rng)
        print(
            f"assign_groups on {args.scale} hashes at threshold {chosen}: {seconds:.1f} s, "
            f"{joined} of {args.scale - args.scale // 2} new samples joined another sample's group"
        )


if __name__ == "__main__":
    main()
