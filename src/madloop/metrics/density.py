"""Held-out log-likelihood of a density model (scikit-learn estimators and the like).

``heldout_loglik``: the mean log-density, under each chain's model, of fresh real points drawn
from the metric stream (never used for training): an estimate of E_real[log q_t], which falls as
the model drifts from the real law (its gap to the real law's own value is KL(real || model)).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.metrics.base import MetricSuite, register_suite

HELDOUT_POINTS = 1000


def _applies(model: Any, real: Any) -> bool:
    return hasattr(model, "heldout_loglik") and hasattr(real, "sample_points")


def _compute(model: Any, real: Any, *, rng: np.random.Generator, generation: int):
    X = real.sample_points(HELDOUT_POINTS, replicates=1, rng=rng).global_X()[0]
    return {"heldout_loglik": np.asarray(model.heldout_loglik(X), dtype=float)}


register_suite(MetricSuite("density", _applies, _compute))
