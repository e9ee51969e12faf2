"""Factored Gaussian linear algebra shared by the Gaussian model, the Gaussian source and metrics.

Covariances are carried as lower-triangular factors L (Sigma = L L^T) and never re-factorised:
products of triangular factors stay triangular, and log det Sigma = 2 sum log|diag L| is exact to
rounding however far Sigma has collapsed (``shared/design/gaussian-exact.md``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from madloop.types import Stats


@functools.lru_cache(maxsize=64)
def _bartlett_plan(dof: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The chi-square degrees of freedom halved (the Gamma shapes of the diagonal, first
    ``rank = min(dof, dim)`` entries) and the flat indices of the free sub-diagonal entries.
    Built once per (dof, dim): a generation calls :func:`bartlett` with the same ones."""
    rank = max(min(dof, dim), 0)
    shape = (dof - np.arange(rank)) / 2.0
    rows, cols = np.tril_indices(dim, -1)
    keep = cols < rank
    lower = rows[keep] * dim + cols[keep]
    shape.setflags(write=False)  # cached: shared by every call
    lower.setflags(write=False)
    return shape, lower


def bartlett(dof: int, dim: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Lower-triangular A (R, d, d) with A A^T ~ Wishart(I_d, dof) (Bartlett decomposition).

    A_ii = sqrt(chi2_{dof-i}) and A_ij ~ N(0, 1) for j < i. When dof < d the Wishart is singular
    (rank dof): rows i >= dof have no diagonal and only dof free entries, so the factor has exact
    zeros on its diagonal and log det = -inf, by design rather than by failure.
    """
    shape, lower = _bartlett_plan(dof, dim)
    rank = shape.size
    A = np.zeros((replicates, dim * dim))
    if rank > 0:
        # chi2_k = 2 Gamma(k/2): the same law as rng.chisquare, at about half its cost
        chi2 = rng.standard_gamma(shape, size=(replicates, rank))
        chi2 *= 2.0  # exact (a doubling), like 2.0 * chi2
        # the first rank diagonal entries, flat i (d + 1): a strided view, written in place
        np.sqrt(chi2, out=A[:, : rank * (dim + 1) : dim + 1])
    A[:, lower] = rng.standard_normal((replicates, lower.size))
    return A.reshape(replicates, dim, dim)


def draw_stats(
    mean: np.ndarray,
    factor: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (R, d) and scatter factor (R, d, d) of n draws from N(mean, scale * factor factor^T),
    without drawing the points: x_bar ~ N(mean, scale Sigma / n), S ~ Wishart(scale Sigma, n - 1).
    """
    R, d = mean.shape
    if n <= 0:  # an empty batch: no statistics (merges drop it); draw nothing
        return np.zeros((R, d)), np.zeros((R, d, d))
    z = rng.standard_normal((R, d, 1))
    # scalars by math.sqrt: correctly rounded like np.sqrt, without a numpy scalar per call
    root = math.sqrt(scale)
    shift = np.matmul(factor, z).reshape(R, d)
    shift *= root / math.sqrt(n)
    shift += mean  # = mean + c (factor z): addition commutes exactly
    A = bartlett(n - 1, d, R, rng)
    if root != 1.0:
        A *= root
    return shift, np.matmul(factor, A)


def stats_from_points(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (R, d) and a lower-triangular scatter factor (R, d, d) of points X (R, m, d).

    Fast route (m > d): the Cholesky factor of the scatter X^T X - m x̄ x̄^T, accepted only when
    that subtraction cancels few digits (the batch's mean is small against its spread, as it is
    for points in a model's whitened frame) and the factor is well conditioned; otherwise the
    centred scatter. Accurate route (rank-deficient or ill-conditioned batches): centring by the
    Helmert contrasts gives exactly m - 1 rows whose Gram matrix is the scatter, so a batch with
    m <= d has exact zeros on its factor's diagonal, and a QR of them gives the factor without
    squaring the condition number.
    """
    R, m, d = X.shape
    if m == 0:
        return np.zeros((R, d)), np.zeros((R, d, d))
    # a (1, m) @ (R, m, d) product: BLAS, several times faster than a strided X.mean(axis=1)
    mean = np.matmul(np.full((1, m), 1.0 / m), X)[:, 0, :]
    if m < 2:
        return mean, np.zeros((R, d, d))
    if m - 1 >= d:
        gram = np.matmul(np.swapaxes(X, 1, 2), X)  # (R, d, d)
        shift = m * mean[:, :, None] * mean[:, None, :]
        scatter = gram - shift
        diag = np.diagonal(scatter, axis1=1, axis2=2)
        # cancellation loses log10(shift/scatter) digits: allow at most 3 of them
        if not np.all(np.diagonal(shift, axis1=1, axis2=2) <= 1e3 * diag):
            Xc = X - mean[:, None, :]
            scatter = np.matmul(np.swapaxes(Xc, 1, 2), Xc)
        try:
            L = np.linalg.cholesky(scatter)
            # the Gram route loses accuracy as cond(S)^2: accept it only when well conditioned
            ld = np.abs(np.diagonal(L, axis1=1, axis2=2))
            if np.all(ld.min(axis=1) > 1e-3 * ld.max(axis=1)):
                return mean, L
        except np.linalg.LinAlgError:
            pass
    # Helmert row k (k = 1..m-1): (x_0 + ... + x_{k-1} - k x_k) / sqrt(k (k + 1))
    k = np.arange(1, m, dtype=float)
    prefix = np.cumsum(X, axis=1)[:, :-1, :]
    Y = (prefix - k[None, :, None] * X[:, 1:, :]) / np.sqrt(k * (k + 1))[None, :, None]
    r = np.linalg.qr(Y, mode="r")  # (R, min(m-1, d), d), upper trapezoidal
    F = np.zeros((R, d, d))
    F[:, : r.shape[1], :] = r
    return mean, np.swapaxes(F, 1, 2)


def weighted_stats_from_points(
    X: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean (R, d), a lower-triangular factor (R, d, d) of the weighted scatter
    sum w_i (x_i - mean)(x_i - mean)^T, V1 = sum w_i and V2 = sum w_i^2 (R,), for points X
    (R, m, d) with weights (R, m).

    The factor comes from a QR of the centred rows scaled by sqrt(w_i), never from forming the
    scatter: like :func:`stats_from_points`' accurate route, it does not square the condition
    number (points in a model's whitened frame stay exact to rounding).
    """
    R, m, d = X.shape
    weight = np.asarray(weight, dtype=float)
    v1 = weight.sum(axis=1)
    v2 = (weight * weight).sum(axis=1)
    mean = np.matmul(weight[:, None, :], X)[:, 0, :] / v1[:, None]
    rows = np.sqrt(weight)[:, :, None] * (X - mean[:, None, :])
    r = np.linalg.qr(rows, mode="r")  # (R, min(m, d), d), upper trapezoidal
    F = np.zeros((R, d, d))
    F[:, : r.shape[1], :] = r
    # a positive diagonal makes the factor the Cholesky factor, so draws x = μ + L z do not
    # depend on the QR's sign choices (equal weights reproduce the unweighted chain's numbers)
    sign = np.where(np.diagonal(F, axis1=1, axis2=2) < 0, -1.0, 1.0)
    return mean, np.swapaxes(F * sign[:, :, None], 1, 2), v1, v2


def to_stats(X: np.ndarray, provenance: dict | None = None) -> Stats:
    mean, factor = stats_from_points(X)
    count = np.full(X.shape[0], X.shape[1])
    return Stats(count, mean, factor, dict(provenance or {}))


def log_det(factor: np.ndarray) -> np.ndarray:
    """log det (L L^T) for a batch of triangular factors; -inf where singular."""
    with np.errstate(divide="ignore"):
        return 2.0 * np.log(np.abs(np.diagonal(factor, axis1=-2, axis2=-1))).sum(axis=-1)


def lower_factor(cov: np.ndarray) -> np.ndarray:
    """A lower-triangular factor of a positive semi-definite matrix (eigen route when singular)."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(cov)
        root = V * np.sqrt(np.clip(w, 0.0, None))
        r = np.linalg.qr(root.T, mode="r")
        return r.T


def solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    """L^{-1} B for a batch of lower-triangular L (R, d, d) and B (R, d, k), by forward
    substitution vectorised over the batch (LAPACK's general solve costs a call per matrix).
    Large d goes to LAPACK, where the per-row Python step would dominate."""
    R, d, _ = L.shape
    if d > 48:
        return np.linalg.solve(L, B)
    X = np.empty(np.broadcast_shapes(B.shape, (R, d, B.shape[-1])))
    for i in range(d):
        acc = B[:, i, :]
        if i:
            acc = acc - np.matmul(L[:, i : i + 1, :i], X[:, :i, :])[:, 0, :]
        X[:, i, :] = acc / L[:, i, i, None]
    return X
