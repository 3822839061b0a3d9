from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA
from skimage import data

from matteforge.tasks import near_duplicates as nd
from matteforge.tasks.ingest import decode_image
from matteforge.tasks.near_duplicates import (
    NEAR_DUPLICATE_BITS,
    assign_groups,
    hamming,
    hash_hex,
    parse_hash_hex,
    perceptual_hash,
)

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SHARED_FOLDERS = ("portraits", "backgrounds", "p3m_figure_gt/image")  # not p3m's alpha/


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}


@pytest.fixture(scope="module")
def shared_photos() -> dict[str, np.ndarray]:
    """Every photo under ../shared/data (not the mattes), or skip where there is none."""
    paths = [
        path
        for folder in SHARED_FOLDERS
        if (SHARED_DATA / folder).is_dir()
        for path in sorted((SHARED_DATA / folder).iterdir())
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"}
    ]
    if not paths:
        pytest.skip(f"no photos under {SHARED_DATA} (../shared is only beside dev checkouts)")
    decoded = {str(p.relative_to(SHARED_DATA)): decode_image(p.read_bytes()) for p in paths}
    return {name: r.image for name, r in decoded.items() if r.image is not None}


def _jpeg(image: np.ndarray, quality: int = 75) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1]


def _resized(image: np.ndarray, scale: float = 0.9) -> np.ndarray:
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _brighter(image: np.ndarray, gain: float = 1.05, offset: float = 5.0) -> np.ndarray:
    return np.clip(np.rint(image * gain + offset), 0, 255).astype(np.uint8)


# Each variant: (original frame, near-identical frame) of one photo.
VARIANTS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "jpeg_q75": lambda im: (im, _jpeg(im, 75)),
    "resize_0.9": lambda im: (im, _resized(im, 0.9)),
    "shift_2px": lambda im: (im[:-2, :-2], im[2:, 2:]),
    "brightness_+5%": lambda im: (im, _brighter(im, 1.05, 5.0)),
    "brightness_-5%": lambda im: (im, _brighter(im, 0.95, -5.0)),
}


def _variant_distances(images: dict[str, np.ndarray]) -> dict[str, int]:
    out = {}
    for (name, image), (variant, make) in itertools.product(images.items(), VARIANTS.items()):
        a, b = make(image)
        out[f"{name}/{variant}"] = hamming(perceptual_hash(a), perceptual_hash(b))
    return out


def _pair_distances(images: dict[str, np.ndarray]) -> dict[str, int]:
    hashes = {name: perceptual_hash(image) for name, image in images.items()}
    return {
        f"{a} vs {b}": hamming(hashes[a], hashes[b])
        for a, b in itertools.combinations(sorted(hashes), 2)
    }


def test_near_identical_copies_stay_within_the_threshold(photos):
    distances = _variant_distances(photos)
    assert max(distances.values()) <= NEAR_DUPLICATE_BITS, distances


def test_near_identical_copies_of_shared_photos_stay_within_the_threshold(shared_photos):
    distances = _variant_distances(shared_photos)
    assert max(distances.values()) <= NEAR_DUPLICATE_BITS, distances


def test_different_photos_are_further_apart_than_the_threshold(photos):
    distances = _pair_distances(photos)
    assert min(distances.values()) > NEAR_DUPLICATE_BITS, distances


def test_different_shared_photos_are_further_apart_than_the_threshold(photos, shared_photos):
    # The shared astronaut PNG is the skimage astronaut itself: one photo, so it is left out.
    images = photos | {k: v for k, v in shared_photos.items() if "astronaut" not in k}
    distances = _pair_distances(images)
    assert min(distances.values()) > NEAR_DUPLICATE_BITS, min(distances.items(), key=lambda x: x[1])


def test_hash_is_pinned_so_stored_hashes_stay_comparable(photos):
    # A change here (OpenCV's resize or DCT, the bit layout) makes old manifests' hashes stale.
    assert hash_hex(perceptual_hash(photos["astronaut"])) == "c2924c5532bddfc8"
    assert hash_hex(perceptual_hash(photos["coffee"])) == "bb8320376c0f3637"


def test_hash_has_32_set_bits_so_distances_are_even(photos):
    # DC bit + exactly 31 of the 63 AC bits above their median.
    for image in photos.values():
        assert perceptual_hash(image).bit_count() == 32


def test_flat_images_hash_to_exact_constants():
    assert perceptual_hash(np.zeros((5, 7, 3), np.uint8)) == 0
    assert perceptual_hash(np.full((40, 30, 3), 200, np.uint8)) == 1 << 63  # only DC > median


def test_hash_refuses_what_is_not_rgb8():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        perceptual_hash(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        perceptual_hash(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        perceptual_hash(np.zeros((0, 8, 3), np.uint8))


def test_hex_round_trips_and_pads_to_16_digits():
    for h in (0, 1, 0xC2924C5532BDDFC8, (1 << 64) - 1):
        text = hash_hex(h)
        assert len(text) == 16 and parse_hash_hex(text) == h
    assert hash_hex(1) == "0000000000000001"
    for bad in ("", "123", "0x2924c5532bddfc8", "g" * 16, "1" * 17, " " + "1" * 15):
        with pytest.raises(ValueError):
            parse_hash_hex(bad)
    with pytest.raises(ValueError):
        hash_hex(1 << 64)


def test_hamming_counts_differing_bits():
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(0, (1 << 64) - 1) == 64
    with pytest.raises(ValueError):
        hamming(-1, 0)


# --- grouping ----------------------------------------------------------------------------------


def _flip(h: int, *bits: int) -> int:
    for bit in bits:
        h ^= 1 << bit
    return h


def test_new_only_component_takes_its_smallest_key_and_strangers_their_own():
    a = 0x0F0F_0F0F_0F0F_0F0F
    new = {"k3": a, "k1": _flip(a, 0, 1, 2), "k2": _flip(a, 10), "z": ~a & ((1 << 64) - 1)}
    assert assign_groups(new, {}, threshold=4) == {"k1": "k1", "k2": "k1", "k3": "k1", "z": "z"}


def test_known_samples_keep_their_group_and_pass_it_on():
    a, b = 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210
    known = {"old1": (a, "g-old"), "old2": (b, "g-other")}
    new = {"aaa": _flip(a, 5, 6), "bbb": _flip(b, 60), "ccc": 0x5555_5555_5555_5555}
    assert assign_groups(new, known, threshold=4) == {
        "aaa": "g-old",  # not "aaa", although it is the smallest key of its component
        "bbb": "g-other",
        "ccc": "ccc",
    }


def test_new_sample_bridging_two_known_groups_joins_the_smaller_id():
    a = 0
    far = _flip(a, *range(8))  # 8 bits from a
    bridge = _flip(a, *range(4))  # 4 bits from each
    known = {"x": (a, "group-b"), "y": (far, "group-a")}
    assert assign_groups({"new": bridge}, known, threshold=4) == {"new": "group-a"}


def test_links_are_transitive():
    # a–b and b–c are near, a–c is not (12 bits): still one group, through b.
    a = 0
    b = _flip(a, *range(6))
    c = _flip(b, *range(20, 26))
    assert hamming(a, c) == 12
    assert set(assign_groups({"c": c, "a": a, "b": b}, {}, threshold=6).values()) == {"a"}
    # ... also when the middle sample is a known one.
    assert assign_groups({"c": c, "a": a}, {"b": (b, "g")}, threshold=6) == {"a": "g", "c": "g"}


def _random_clustered_hashes(rng: random.Random, count: int) -> list[int]:
    centres = [rng.getrandbits(64) for _ in range(count // 5)]
    return [
        _flip(rng.choice(centres), *rng.sample(range(64), rng.randint(0, 14))) for _ in range(count)
    ]


def _brute_force_groups(
    new: dict[str, int], known: dict[str, tuple[int, str]], threshold: int
) -> dict[str, str]:
    """The rules written as plainly as possible: O(n²) union-find."""
    hashes = new | {k: h for k, (h, _) in known.items()}
    parent = {k: k for k in hashes}

    def root(k: str) -> str:
        while parent[k] != k:
            k = parent[k]
        return k

    for a, b in itertools.combinations(hashes, 2):
        if hamming(hashes[a], hashes[b]) <= threshold:
            parent[root(a)] = root(b)
    members: dict[str, list[str]] = {}
    for k in hashes:
        members.setdefault(root(k), []).append(k)
    out = {}
    for keys in members.values():
        known_ids = [known[k][1] for k in keys if k in known]
        group = min(known_ids) if known_ids else min(keys)
        out.update({k: group for k in keys if k in new})
    return out


@pytest.mark.parametrize("threshold", [0, 1, 3, NEAR_DUPLICATE_BITS, 16, 63, 64])
def test_banded_search_finds_exactly_what_brute_force_finds(threshold):
    rng = random.Random(threshold)
    hashes = _random_clustered_hashes(rng, 300)
    hashes += hashes[:10]  # identical hashes under different keys
    keys = [f"s{rng.getrandbits(40):010x}" for _ in hashes]
    new = dict(zip(keys[::2], hashes[::2], strict=True))
    known = {
        k: (h, f"g{i % 7}") for i, (k, h) in enumerate(zip(keys[1::2], hashes[1::2], strict=True))
    }
    assert assign_groups(new, known, threshold) == _brute_force_groups(new, known, threshold)


@pytest.mark.parametrize("threshold", [62, 63, 64])
def test_thresholds_past_the_bands_still_follow_the_rules(threshold):
    a, complement = 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210  # 64 bits apart
    near_63 = a ^ ((1 << 63) - 1)  # 63 bits from a: every non-DC bit
    for new in (
        {"a": a, "b": complement},
        {"a": a, "b": near_63},
        {"a": a, "b": complement, "c": 7},
    ):
        assert assign_groups(new, {}, threshold) == _brute_force_groups(new, {}, threshold)


def test_result_does_not_depend_on_dict_order():
    rng = random.Random(7)
    hashes = _random_clustered_hashes(rng, 200)
    items = [(f"k{i:03d}", h) for i, h in enumerate(hashes)]
    new_items, known_items = items[:120], [(k, (h, f"g-{k}")) for k, h in items[120:]]
    expected = assign_groups(dict(new_items), dict(known_items), NEAR_DUPLICATE_BITS)
    for _ in range(5):
        rng.shuffle(new_items)
        rng.shuffle(known_items)
        got = assign_groups(dict(new_items), dict(known_items), NEAR_DUPLICATE_BITS)
        assert got == expected


def test_frames_of_two_photos_form_two_groups(photos):
    frames = {
        f"{name}-{variant}-{i}": perceptual_hash(pair[i])
        for name in ("astronaut", "coffee")
        for variant, make in VARIANTS.items()
        for pair in [make(photos[name])]
        for i in (0, 1)
    }
    groups = assign_groups(frames, {})
    assert len(set(groups.values())) == 2
    assert all(g.split("-")[0] == k.split("-")[0] for k, g in groups.items())


def test_grouping_refuses_ambiguous_input():
    with pytest.raises(ValueError, match="both new and known"):
        assign_groups({"a": 1}, {"a": (1, "g")})
    with pytest.raises(ValueError, match="threshold"):
        assign_groups({"a": 1}, {}, threshold=-1)
    with pytest.raises(ValueError, match="threshold"):
        assign_groups({"a": 1}, {}, threshold=65)
    with pytest.raises(ValueError, match="64-bit"):
        assign_groups({"a": 1 << 64}, {})
    assert assign_groups({}, {}) == {}


def test_bands_cover_the_63_non_dc_bits_once():
    for threshold in (0, 1, 5, NEAR_DUPLICATE_BITS, 30, 62):
        bands = nd._bands(threshold)
        assert len(bands) == threshold + 1
        covered = [shift + i for shift, width in bands for i in range(width)]
        assert covered == list(range(63))


def test_popcount_without_numpy_2_counts_the_same(monkeypatch):
    values = np.array([[0, 1, 0xFFFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0001]], dtype=np.uint64)
    expected = np.array([[0, 1, 64, 2]], dtype=np.uint8)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(nd._popcount(values, np.empty(values.shape, np.uint8)), expected)
