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
    rest = mean_error_sq + tr + tr0  # W2² = rest - 2 nuclear
    if finite.all():
        nuclear = _nuclear(factor0.T @ factor, rest)
    else:  # report NaN for those chains rather than fail the decomposition for all of them
        nuclear = np.full(mean.shape[0], np.nan)
        if finite.any():
            nuclear[finite] = _nuclear(factor0.T @ factor[finite], rest[finite])
    with np.errstate(invalid="ignore"):
        w2_sq = np.maximum(rest - 2.0 * nuclear, 0.0)

    d = mean.shape[-1]
    kl = np.where(finite, np.inf, np.nan)
    ok = finite & np.isfinite(ld) & (np.abs(np.diagonal(factor, axis1=1, axis2=2)).min(axis=1) > 0)
    if ok.any():
        # the usual case skips the masked copies: the same values in the same (C) layout that
        # the copy would have, so the solve's BLAS calls and bits are the same
        every = bool(ok.all()) and factor.flags.c_contiguous
        rhs = np.concatenate(
            [
                np.broadcast_to(factor0, (ok.sum(), d, d)),
                (diff if every else diff[ok])[:, :, None],
            ],
            axis=2,
        )
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            sol = _solve(factor if every else factor[ok], rhs)  # L_t^{-1} [L_0 | μ_t - μ_0]
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


#: the Gram route's worst-case error in W2² may be at most this fraction of W2² (W2 relative
#: error <= half of it), or at most GRAM_SVD_PARITY times the SVD's own worst case; else the
#: chain's cross term comes from the SVD
GRAM_W2_REL = 1e-12
GRAM_SVD_PARITY = 10.0
_EPS = float(np.finfo(float).eps)


def _nuclear(M: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Nuclear norms of M (R, d, d), the W2 cross terms; ``rest`` (R,) = ||μ_t - μ_0||² +
    tr Σ_t + tr Σ_0, so that W2² = rest - 2 nuclear.

    Gram route: σ_i = sqrt(λ_i(M^T M)), from ``eigvalsh`` at about half the cost of the SVD.
    Squaring costs accuracy in small singular values: the eigenvalues carry an absolute error
    |δλ_i| <= ||δG|| <= c eps λ_max (forming G and the symmetric solver, c ~ d), so
    |δσ_i| <= c eps λ_max / σ_i where the SVD has c eps σ_max, and the error in W2² = rest -
    2 Σ σ_i is at most ``bound`` = c eps λ_max Σ_i 1/σ_i (first order; with λ_i <= |δλ_i| the
    square root's error sqrt|δλ_i| is still below |δλ_i|/σ_i). A chain keeps the Gram route
    when that bound is below GRAM_W2_REL W2² (W2 keeps 12 correct digits whatever its
    conditioning), or within GRAM_SVD_PARITY times the SVD's own bound 2 c d eps σ_max (M well
    conditioned: mean σ_max/σ_i <= 2 GRAM_SVD_PARITY, so Σ_t ≈ Σ_0 at large n, where W2²
    cancels, is as accurate either way); the rest (a near-singular or collapsed Σ_t, an
    ill-conditioned Σ_0 with W2² small) use the SVD.
    """
    d = M.shape[-1]
    try:
        lam = np.linalg.eigvalsh(np.matmul(np.swapaxes(M, 1, 2), M))
    except np.linalg.LinAlgError:  # an overflowed Gram matrix: leave every chain to the SVD
        return np.linalg.svd(M, compute_uv=False).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sigma = np.sqrt(np.maximum(lam, 0.0))
        nuclear = sigma.sum(axis=-1)
        bound = (d * _EPS) * lam[:, -1] * (1.0 / sigma).sum(axis=-1)
        svd_bound = 2.0 * d * (d * _EPS) * sigma[:, -1]
        # NaN (an overflowed G, 0 * inf for M = 0) compares False: those go to the SVD too
        gram_ok = (bound <= GRAM_W2_REL * (rest - 2.0 * nuclear)) | (
            bound <= GRAM_SVD_PARITY * svd_bound
        )
    if not gram_ok.all():
        redo = ~gram_ok
        nuclear[redo] = np.linalg.svd(M[redo], compute_uv=False).sum(axis=-1)
    return nuclear


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


register_suite(MetricSuite("gaussian-moments", _applies, _compute, draws=False))
