"""Composite augmentations: background effects and foreground retouching.

Why: a matting model trained only on sharp, untouched photos pasted on sharp backgrounds learns
that "the sharp layer is the person".  Real portraits have shallow depth of field, motion, zoom
bursts, pixelated (privacy) backgrounds and retouched skin, so we vary both layers per composite.

Every effect is a pure function — uint8 HxWx3 RGB in, a new uint8 HxWx3 array out (alpha is
float32 HxW in [0, 1], or uint8 0..255 as stored on disk) — with a zero-strength setting that is
the identity.  The spec layer at the bottom records which effects a composite got and with which
parameters (:class:`EffectSpec`, JSON-serialisable), so a composite can be re-made exactly from
its manifest entry: :func:`sample_effects` draws specs from a seeded generator,
:func:`apply_background_effects` / :func:`apply_foreground_effects` replay them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

# ----------------------------------------------------------------------------- helpers


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")


def _unit_alpha(alpha: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 alpha in [0, 1] from float or uint8 (stored) alpha, checked against the image."""
    if alpha.shape != shape[:2]:
        raise ValueError(f"alpha shape {alpha.shape} does not match image {shape[:2]}")
    a = alpha.astype(np.float32) / 255.0 if alpha.dtype == np.uint8 else alpha.astype(np.float32)
    return np.clip(a, 0.0, 1.0)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve float channels with a point-symmetric kernel (correlation == convolution)."""
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


# ----------------------------------------------------------------------------- background


def disc_kernel(radius: int) -> np.ndarray:
    """Normalised (2r+1)² disc: the shape a round lens aperture gives an out-of-focus point."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (x * x + y * y <= r * r + r).astype(np.float64)  # +r: rounder rim at small radii
    return disc / disc.sum()


def bokeh_blur(image: np.ndarray, radius: int, highlight_gamma: float = 3.0) -> np.ndarray:
    """Depth-of-field blur: disc-kernel convolution, highlights boosted before and mapped back.

    A Gaussian blur makes bright points into soft blobs; a lens makes them into crisp discs of
    the aperture's size.  Raising intensities to ``highlight_gamma`` (> 1) before the disc
    convolution gives the few bright pixels most of the weight, so after mapping back with
    ``1/highlight_gamma`` they spread as bright discs instead of fading into the surroundings.
    ``highlight_gamma=1`` is a plain disc blur; ``radius=0`` is the identity.
    """
    _check_image(image)
    if radius < 0 or highlight_gamma <= 0:
        raise ValueError(
            f"radius must be >= 0 and highlight_gamma > 0, got {radius}, {highlight_gamma}"
        )
    if radius == 0:
        return image.copy()
    # float64: the DFT path filter2D takes for big kernels leaves ~1e-8 noise in float32, which
    # the 1/gamma power would lift into visible haze outside the discs.
    lin = np.power(image.astype(np.float64) / 255.0, highlight_gamma)
    blurred = np.clip(_filter(lin, disc_kernel(radius)), 0.0, 1.0)
    return _to_uint8(np.power(blurred, 1.0 / highlight_gamma) * 255.0)


def line_kernel(length: int, angle_deg: float) -> np.ndarray:
    """Normalised line of ``length`` pixels through the centre, ``angle_deg`` counter-clockwise
    from the +x axis (image rows grow downwards, so 90° points up).  Anti-aliased by rotating a
    horizontal line with bilinear interpolation, so every angle has the same length and weight.
    """
    n = int(length)
    size = n if n % 2 else n + 1
    c = size // 2
    base = np.zeros((size, size), np.float32)
    # n pixels of weight 1 centred on c; an even length ends in two half-weight pixels.
    base[c] = np.clip((n + 1) / 2.0 - np.abs(np.arange(size) - c), 0.0, 1.0)
    rot = cv2.getRotationMatrix2D((float(c), float(c)), float(angle_deg), 1.0)
    kernel = cv2.warpAffine(base, rot, (size, size), flags=cv2.INTER_LINEAR)
    return (kernel / kernel.sum()).astype(np.float64)


def motion_blur(image: np.ndarray, length: int, angle_deg: float = 0.0) -> np.ndarray:
    """Linear motion blur: the camera (or scene) moved ``length`` pixels along ``angle_deg``
    during the exposure.  ``length <= 1`` is the identity."""
    _check_image(image)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length <= 1:
        return image.copy()
    return _to_uint8(_filter(image.astype(np.float32), line_kernel(length, angle_deg)))


def zoom_blur(
    image: np.ndarray,
    strength: float,
    center: tuple[float, float] = (0.5, 0.5),
    max_passes: int = 8,
) -> np.ndarray:
    """Radial (zoom-burst) blur: each pixel averages the image along its ray to ``center``.

    A pixel at distance d from the centre averages samples between d and d·(1 − ``strength``),
    so the centre stays sharp and the blur grows towards the edges, as when zooming during the
    exposure.  ``center`` is (x, y) as fractions of the width and height.  Samples are taken
    by repeated doubling — average the image with itself zoomed by f, then by f², f⁴, … — so k
    ``cv2.remap`` passes give 2^k geometric samples; k is just enough that neighbouring samples
    are about a pixel apart at the far corner, capped at ``max_passes``.  ``strength=0`` is the
    identity.
    """
    _check_image(image)
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"strength must be in [0, 1), got {strength}")
    if strength == 0.0:
        return image.copy()
    h, w = image.shape[:2]
    cx, cy = center[0] * (w - 1), center[1] * (h - 1)
    reach = math.hypot(max(cx, w - 1 - cx), max(cy, h - 1 - cy)) * strength  # longest ray, px
    passes = min(max_passes, max(1, math.ceil(math.log2(max(reach, 2.0)))))
    samples = 2**passes
    # f^(samples-1) = 1 - strength: the last sample sits at the end of the ray.
    f = (1.0 - strength) ** (1.0 / (samples - 1))
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    dx, dy = xs - np.float32(cx), ys - np.float32(cy)
    out = image.astype(np.float32)
    for k in range(passes):
        s = np.float32(f ** (2**k))
        zoomed = cv2.remap(
            out, dx * s + np.float32(cx), dy * s + np.float32(cy),
            cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101,
        )  # fmt: skip
        out = 0.5 * (out + zoomed)
    return _to_uint8(out)


def mosaic(image: np.ndarray, block: int) -> np.ndarray:
    """Pixelate: every ``block``×``block`` tile (from the top-left; edge tiles may be smaller)
    becomes its mean colour, as privacy-pixelated backgrounds look.  ``block <= 1`` is the
    identity."""
    _check_image(image)
    if block < 0:
        raise ValueError(f"block must be >= 0, got {block}")
    if block <= 1:
        return image.copy()
    h, w = image.shape[:2]
    rows, cols = np.arange(0, h, block), np.arange(0, w, block)
    sums = np.add.reduceat(np.add.reduceat(image.astype(np.float64), rows, 0), cols, 1)
    counts = np.diff(np.append(rows, h))[:, None] * np.diff(np.append(cols, w))[None, :]
    means = _to_uint8(sums / counts[:, :, None])
    return np.ascontiguousarray(np.repeat(np.repeat(means, block, 0), block, 1)[:h, :w])


# ----------------------------------------------------------------------------- foreground

# Chai & Ngan (1999) skin cluster in YCrCb: Cr 133..173, Cb 77..127, widely reused because it is
# nearly independent of skin tone (tone mostly moves Y).  SKIN_SOFTNESS widens it into a ramp so
# the mask has no hard speckle edges.
SKIN_CR = (133.0, 173.0)
SKIN_CB = (77.0, 127.0)
SKIN_SOFTNESS = 8.0
SKIN_MIN_LUMA = 40.0


def _ramp(x: np.ndarray, lo: float, hi: float, soft: float) -> np.ndarray:
    """1 inside [lo, hi], falling linearly to 0 ``soft`` outside it."""
    return np.clip(1.0 + np.minimum(x - lo, hi - x) / soft, 0.0, 1.0)


def skin_mask(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Soft skin probability (float32 HxW in [0, 1]) restricted to the person.

    Colour alone also fires on wood, sand and warm walls; multiplying by the person's alpha keeps
    only skin inside the matte, feathered where the matte is (hair strands, soft edges), and is
    exactly 0 wherever alpha is 0.  A light Gaussian (σ = 1 px) removes single-pixel speckle.
    """
    _check_image(image)
    a = _unit_alpha(alpha, image.shape)
    ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    y, cr, cb = ycrcb[..., 0], ycrcb[..., 1], ycrcb[..., 2]
    colour = (
        _ramp(cr, *SKIN_CR, SKIN_SOFTNESS)
        * _ramp(cb, *SKIN_CB, SKIN_SOFTNESS)
        * np.clip((y - SKIN_MIN_LUMA) / SKIN_SOFTNESS + 1.0, 0.0, 1.0)
    )
    colour = cv2.GaussianBlur(colour.astype(np.float32), (0, 0), 1.0)
    return (np.clip(colour, 0.0, 1.0) * a).astype(np.float32)


# Texture (pores, fine hair) lives below this Gaussian σ in px; blotches and blemishes above it.
TEXTURE_SIGMA = 1.5


def retouch_skin(
    image: np.ndarray,
    alpha: np.ndarray,
    amount: float,
    smoothing: float = 6.0,
    detail: float = 0.35,
    sigma_color: float = 30.0,
) -> np.ndarray:
    """Beauty-retouch skin: edge-preserving smoothing with a share of the fine texture put back.

    Frequency separation, as retouchers do it: the low-frequency layer comes from the bilateral
    filter (spatial σ = ``smoothing`` px, colour σ = ``sigma_color`` levels), which flattens
    blotches and blemishes without smearing skin into the eyes, lips or background; then
    low-passed at :data:`TEXTURE_SIGMA`.  Fully smoothed skin looks plastic, so the original's
    high-pass layer (original − its Gaussian low-pass at the same σ: pores, fine hair) is added
    back at ``detail`` (0 = none, 1 = all).  The result is blended into the original by
    ``amount`` × :func:`skin_mask`, so non-skin pixels and everything outside the matte keep
    their exact values.  ``amount=0`` is the identity.
    """
    _check_image(image)
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    if amount == 0.0:
        return image.copy()
    weight = amount * skin_mask(image, alpha)
    src = image.astype(np.float32)
    smooth = cv2.bilateralFilter(src, -1, sigma_color, smoothing)
    low_pass = cv2.GaussianBlur(smooth, (0, 0), TEXTURE_SIGMA)
    high_pass = src - cv2.GaussianBlur(src, (0, 0), TEXTURE_SIGMA)
    retouched = low_pass + detail * high_pass
    out = _to_uint8(src + weight[..., None] * (retouched - src))
    out[weight == 0] = image[weight == 0]  # exact, whatever float rounding did
    return out


def _luma(x: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of float RGB (the weights YCrCb and PIL's grey use)."""
    return x @ np.array([0.299, 0.587, 0.114], dtype=x.dtype)


def adjust_tone(
    image: np.ndarray,
    brightness: float = 0.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    warmth: float = 0.0,
) -> np.ndarray:
    """Colour and tone tweaks, so foregrounds do not all carry their camera's look.

    ``brightness`` adds that fraction of full scale (0.1 → +25.5 levels); ``contrast`` scales
    distances from the image's mean luma (PIL's definition, so the overall level is kept);
    ``saturation`` scales each pixel's distance from its own grey (0 = greyscale); ``warmth``
    multiplies red by 1 + 0.2·warmth and blue by 1 − 0.2·warmth (positive = warmer, like a lower
    white-balance setting).  The defaults are the identity.
    """
    _check_image(image)
    x = image.astype(np.float32)
    if brightness:
        x = x + np.float32(255.0 * brightness)
    if contrast != 1.0:
        mean = np.float32(_luma(image.astype(np.float32)).mean())
        x = mean + np.float32(contrast) * (x - mean)
    if saturation != 1.0:
        grey = _luma(x)[..., None]
        x = grey + np.float32(saturation) * (x - grey)
    if warmth:
        x = x * np.array([1.0 + 0.2 * warmth, 1.0, 1.0 - 0.2 * warmth], dtype=np.float32)
    return _to_uint8(x)


# ----------------------------------------------------------------------------- specs

Kind = Literal["background", "foreground"]
Params = dict[str, Any]


@dataclass(frozen=True)
class EffectSpec:
    """One effect as recorded in the manifest: its registry name and keyword parameters.

    Params hold only JSON scalars (int, float, str), so ``from_dict(json.loads(json.dumps(
    spec.to_dict())))`` gives an equal spec, and re-applying it gives identical bytes.
    """

    name: str
    params: Params = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EffectSpec:
        name = data["name"]
        if name not in EFFECTS:
            raise ValueError(f"unknown effect {name!r}; known: {sorted(EFFECTS)}")
        return cls(name=name, params=dict(data.get("params", {})))


def specs_to_json(specs: Iterable[EffectSpec]) -> str:
    return json.dumps([s.to_dict() for s in specs], sort_keys=True)


def specs_from_json(text: str) -> list[EffectSpec]:
    return [EffectSpec.from_dict(d) for d in json.loads(text)]


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Rounded to 4 decimals: manifests stay readable; the rounded value is what gets applied."""
    return round(float(rng.uniform(lo, hi)), 4)


def _integer(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


@dataclass(frozen=True)
class _Effect:
    kind: Kind
    sample: Callable[[np.random.Generator], Params]
    apply: Callable[..., np.ndarray]  # (image, **params) or (image, alpha, **params)


# Parameter ranges suit Composition-1K-sized images (about 1–2 megapixels).  Registry order is
# the order effects are drawn and applied in, so keep it stable (append new effects at the end).
EFFECTS: dict[str, _Effect] = {
    "bokeh": _Effect(
        "background",
        lambda rng: {"radius": _integer(rng, 3, 25), "highlight_gamma": _uniform(rng, 1.5, 4.0)},
        bokeh_blur,
    ),
    "motion_blur": _Effect(
        "background",
        lambda rng: {"length": _integer(rng, 5, 41), "angle_deg": _uniform(rng, 0.0, 180.0)},
        motion_blur,
    ),
    "zoom_blur": _Effect(
        "background",
        lambda rng: {
            "strength": _uniform(rng, 0.02, 0.15),
            "center": [_uniform(rng, 0.3, 0.7), _uniform(rng, 0.3, 0.7)],
        },
        lambda image, strength, center: zoom_blur(image, strength, (center[0], center[1])),
    ),
    "mosaic": _Effect("background", lambda rng: {"block": _integer(rng, 4, 24)}, mosaic),
    "retouch": _Effect(
        "foreground",
        lambda rng: {
            "amount": _uniform(rng, 0.3, 0.9),
            "smoothing": _uniform(rng, 3.0, 9.0),
            "detail": _uniform(rng, 0.2, 0.6),
        },
        retouch_skin,
    ),
    "tone": _Effect(
        "foreground",
        lambda rng: {
            "brightness": _uniform(rng, -0.08, 0.08),
            "contrast": _uniform(rng, 0.85, 1.15),
            "saturation": _uniform(rng, 0.75, 1.25),
            "warmth": _uniform(rng, -0.5, 0.5),
        },
        lambda image, alpha, **params: adjust_tone(image, **params),
    ),
}


def check_probabilities(probabilities: Mapping[str, float]) -> None:
    """Refuse unknown effect names and probabilities outside [0, 1] (ValueError)."""
    unknown = set(probabilities) - set(EFFECTS)
    if unknown:
        raise ValueError(f"unknown effects {sorted(unknown)}; known: {sorted(EFFECTS)}")
    bad = {k: p for k, p in probabilities.items() if not 0.0 <= p <= 1.0}
    if bad:
        raise ValueError(f"effect probabilities must be in [0, 1], got {bad}")


def sample_effects(
    rng: np.random.Generator, probabilities: Mapping[str, float]
) -> list[EffectSpec]:
    """Draw the effects one composite gets: each named effect independently with its
    probability (absent names: 0), then its parameters.

    One uniform draw is spent per registered effect whether or not it is named, so changing one
    probability does not reshuffle the others' decisions for the same generator state.
    """
    check_probabilities(probabilities)
    specs = []
    for name, effect in EFFECTS.items():
        if rng.random() < probabilities.get(name, 0.0):
            specs.append(EffectSpec(name, effect.sample(rng)))
    return specs


def _lookup(spec: EffectSpec) -> _Effect:
    try:
        return EFFECTS[spec.name]
    except KeyError:
        raise ValueError(f"unknown effect {spec.name!r}; known: {sorted(EFFECTS)}") from None


def apply_background_effects(background: np.ndarray, specs: Iterable[EffectSpec]) -> np.ndarray:
    """Apply the background specs in order (foreground specs are skipped, so one recorded list
    serves both layers).  Apply after :func:`~matteforge.tasks.composite.fit_background`, so the
    effect is sized for the composite."""
    out = background
    for spec in specs:
        effect = _lookup(spec)
        if effect.kind == "background":
            out = effect.apply(out, **spec.params)
    return out.copy() if out is background else out


def apply_foreground_effects(
    foreground: np.ndarray, alpha: np.ndarray, specs: Iterable[EffectSpec]
) -> np.ndarray:
    """Apply the foreground specs in order (background specs are skipped).  Pixels where alpha
    is 0 keep their values: they never reach a composite and stay as stored."""
    outside = _unit_alpha(alpha, foreground.shape) == 0
    out = foreground
    for spec in specs:
        effect = _lookup(spec)
        if effect.kind == "foreground":
            out = effect.apply(out, alpha, **spec.params)
    out = out.copy() if out is foreground else out
    out[outside] = foreground[outside]
    return out
