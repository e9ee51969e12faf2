"""Sample-based metrics for any model whose samples are vectors (your own family, an estimator
without moments): measured on an evaluation sample drawn with the metric ``rng`` and the loop's
bias, against fresh real points.

Per replicate:
- the Gaussian moment metrics (``mean_error_sq``, ``trace_ratio``, ``log_det_change``,
  ``wasserstein2`` (W2² between the Gaussian fits of samples and real law), ``kl_divergence``)
  of the samples' mean and covariance against the real law's (its exact moments where the source
  knows them, else a reference sample's); skipped when the model reports its own moments (the
  ``gaussian-moments`` suite measures them exactly);
- ``precision``, ``recall``, ``density``, ``coverage`` (k = 5, :func:`~.manifold.prdc`);
- ``mmd``: the squared maximum mean discrepancy (unbiased) with an RBF kernel whose bandwidth is
  the median distance of the pooled points (the median heuristic).

The suite applies to chains that ask for it (``sample_metrics = True``, e.g. every family of
:func:`madloop.register_family`) and, as a fallback, to any point-sampling model no other suite
measures. Samples that are not real-valued vectors (tokens, labels) are skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.capabilities import Moments, satisfies
from madloop.linalg import lower_factor
from madloop.metrics.base import METRIC_SUITES, MetricSuite, register_suite
from madloop.metrics.gaussian import gaussian_metrics
from madloop.metrics.manifold import prdc

EVAL_POINTS = 500  # samples per replicate (a source's ``eval_size`` where it has one, capped)
SAMPLE_METRICS = ("precision", "recall", "density", "coverage", "mmd")


def mmd_rbf(X: np.ndarray, Y: np.ndarray) -> float:
    """Unbiased squared MMD of X (n, d) and Y (m, d), RBF kernel exp(-|x-y|² / (2 h²)) with h the
    median pairwise distance of the pooled points."""
    Z = np.concatenate([X, Y])
    from scipy.spatial.distance import cdist  # here: scipy.spatial takes 0.3 s to import

    d2 = cdist(Z, Z, "sqeuclidean")
    n, m = len(X), len(Y)
    h2 = float(np.median(d2[np.triu_indices(n + m, k=1)]))
    K = np.exp(-d2 / (2 * h2)) if h2 > 0 else np.ones_like(d2)
    kxx, kyy, kxy = K[:n, :n], K[n:, n:], K[:n, n:]
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def _others_apply(model: Any, real: Any) -> bool:
    return any(
        suite.applies(model, real) for suite in METRIC_SUITES.values() if suite.name != "samples"
    )


def _applies(model: Any, real: Any) -> bool:
    if not (hasattr(model, "sample_points") and hasattr(real, "sample_points")):
        return False
    if hasattr(real, "mode_distance"):  # the 2-D toys' own suite measures the same samples
        return False
    return bool(getattr(model, "sample_metrics", False)) or not _others_apply(model, real)


def _compute(
    model: Any, real: Any, *, rng: np.random.Generator, generation: int, bias: float
) -> dict[str, np.ndarray]:
    n = min(int(getattr(real, "eval_size", EVAL_POINTS)), EVAL_POINTS)
    X = np.asarray(model.sample_points(n, bias=bias, rng=rng).global_X())
    if X.ndim != 3 or X.dtype.kind != "f":  # (R, n, d) real vectors only
        return {}
    R = X.shape[0]
    ref = np.asarray(real.sample_points(n, replicates=R, rng=rng).global_X(), dtype=float)
    rows = []
    for r in range(R):
        row = prdc(ref[r], X[r], k=5)
        row["mmd"] = mmd_rbf(X[r], ref[r])
        rows.append(row)
    out = {k: np.array([row[k] for row in rows]) for k in rows[0]}
    if not (satisfies(model, Moments) and satisfies(real, Moments)):
        if satisfies(real, Moments):
            mean0, factor0 = real.moments()
        else:
            pooled = ref.reshape(-1, ref.shape[-1])
            mean0 = pooled.mean(axis=0)
            factor0 = lower_factor(np.atleast_2d(np.cov(pooled, rowvar=False)))
        mean = X.mean(axis=1)
        factor = np.stack([lower_factor(np.atleast_2d(np.cov(x, rowvar=False))) for x in X])
        out.update(gaussian_metrics(mean, factor, np.asarray(mean0), np.asarray(factor0)))
    return out


register_suite(MetricSuite("samples", _applies, _compute, samples=True))
