"""Distances between a fitted Gaussian N(μ_t, Σ_t) and the real N(μ_0, Σ_0), in closed form.

All take lower-triangular covariance factors (Σ = L L^T) and stay finite and accurate when Σ_t is
near-singular: traces are squared Frobenius norms, log-dets sums of log-diagonals, and the W2 cross
term a nuclear norm, so no covariance is ever re-factorised.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.capabilities import Moments, satisfies
from madloop.linalg import log_det, solve_lower
from madloop.metrics.base import MetricSuite, register_suite

GAUSSIAN_METRICS = (
    "mean_error_sq",
    "trace_ratio",
    "log_det_change",
    "wasserstein2",
    "kl_divergence",
)


def gaussian_metrics(
    mean: np.ndarray, factor: np.ndarray, mean0: np.ndarray, factor0: np.ndarray
) -> dict[str, np.ndarray]:
    """The five moment metrics for R fitted Gaussians (mean (R, d), factor (R, d, d)) against the
    real one (mean0 (d,), factor0 (d, d)).

    - ``mean_error_sq`` = ||μ_t - μ_0||²
    - ``trace_ratio`` = tr Σ_t / tr Σ_0
    - ``log_det_change`` = log det Σ_t - log det Σ_0 (-inf when Σ_t is singular)
    - ``wasserstein2`` = W2(N(μ_t, Σ_t), N(μ_0, Σ_0)); the cross term tr (Σ_0^½ Σ_t Σ_0^½)^½ equals
      the nuclear norm of L_0^T L_t
    - ``kl_divergence`` = KL(N(μ_0, Σ_0) || N(μ_t, Σ_t)) (+inf when Σ_t is singular)
    """
    diff = mean - mean0
    mean_error_sq = np.einsum("ri,ri->r", diff, diff)
    tr = np.einsum("rij,rij->r", factor, factor)
    tr0 = float(np.sum(factor0 * factor0))
    ld0 = float(log_det(factor0))
    ld = log_det(factor)
    finite = np.isfinite(factor).all(axis=(1, 2))  # a fit on < 2 points has a NaN covariance
    if finite.all():
        nuclear = np.linalg.svd(factor0.T @ factor, compute_uv=False).sum(axis=-1)
    else:  # report NaN for those chains rather than fail the SVD for all of them
        nuclear = np.full(mean.shape[0], np.nan)
        if finite.any():
            M = factor0.T @ factor[finite]
            nuclear[finite] = np.linalg.svd(M, compute_uv=False).sum(axis=-1)
    with np.errstate(invalid="ignore"):
        w2_sq = np.maximum(mean_error_sq + tr + tr0 - 2.0 * nuclear, 0.0)

    d = mean.shape[-1]
    kl = np.where(finite, np.inf, np.nan)
    ok = finite & np.isfinite(ld) & (np.abs(np.diagonal(factor, axis1=1, axis2=2)).min(axis=1) > 0)
    if ok.any():
        rhs = np.concatenate(
            [np.broadcast_to(factor0, (ok.sum(), d, d)), diff[ok][:, :, None]], axis=2
        )
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            sol = _solve(factor[ok], rhs)  # L_t^{-1} [L_0 | μ_t - μ_0]
            trace_term = np.einsum("rij,rij->r", sol[:, :, :d], sol[:, :, :d])
            maha = np.einsum("ri,ri->r", sol[:, :, d], sol[:, :, d])
            value = 0.5 * (trace_term + maha - d + ld[ok] - ld0)
        # a factor so collapsed that L_t^{-1} overflows (inf - inf = NaN): the divergence is +inf
        kl[ok] = np.where(np.isnan(value), np.inf, value)
    return {
        "mean_error_sq": mean_error_sq,
        "trace_ratio": tr / tr0,
        "log_det_change": ld - ld0,
        "wasserstein2": np.sqrt(w2_sq),
        "kl_divergence": kl,
    }


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched solve; a factor whose diagonal underflowed to subnormals (bias λ -> 0 collapses
    Σ_t geometrically) can be singular to LAPACK though positive: its solution is +inf."""
    try:
        return solve_lower(a, b)
    except np.linalg.LinAlgError:  # LAPACK (d > 48) calls a subnormal diagonal singular
        out = np.empty(b.shape)  # (R, d, k): a is (R, d, d)
        for i in range(a.shape[0]):
            try:
                out[i] = np.linalg.solve(a[i], b[i])
            except np.linalg.LinAlgError:
                out[i] = np.inf
        return out


def _applies(model: Any, real: Any) -> bool:
    return satisfies(model, Moments) and satisfies(real, Moments)


def _compute(model: Any, real: Any, *, rng: np.random.Generator, generation: int):
    mean, factor = model.moments()
    mean0, factor0 = real.moments()
    return gaussian_metrics(mean, factor, mean0, factor0)


register_suite(MetricSuite("gaussian-moments", _applies, _compute))
