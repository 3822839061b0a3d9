"""Near-duplicate grouping: frames of one clip end in one group, so in one train/test split.

A content hash only catches identical bytes.  Frames of one clip, a re-encoded JPEG or a
slightly cropped copy have different bytes but the same picture; if one lands in train and its
twin in test, the test score measures memory.  Each image gets a 64-bit DCT perceptual hash;
hashes within :data:`NEAR_DUPLICATE_BITS` bits are linked, links are followed transitively, and
every sample of a connected component gets one group id.  Splits are then drawn per group.

Group ids are stable: a sample already in the dataset never changes group, so adding photos never
moves an old sample across splits.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 64
HASH_HEX = HASH_BITS // 4
_RESIZED = 32  # side the grey image is area-resized to before the DCT
_BLOCK = 8  # the top-left 8x8 DCT coefficients: the lowest frequencies, 64 bits
# Measured by benchmarks/near_duplicates.py (seed 0): 25 distinct photos (8 skimage colour + 17
# under ../shared/data), 300 pairs; 1000 simulated clip frames (1–8 px shift with crop, scale
# 0.9–1.0, brightness ±5 %, noise σ ≤ 2, JPEG 70–95, all at once) against their original.
# Distances are even (every hash has 32 set bits), so odd thresholds add nothing.
#   threshold  6: 0/300 distinct pairs merged,  98.9 % of frames matched
#   threshold  8: 0/300 merged, 100 % matched (the farthest frame: 8 bits)
#   threshold 10: 0/300 merged, 100 % matched; closest distinct pair 18 bits (mean 31 ± 4)
# 10 = the farthest frame plus one step of margin.  300 pairs only bound the false-merge rate to
# < 1 %; at 10⁵ photos (5·10⁹ pairs) only the tail counts, so the threshold stays as low as the
# frames allow rather than in the middle of the empty 8..16 range.
NEAR_DUPLICATE_BITS = 10
# Pairs compared per numpy block (XOR + popcount), so memory stays ~tens of MB per block.
_BLOCK_PAIRS = 1 << 22
# Edges gathered before they are folded into the component labels.
_PENDING_EDGES = 1 << 20


def perceptual_hash(image: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash (pHash) of an HxWx3 uint8 RGB image.

    Grey, area-resize to 32x32 (aspect ignored: a crop of a few pixels barely moves it), 2-D DCT,
    keep the top-left 8x8 block (the coarse layout of light and dark), then one bit per
    coefficient: 1 where it is above the median of the 63 AC coefficients.  Bit 63 (the most
    significant) is coefficient (0, 0), then row by row.

    The median leaves out the DC term because DC is the mean brightness times 32, not a layout
    term: it is (nearly) always the largest value, so it only decides which side of the median
    the threshold falls.  Over the 63 AC terms (an odd count) the median *is* one coefficient:
    no averaging, and exactly 31 AC bits are set when no two tie.  The DC bit is therefore 1 for
    every image but an all-black one, every hash has 32 set bits, and distances are even.  A
    brightness gain scales every coefficient and the median alike, and an offset moves only DC,
    so neither changes the bits (up to clipping and rounding).

    Deterministic across machines: grey conversion is OpenCV's fixed-point integer one, the
    resized image is rounded back to uint8, so the DCT's input is exact integers; a flat image
    gives exact zeros (ties count as 0).  Only a coefficient within float32 rounding of the
    median could flip, which moves the hash by one bit.

    >>> from skimage import data
    >>> hash_hex(perceptual_hash(data.astronaut()))
    'c2924c5532bddfc8'
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image: {image.shape}")
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (_RESIZED, _RESIZED), interpolation=cv2.INTER_AREA)
    coeffs = cv2.dct(small.astype(np.float32))[:_BLOCK, :_BLOCK].ravel()
    bits = coeffs > np.median(coeffs[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hash_hex(h: int) -> str:
    """The hash as 16 lower-case hex digits (zero-padded), for manifests and logs."""
    _check_hash(h)
    return f"{h:0{HASH_HEX}x}"


def parse_hash_hex(text: str) -> int:
    """The inverse of :func:`hash_hex`; refuses anything but exactly 16 hex digits."""
    if len(text) != HASH_HEX or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"expected {HASH_HEX} hex digits, got {text!r}")
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    """Number of bits in which two hashes differ."""
    _check_hash(a)
    _check_hash(b)
    return (a ^ b).bit_count()


def assign_groups(
    new: dict[str, int],
    known: dict[str, tuple[int, str]],
    threshold: int = NEAR_DUPLICATE_BITS,
) -> dict[str, str]:
    """Group id for every key of ``new``, given the samples already grouped in ``known``.

    ``new``: key (sample id) → hash, for samples not grouped yet.  ``known``: key → (hash,
    group id) for samples already in the dataset.  Two samples are near when their hashes differ
    in at most ``threshold`` bits; near is followed transitively over new and known together.
    A component with known samples takes the smallest group id among them (existing ids never
    change, so a new sample that bridges two old groups joins the smaller one; the old groups
    stay as they are).  A component of new samples only takes its smallest key.  The result does
    not depend on dict order.

    Cost: pairs are only compared when they can be near.  Bits 0..62 are cut into
    ``threshold + 1`` bands (bit 63, DC, is 1 in nearly every hash and would only make buckets
    bigger); two hashes within ``threshold`` bits differ in at most ``threshold`` bands, so by
    pigeonhole they agree exactly on at least one.  Per band, hashes are bucketed by that band's
    value and only hashes sharing a bucket are compared (XOR and popcount in numpy); the links
    found are merged into components by scipy's connected_components, in bulk.  For N hashes
    spread evenly that is about ``(threshold + 1) · N² / 2^(63 / (threshold + 1) + 1)``
    comparisons: ~10⁹ for 100k hashes at threshold 10, 3–11 s on a busy 2-core box
    (benchmarks/near_duplicates.py).  Identical hashes are compared once.  Real pHashes are less
    even than random bits, and the worst case is one huge bucket (tens of thousands of frames of
    one static clip with slightly different hashes): the cost grows with its size squared.
    """
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold must be in 0..{HASH_BITS}, got {threshold}")
    if both := sorted(new.keys() & known.keys()):
        raise ValueError(f"{len(both)} keys are both new and known, e.g. {both[0]!r}")
    keys = sorted(new.keys() | known.keys())
    if not keys:
        return {}
    values = [known[k][0] if k in known else new[k] for k in keys]
    for value in values:
        _check_hash(value)
    unique, node_of_key = np.unique(np.array(values, dtype=np.uint64), return_inverse=True)
    component = _components(unique, threshold)[node_of_key.ravel()]

    group_of: dict[int, str] = {}
    for key, comp in zip(keys, component.tolist(), strict=True):
        if key in known:
            group = known[key][1]
            if comp not in group_of or group < group_of[comp]:
                group_of[comp] = group
    for key, comp in zip(keys, component.tolist(), strict=True):
        # Keys run in sorted order, so the first new key of a component is its smallest.
        group_of.setdefault(comp, key)
    return {
        key: group_of[comp]
        for key, comp in zip(keys, component.tolist(), strict=True)
        if key in new
    }


def _check_hash(h: int) -> None:
    if not 0 <= h < 1 << HASH_BITS:
        raise ValueError(f"a hash is an unsigned {HASH_BITS}-bit integer, got {h}")


def _bands(threshold: int) -> list[tuple[int, int]]:
    """(shift, width) of ``threshold + 1`` bands (at most 63) covering bits 0..62 evenly.

    Bit 63, the DC bit, is left out: it is 1 for nearly every image, so a band holding it would
    have half the buckets it could.  Pigeonhole still holds over the other 63 bits.
    """
    bits = HASH_BITS - 1
    count = min(threshold + 1, bits)
    widths = [bits // count + (i < bits % count) for i in range(count)]
    shifts = np.cumsum([0, *widths[:-1]]).tolist()
    return list(zip(shifts, widths, strict=True))


def _popcount(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element into uint8 ``out`` (numpy ≥ 2 has it; 1.26 counts bytes)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x, out=out)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    as_bytes = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8)
    return table[as_bytes].sum(axis=-1, dtype=np.uint8, out=out)


def _near_pairs(hashes: np.ndarray, threshold: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (i, j) with hamming(hashes[i], hashes[j]) ≤ threshold, i ≠ j.

    Every near pair comes out at least once (once per band it agrees on); blocks of pairs come
    out as they are found.  Distances go through two reused buffers: allocating a fresh
    4M-element array per block costs more than the XOR itself.
    """
    size = max(_BLOCK_PAIRS, hashes.size)
    xor_buffer, bits_buffer = np.empty(size, np.uint64), np.empty(size, np.uint8)
    for shift, width in _bands(threshold):
        band = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1]])
        ends = np.r_[starts[1:], band.size]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            if end - start < 2:
                continue
            members = order[start:end]
            rows = max(1, _BLOCK_PAIRS // members.size)
            for first in range(0, members.size, rows):
                # Rows first.. against columns first..: the upper triangle, each pair once.
                later = members[first:]
                values = hashes[later]
                shape = (min(rows, later.size), later.size)
                xor = xor_buffer[: shape[0] * shape[1]].reshape(shape)
                np.bitwise_xor(values[: shape[0], None], values[None, :], out=xor)
                bits = _popcount(xor, out=bits_buffer[: xor.size].reshape(shape))
                r, c = np.divmod(np.flatnonzero(bits <= threshold), shape[1])
                keep = r < c
                yield later[r[keep]], later[c[keep]]


def _fold(labels: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Union-find step in bulk: each node's representative after also linking i[e]–j[e].

    ``labels[k]`` is a node of k's component so far; the graph "k – labels[k]" plus the new
    edges has the merged components, found by scipy in C.  The representative is the smallest
    node index of each component.
    """
    n = labels.size
    rows = np.concatenate([np.arange(n), i])
    cols = np.concatenate([labels, j])
    graph = coo_matrix((np.ones(rows.size, dtype=bool), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    _, first = np.unique(component, return_index=True)
    return first[component]


def _components(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Per hash, the smallest index of its connected component under "within threshold bits"."""
    labels = np.arange(hashes.size)
    if threshold >= HASH_BITS - 1:
        # Too many bands for 63 bits; but then only a complement (64 bits away) is not near, and
        # a third hash links even that pair.
        apart = threshold < HASH_BITS and hashes.size == 2 and hashes[0] == ~hashes[1]
        return labels if apart else np.zeros_like(labels)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    count = 0
    for i, j in _near_pairs(hashes, threshold):
        if i.size:
            pending.append((i, j))
            count += i.size
        if count >= _PENDING_EDGES:
            labels = _fold(labels, *map(np.concatenate, zip(*pending, strict=True)))
            pending, count = [], 0
    if pending:
        labels = _fold(labels, *map(np.concatenate, zip(*pending, strict=True)))
    return labels
