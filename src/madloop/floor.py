"""The real-data floor: generation 0 of every sample-based metric.

A precision of 0.88 means little alone: a *perfect* model, one whose samples are real data, does
not score 1 on a finite evaluation sample either. So each arm also gets ``generation = 0`` rows:
the suites that compare the model's samples with real data (``samples = True``, and the text and
categorical suites) measure :class:`RealModel`, a stand-in whose samples are fresh draws from the
real source, with the same evaluation size and the same reference the generations get.

The stand-in draws a real sample of the evaluation size from the real source with a seed stream
of its own, ``SeedSequence(seed, spawn_key=(arm stream, 0, FLOOR))``: generation 0 is never a
trained generation, so no trajectory's random numbers change, and the floor is the same on any
executor and after a resume (it is recomputed, never checkpointed). Only metrics the arm itself
reports get a floor (a metric the stand-in cannot give, e.g. perplexity without a model's
likelihood, is left out).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.metrics.base import METRIC_SUITES

FLOOR = 4  # the child of generation 0's seed (DRAW, FIT, METRIC, GALLERY are 0..3)
#: suites without ``samples = True`` that still compare what a model gives with real data
COMPARING_SUITES = ("text", "categorical")


class RealModel:
    """A model whose samples are the real source's: what a perfect model would give.

    It answers what the sample-based suites ask of a model (``sample_points``, and
    ``probabilities`` for a categorical source) and has no moments of its own, so the suites
    measure its samples as they measure any model's."""

    sample_metrics = True

    def __init__(self, real: Any, replicates: int) -> None:
        self.real = real
        self.replicates = replicates
        if hasattr(real, "probabilities"):
            self.probabilities = self._probabilities
        if hasattr(real, "heldout_docs"):
            self.mean_nll = self._mean_nll

    def sample_points(self, n: int, *, bias: float = 1.0, rng: np.random.Generator) -> Any:
        return self.real.sample_points(n, replicates=self.replicates, rng=rng)

    def _probabilities(self) -> np.ndarray:
        p0 = np.asarray(self.real.probabilities(), dtype=float)
        return np.tile(p0, (self.replicates, 1))

    def _mean_nll(self, docs: Any) -> np.ndarray:
        return np.full(self.replicates, np.nan)  # the real law's likelihood is unknown


def floor_suites(model: Any, real: Any) -> list[Any]:
    """The suites measuring ``model`` that compare its samples with real data."""
    return [
        suite
        for suite in METRIC_SUITES.values()
        if (suite.samples or suite.name in COMPARING_SUITES) and suite.applies(model, real)
    ]


def real_floor(
    model: Any, real: Any, *, replicates: int, seed: int, stream: int, names: Any = None
) -> dict[str, np.ndarray]:
    """Generation 0: {metric: (R,)} of the sample-based suites that measure ``model``, measured
    on real samples (:class:`RealModel`); only metrics in ``names`` (the arm's) when given, and
    none that is NaN for every chain."""
    suites = floor_suites(model, real)
    if not suites:
        return {}
    stand_in = RealModel(real, replicates)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, 0, FLOOR)))
    out: dict[str, np.ndarray] = {}
    for suite in suites:
        extra = {"bias": 1.0} if suite.samples else {}
        out.update(suite.compute(stand_in, real, rng=rng, generation=0, **extra))
    keep = set(names) if names is not None else set(out)
    return {
        k: np.asarray(v, dtype=float).reshape(-1)
        for k, v in out.items()
        if k in keep and np.isfinite(np.asarray(v, dtype=float)).any()
    }


def engine_floor(engine: Any, names: Any = None) -> dict[str, np.ndarray]:
    """:func:`real_floor` of an engine: a :class:`~madloop.loop.Loop`'s model, or the first
    lineage's of a web pool (every lineage shares one real source)."""
    model = getattr(engine, "model", None)
    if model is None and getattr(engine, "lineages", None):
        model = engine.lineages[0].model
    if model is None:
        return {}
    return real_floor(
        model,
        engine.real,
        replicates=int(engine.replicates),
        seed=int(engine.seed),
        stream=int(engine.stream),
        names=names,
    )
