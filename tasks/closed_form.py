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
_CHUNK = 1 << 16  # windows per block: bounds the (n, 9, 9) temporaries to ~40 MB


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
    flat_unknown = is_unknown.ravel()
    m = int(flat_unknown.sum())
    number = np.full(h * w, -1, dtype=np.int64)
    number[flat_unknown] = np.arange(m)
    colours_all = image.reshape(-1, 3)
    scale = 1.0 / 255.0 if image.dtype == np.uint8 else 1.0
    alpha_flat = np.asarray(known_alpha, dtype=np.float64).ravel()
    centres = touching_windows(is_unknown)
    offsets = _OFFSETS[:, 0] * w + _OFFSETS[:, 1]
    rhs = np.zeros(m)
    anchored = np.zeros(m, dtype=bool)
    blocks_r, blocks_c, blocks_v = [], [], []
    for start in range(0, len(centres), _CHUNK):
        pixels = centres[start:start + _CHUNK, None] + offsets  # (n, 9)
        colours = colours_all[pixels].astype(np.float64) * scale
        values = window_entries(colours, epsilon)
        rows = np.broadcast_to(number[pixels][:, :, None], values.shape)
        cols_flat = np.broadcast_to(pixels[:, None, :], values.shape)
        cols = number[cols_flat]
        in_row = rows >= 0
        inner = in_row & (cols >= 0)
        outer = in_row & (cols < 0)
        r_out = rows[outer]
        rhs -= np.bincount(r_out, values[outer] * alpha_flat[cols_flat[outer]], m)
        anchored[r_out] = True
        blocks_r.append(rows[inner])
        blocks_c.append(cols[inner])
        blocks_v.append(values[inner])
    matrix = sp.coo_matrix(
        (np.concatenate(blocks_v) if blocks_v else np.zeros(0),
         (np.concatenate(blocks_r) if blocks_r else np.zeros(0, np.int64),
          np.concatenate(blocks_c) if blocks_c else np.zeros(0, np.int64))),
        shape=(m, m),
    ).tocsr()
    return matrix, rhs, anchored
