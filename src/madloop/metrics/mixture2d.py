"""Metrics for 2-D toys with known modes (ring, grid, moons), from an evaluation sample.

Per replicate, from ``real.eval_size`` samples drawn with the metric generator and the loop's bias:

- ``modes_covered``: modes holding at least ``mode_share`` x (n / K) of the samples within 3σ of
  them (each sample counts for its nearest mode);
- ``high_quality``: the share of samples within 3σ of some mode;
- ``precision``, ``recall``, ``density``, ``coverage`` (k = 5) against as many fresh real points;
- the Gaussian moment metrics (mean_error_sq, trace_ratio, log_det_change, wasserstein2,
  kl_divergence) of the samples' mean and covariance against the real law's, unless the model
  reports its own moments (then the ``gaussian-moments`` suite measures them exactly).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.capabilities import Moments, satisfies
from madloop.linalg import lower_factor
from madloop.metrics.base import MetricSuite, register_suite
from madloop.metrics.gaussian import gaussian_metrics
from madloop.metrics.manifold import prdc

MIXTURE_METRICS = ("modes_covered", "high_quality", "precision", "recall", "density", "coverage")


def mode_metrics(distance: np.ndarray, mode_share: float) -> dict[str, float]:
    """From distances (n, K) of n samples to K modes in units of σ: modes covered and the
    high-quality share."""
    n, K = distance.shape
    near = distance.min(axis=1) < 3.0  # (n,)
    counts = np.bincount(distance.argmin(axis=1)[near], minlength=K)  # (K,)
    return {
        "modes_covered": float((counts >= mode_share * n / K).sum()),
        "high_quality": float(near.mean()),
    }


def _applies(model: Any, real: Any) -> bool:
    # duck-typed (metrics do not import data): a source with known modes, e.g. data/toy2d.py
    return all(hasattr(real, a) for a in ("mode_distance", "mode_share", "eval_size")) and hasattr(
        model, "sample_points"
    )


def _compute(
    model: Any, real: Any, *, rng: np.random.Generator, generation: int, bias: float
) -> dict[str, np.ndarray]:
    n = real.eval_size
    X = model.sample_points(n, bias=bias, rng=rng).global_X()  # (R, n, 2)
    R = X.shape[0]
    ref = real.sample_points(n, replicates=R, rng=rng).X  # (R, n, 2)
    rows = []
    for r in range(R):
        row = mode_metrics(real.mode_distance(X[r]), real.mode_share)
        row.update(prdc(ref[r], X[r], k=5))
        rows.append(row)
    out = {k: np.array([row[k] for row in rows]) for k in rows[0]}
    if not satisfies(model, Moments):
        mean0, factor0 = real.moments()
        mean = X.mean(axis=1)  # (R, 2)
        cov = np.stack([np.cov(x, rowvar=False) for x in X])  # (R, 2, 2)
        factor = np.stack([lower_factor(c) for c in cov])
        out.update(gaussian_metrics(mean, factor, mean0, factor0))
    return out


register_suite(MetricSuite("mixture2d", _applies, _compute, samples=True))
