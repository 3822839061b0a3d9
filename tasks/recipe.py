"""One portrait's recipe: model maps → trimap → alpha → foreground → quality figures → verdict.

The build (``matteforge/steps/shard.py``), the stage commands and every benchmark call
:func:`make_sample`, so a benchmark measures exactly what the build makes. Pure: arrays and a
config in, arrays and figures out; no I/O, no Prefect.

With two or more models their maps are evidence for each other:

- the map the recipe works from is their mean;
- inside the trimap's band, a pixel every model calls with confidence (all maps within
  ``trimap.sure_margin`` of 0 or of 1) is known, so the solve spends itself where the models are
  unsure or disagree (``tasks/trimap.settle_confident``);
- the prior's weight per pixel grows with the models' confidence (``alpha.prior_confidence``):
  the solve follows the map where it is decisive and the image where it is not;
- ``model_disagreement`` (``tasks/quality.py``) goes to the acceptance rule: two good models
  rarely disagree on a real person, and where one of them fails grossly they do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matteforge.config import BuildConfig
from matteforge.dataset.codec import to_uint8
from matteforge.tasks import trimap as trimaps
from matteforge.tasks.alpha import AlphaInfo, AlphaOptions, knn_alpha_with_info
from matteforge.tasks.alpha.cg import resolve_solver_device
from matteforge.tasks.foreground import estimate_foreground_background
from matteforge.tasks.quality import judge, model_disagreement, quality_figures
from matteforge.tasks.segment import ensemble_map


@dataclass
class Sample:
    """What one portrait becomes, and the figures its manifest row records."""

    probability: np.ndarray  # HxW float32: the map the trimap and prior come from
    trimap: np.ndarray  # HxW uint8 0/128/255
    alpha: np.ndarray  # HxW uint8, as stored
    foreground: np.ndarray  # HxWx3 uint8
    background: np.ndarray  # HxWx3 uint8 (estimated, not stored)
    info: AlphaInfo
    row: dict[str, Any]  # manifest figures: trimap, solver, quality
    verdict: tuple[str, str] | None  # (reason, detail) when the acceptance rule rejects it
    seconds: dict[str, float] = field(default_factory=dict)  # per stage (own clock only)


def prior_weights(maps: Mapping[str, np.ndarray], weight: float, by_confidence: bool
                  ) -> float | np.ndarray:
    """λ_p per pixel: ``weight`` × the models' least confidence (2p − 1)², or ``weight`` flat.

    A map at 0.5 says nothing about alpha; one at 0 or 1 says a lot. Taking the least confident
    model means two models that disagree pull the solve nowhere.
    """
    if weight <= 0 or not by_confidence:
        return weight
    confidence = None
    for m in maps.values():
        c = np.square(2.0 * np.asarray(m, dtype=np.float32) - 1.0)
        confidence = c if confidence is None else np.minimum(confidence, c)
    assert confidence is not None
    return weight * confidence


def make_trimap(image_shape: tuple[int, ...], maps: Mapping[str, np.ndarray],
                probability: np.ndarray, cfg: BuildConfig) -> tuple[np.ndarray, int]:
    """The build's trimap of one portrait and its band half-width (``trimap`` config)."""
    t = cfg.trimap
    half = trimaps.band_width(*image_shape[:2], fixed=t.width, fraction=t.width_fraction,
                              minimum=t.min_width)
    tri = trimaps.make_trimap(probability, threshold=t.threshold, kernel_shape=t.kernel_shape,
                              half_width=half)
    if t.sure_margin > 0:
        tri = trimaps.settle_confident(tri, list(maps.values()), t.sure_margin)
    return tri, half


class StageClock:
    """Seconds per stage, and the stage running now (a failure is charged to it).

    ``stages`` start at 0 s, so a row records every stage, run or not.
    """

    def __init__(self, stages: Iterable[str] = ()) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(stages, 0.0)
        self.stage = ""

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.stage = stage
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def make_sample(image: np.ndarray, maps: Mapping[str, np.ndarray], cfg: BuildConfig,
                clock: Callable[[str], AbstractContextManager[None]] | None = None) -> Sample:
    """Run the recipe on one RGB uint8 portrait and its models' probability maps (name → HxW).

    ``clock(stage)`` times each stage (the shard passes its own, so the manifest's seconds and
    a failing stage's name come from here); default a fresh :class:`StageClock`.
    """
    own = StageClock()
    timed = own if clock is None else clock
    with timed("trimap"):
        probability = ensemble_map(maps)
        tri, half = make_trimap(image.shape, maps, probability, cfg)

    a = cfg.alpha
    with timed("alpha"):
        options = AlphaOptions(
            n_neighbors=a.n_neighbors, spatial_weight=a.spatial_weight,
            constraint_weight=math.inf if a.constraint_weight is None else a.constraint_weight,
            prior_weight=a.prior_weight, tol=a.tol, max_iter=a.max_iter,
            search_eps=a.search_eps, device=a.device, cf_weight=a.cf_weight)
        alpha, info = knn_alpha_with_info(
            image, tri, options, prior=probability,
            prior_weight=prior_weights(maps, a.prior_weight, a.prior_confidence))
        alpha8 = to_uint8(alpha)

    with timed("foreground"):
        # where the solve ran: a torch device (a GPU under "auto") or pymatting on the CPU
        fg, bg = estimate_foreground_background(image, alpha8,
                                                resolve_solver_device(a.device))

    with timed("quality"):
        figures = quality_figures(image, probability, tri, alpha8, fg, bg, half)
        row: dict[str, Any] = {
            "trimap_half_width": half,
            "unknown_fraction": trimaps.unknown_fraction(tri),
            "alpha_iterations": info.iterations,
            "alpha_residual": info.residual,
            **figures.as_row(),
        }
        if len(maps) > 1:
            share, box = model_disagreement(list(maps.values()))
            row["model_disagreement"], row["model_disagreement_box"] = share, box
        verdict = judge(row, cfg.quality.limits())
    return Sample(probability, tri, alpha8, fg, bg, info, row, verdict, own.seconds)
