"""How the single-chain loop gets a synthetic batch when the config transforms it: the previous
model's samples, curated by a reward (:mod:`madloop.curation`), then corrected towards the real
law (:mod:`madloop.correction`). The loop calls :meth:`SyntheticDraw.draw` where it would sample
the model and adds :meth:`SyntheticDraw.metrics` to a generation's metrics; it knows neither.
Nothing here holds state beyond the config, so checkpoints and resume need nothing new."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.correction import Correction, build_correction
from madloop.curation import Curation, build_curation
from madloop.types import Points


@dataclass(frozen=True)
class SyntheticDraw:
    curation: Curation | None = None
    correction: Correction | None = None

    def check(self, model: Any, real: Any) -> str | None:
        """Why the built model and source cannot run this (the reward cannot score them)."""
        if self.curation is None:
            return None
        return self.curation.scorer.problem(model, real)

    def draw(
        self, model: Any, real: Any, n: int, *, bias: float, rng: np.random.Generator
    ) -> Points:
        if self.curation is not None:
            points = self.curation.draw(model, real, n, bias=bias, rng=rng)
        else:
            points = model.sample_points(n, bias=bias, rng=rng)
        if self.correction is not None:
            points = self.correction.apply(points, real, rng)
        return points

    def metrics(
        self, model: Any, real: Any, *, bias: float, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        if self.curation is None:
            return {}
        return self.curation.metrics(model, real, bias=bias, rng=rng)


def build_synthetic(loop: Any, source: str) -> SyntheticDraw | None:
    """From a validated ``[loop]`` table (None when it neither curates nor corrects)."""
    curation = build_curation(getattr(loop, "curation", None))
    correction = build_correction(getattr(loop, "correction", None), source)
    if curation is None and correction is None:
        return None
    return SyntheticDraw(curation, correction)
