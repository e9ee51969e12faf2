"""The metric-suite registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MetricSuite:
    """``applies(model, real)`` says whether the suite can measure this pair; ``compute(model,
    real, *, rng, generation)`` returns {metric name: values (R,)}."""

    name: str
    applies: Callable[[Any, Any], bool]
    compute: Callable[..., dict[str, np.ndarray]]


METRIC_SUITES: dict[str, MetricSuite] = {}


def register_suite(suite: MetricSuite) -> MetricSuite:
    METRIC_SUITES[suite.name] = suite
    return suite


def evaluate(
    model: Any, real: Any, *, rng: np.random.Generator, generation: int
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for suite in METRIC_SUITES.values():
        if suite.applies(model, real):
            out.update(suite.compute(model, real, rng=rng, generation=generation))
    return out
