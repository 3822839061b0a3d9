"""The closed-form (Levin, Lischinski & Weiss 2008) matting Laplacian, only where it is needed.

KNN matting links pixels of the same colour anywhere in the band, which carries a colour from
where the trimap knows it to where it does not; it says little about how alpha varies between
two neighbours. The closed-form Laplacian says exactly that: inside every 3×3 window alpha is an
affine function of the colour (the colour-line model), so a soft edge follows the image's own
gradient. The two terms are added (``tasks/alpha/``, ``alpha.cf_weight``); KNN matting stays
the method the data is named after.

Only windows that touch an unknown pixel matter: every other window links known pixels only,
which the elimination of known pixels removes. So the system is assembled from those windows
alone and straight into its eliminated form (the rows of unknown pixels; their entries in known
columns go to the right-hand side), at a cost proportional to the unknown area.

Two pixels share a 3×3 window only if they are at most 2 apart in both directions, so a row has
at most 25 entries, one per offset in its 5×5 neighbourhood ("slot"). The windows' 81 entries
each are summed straight into a dense (rows, 25) table by slot, instead of being listed as
(row, column, value) triples and merged by a sparse conversion: at 12 MP (~500k windows, ~40M
triples) the triples and their conversion peaked 2.2 GB above the inputs and took ~9 s; the
table (~90 MB) brings that to 0.3 GB, the result's 0.14 GB included, and ~1.5 s. The table then
splits into the CSR matrix (unknown columns; slots ascend with the column, so rows come out
sorted and without duplicates) and the right-hand side (known columns).
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse as sp

# Regulariser of each window's colour covariance (colours in [0, 1]). The paper's 1e-7 lets
# nearly flat windows pass any noise through; on the P3M portraits 1e-6 gave lower SAD.
DEFAULT_EPSILON = 1e-6
_WINDOW = 9  # pixels in a 3×3 window
_OFFSETS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
_CHUNK = 1 << 15  # windows per block: bounds the (n, 9, 9) temporaries to ~20 MB each
# A row's possible columns: the offsets (dy, dx) of its 5×5 neighbourhood, in row-major order.
_SLOTS = np.array([(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)])
# _PAIR_SLOT[a, b]: the slot of window pixel b as seen from window pixel a.
_PAIR_SLOT = (_OFFSETS[None, :, 0] - _OFFSETS[:, None, 0] + 2) * 5 + (
    _OFFSETS[None, :, 1] - _OFFSETS[:, None, 1] + 2
)


def touching_windows(is_unknown: np.ndarray) -> np.ndarray:
    """Flat indices of the centres of the 3×3 windows (inside the image) holding an unknown pixel.
    """
    touch = cv2.dilate(is_unknown.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    touch[0, :] = touch[-1, :] = False
    touch[:, 0] = touch[:, -1] = False
    return np.flatnonzero(touch)


def window_entries(
    colours: np.ndarray, epsilon: float = DEFAULT_EPSILON
) -> np.ndarray:
    """Each window's 9×9 block of the Laplacian, shape (n, 9, 9), from its (n, 9, 3) colours.

    δ_ij − (1 + (I_i − μ)ᵀ (Σ + ε/9 · Id)⁻¹ (I_j − μ)) / 9, the paper's equation (12).
    """
    mean = colours.mean(axis=1, keepdims=True)
    centred = colours - mean
    covariance = np.matmul(centred.transpose(0, 2, 1), centred) / _WINDOW
    covariance += (epsilon / _WINDOW) * np.eye(3)
    projected = np.matmul(centred, np.linalg.inv(covariance))
    gram = np.matmul(projected, centred.transpose(0, 2, 1))
    return np.eye(_WINDOW) - (1.0 + gram) / _WINDOW


def slot_table(
    image: np.ndarray, is_unknown: np.ndarray, number: np.ndarray, epsilon: float = DEFAULT_EPSILON
) -> np.ndarray:
    """The Laplacian's rows of the unknown pixels by slot: ``table[r, s]`` = L(r, r + _SLOTS[s]).

    ``number`` is ``is_unknown`` flattened into row numbers, −1 at known pixels (their rows are
    not needed). Windows come in row-major blocks, so the rows one block touches lie in a narrow
    range; one bincount per block sums its entries there (pairs repeat across windows), with
    known pixels' entries sent to a spare row past the range and dropped.
    """
    w = is_unknown.shape[1]
    table = np.zeros((np.count_nonzero(is_unknown), len(_SLOTS)))
    centres = touching_windows(is_unknown)
    offsets = _OFFSETS[:, 0] * w + _OFFSETS[:, 1]
    colours_all = image.reshape(-1, 3)
    scale = 1.0 / 255.0 if image.dtype == np.uint8 else 1.0
    for start in range(0, len(centres), _CHUNK):
        pixels = centres[start:start + _CHUNK, None] + offsets  # (n, 9)
        values = window_entries(colours_all[pixels].astype(np.float64) * scale, epsilon)
        rows = number[pixels]
        del pixels
        is_row = rows >= 0
        lo, hi = int(rows[is_row].min()), int(rows.max())  # every window has an unknown
        local = np.where(is_row, rows - lo, hi + 1 - lo).astype(np.intp)
        keys = (local * len(_SLOTS))[:, :, None] + _PAIR_SLOT  # (n, 9, 9), like values
        sums = np.bincount(keys.ravel(), values.ravel(), (hi + 2 - lo) * len(_SLOTS))
        table[lo:hi + 1] += sums[:-len(_SLOTS)].reshape(-1, len(_SLOTS))
    return table


def closed_form_system(
    image: np.ndarray,
    is_unknown: np.ndarray,
    known_alpha: np.ndarray,
    epsilon: float = DEFAULT_EPSILON,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """``(L_uu, −L_uk α_k, anchored)`` of the matting Laplacian over the unknown pixels.

    Unknown pixels are numbered in row-major order (``np.flatnonzero(is_unknown)``), as in the
    KNN system, so the two add entry by entry. ``known_alpha`` is HxW and read at known pixels
    only. ``anchored`` marks the unknown pixels that share a window with a known one.
    """
    h, w = is_unknown.shape
    unknown = np.flatnonzero(is_unknown)
    index_dtype = np.int32 if h * w < 2**31 else np.int64
    number = np.full(h * w, -1, dtype=index_dtype)
    number[unknown] = np.arange(len(unknown), dtype=index_dtype)
    table = slot_table(image, is_unknown, number, epsilon)
    columns, rhs, anchored = _split_slots(table, unknown, number, known_alpha, (h, w))
    del number
    return _unknown_columns(table, columns), rhs, anchored


def _split_slots(
    table: np.ndarray,
    unknown: np.ndarray,
    number: np.ndarray,
    known_alpha: np.ndarray,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(columns, −L_uk α_k, anchored)``: each slot's column, its known columns' share of b.

    ``columns[r, s]`` is the row number of the pixel in slot s of row r, −1 where that pixel is
    known or outside the image. Any two pixels of an image at least 3×3 that are this close share
    a window, and it touches an unknown pixel (the row's own), so every slot inside the image is
    an entry; smaller images have no window at all.
    """
    h, w = shape
    columns = np.full(table.shape, -1, dtype=number.dtype)
    rhs = np.zeros(len(table))
    anchored = np.zeros(len(table), dtype=bool)
    if h < 3 or w < 3:
        return columns, rhs, anchored
    known_flat = np.asarray(known_alpha).reshape(-1)
    y, x = np.divmod(unknown, w)
    for slot, (dy, dx) in enumerate(_SLOTS):
        rows = np.flatnonzero((y >= -dy) & (y < h - dy) & (x >= -dx) & (x < w - dx))
        neighbours = unknown[rows] + (dy * w + dx)
        found = number[neighbours]
        columns[rows, slot] = found
        known = found < 0
        rows, neighbours = rows[known], neighbours[known]
        rhs[rows] -= table[rows, slot] * known_flat[neighbours].astype(np.float64)
        anchored[rows] = True
    return columns, rhs, anchored


def _unknown_columns(table: np.ndarray, columns: np.ndarray) -> sp.csr_matrix:
    """The CSR matrix of ``table``'s entries whose ``columns`` are unknown pixels (≥ 0).

    Every such entry is kept, zero or not, so the pattern is that of the windows.
    """
    inner = columns >= 0
    indices = columns[inner]
    data = table[inner]
    indptr = np.zeros(len(table) + 1, dtype=np.int64)
    np.cumsum(np.count_nonzero(inner, axis=1), out=indptr[1:])
    size = len(table)
    return sp.csr_matrix((data, indices, indptr), shape=(size, size))
