"""The metric-suite registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.registry import Registry


@dataclass(frozen=True)
class MetricSuite:
    """``applies(model, real)`` says whether the suite can measure this pair; ``compute(model,
    real, *, rng, generation)`` returns {metric name: values (R,)}.

    A suite with ``samples = True`` measures an evaluation sample it draws from the model with the
    metric ``rng`` (never the trajectory's); its ``compute`` also receives ``bias``, the loop's
    sampling bias, so it measures the samples the loop actually trains on.

    ``draws = False`` says ``compute`` never draws from ``rng`` (closed forms of a fit): when no
    suite that applies draws, :func:`evaluate` builds no generator."""

    name: str
    applies: Callable[[Any, Any], bool]
    compute: Callable[..., dict[str, np.ndarray]]
    samples: bool = False
    draws: bool = True


#: the metric suites, by name (the built-in ones register when :mod:`madloop.metrics` loads)
METRIC_SUITES: Registry[MetricSuite] = Registry("metric suite")
register_suite = METRIC_SUITES.register


def evaluate(
    model: Any,
    real: Any,
    *,
    rng: np.random.Generator | Callable[[], np.random.Generator],
    generation: int,
    bias: float = 1.0,
) -> dict[str, np.ndarray]:
    """Every applicable suite's metrics. ``rng`` is the metric generator, or a function that
    builds it, called once when the first suite that draws needs it (seeding a generator cost
    more than the closed-form Gaussian metrics' own share of a fast loop); the suites share it
    in registry order, so the numbers are those of a generator built up front."""
    out: dict[str, np.ndarray] = {}
    made: np.random.Generator | None = rng if isinstance(rng, np.random.Generator) else None
    for suite in METRIC_SUITES.values():
        if suite.applies(model, real):
            if made is None and suite.draws:
                made = rng()  # type: ignore[operator]
            extra = {"bias": bias} if suite.samples else {}
            out.update(suite.compute(model, real, rng=made, generation=generation, **extra))
    return out
