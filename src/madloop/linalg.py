"""Factored Gaussian linear algebra shared by the Gaussian model, the Gaussian source and metrics.

Covariances are carried as lower-triangular factors L (Sigma = L L^T) and never re-factorised:
products of triangular factors stay triangular, and log det Sigma = 2 sum log|diag L| is exact to
rounding however far Sigma has collapsed (``shared/design/gaussian-exact.md``).
"""

from __future__ import annotations

import numpy as np

from madloop.types import Stats


def bartlett(dof: int, dim: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Lower-triangular A (R, d, d) with A A^T ~ Wishart(I_d, dof) (Bartlett decomposition).

    A_ii = sqrt(chi2_{dof-i}) and A_ij ~ N(0, 1) for j < i. When dof < d the Wishart is singular
    (rank dof): rows i >= dof have no diagonal and only dof free entries, so the factor has exact
    zeros on its diagonal and log det = -inf, by design rather than by failure.
    """
    A = np.zeros((replicates, dim, dim))
    rank = min(dof, dim)
    i = np.arange(rank)
    if rank > 0:
        A[:, i, i] = np.sqrt(rng.chisquare(dof - i, size=(replicates, rank)))
    rows, cols = np.tril_indices(dim, -1)
    keep = cols < rank
    rows, cols = rows[keep], cols[keep]
    A[:, rows, cols] = rng.standard_normal((replicates, rows.size))
    return A


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
    z = rng.standard_normal((R, d))
    root = np.sqrt(scale)
    # n = 0 (fresh-data with real_size = 0): an empty batch, dropped by Stats.merge
    xbar = mean + root / np.sqrt(max(n, 1)) * np.einsum("rij,rj->ri", factor, z)
    A = bartlett(n - 1, d, R, rng)
    return xbar, root * (factor @ A)


def stats_from_points(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (R, d) and a lower-triangular scatter factor (R, d, d) of points X (R, m, d).

    Centring by the Helmert contrasts gives exactly m - 1 rows whose Gram matrix is the scatter,
    so a rank-deficient batch (m <= d) has exact zeros on its factor's diagonal. The factor comes
    from a Cholesky of the Gram matrix when the batch is well conditioned (fast) and from a QR of
    the contrasts otherwise (accurate).
    """
    R, m, d = X.shape
    mean = X.mean(axis=1)
    if m < 2:
        return mean, np.zeros((R, d, d))
    # Helmert row k (k = 1..m-1): (x_0 + ... + x_{k-1} - k x_k) / sqrt(k (k + 1))
    k = np.arange(1, m, dtype=float)
    prefix = np.cumsum(X, axis=1)[:, :-1, :]
    Y = (prefix - k[None, :, None] * X[:, 1:, :]) / np.sqrt(k * (k + 1))[None, :, None]
    if m - 1 >= d:
        gram = np.swapaxes(Y, 1, 2) @ Y
        try:
            L = np.linalg.cholesky(gram)
            # the Gram route loses accuracy as cond(S)^2: accept it only when well conditioned
            diag = np.abs(np.diagonal(L, axis1=1, axis2=2))
            if np.all(diag.min(axis=1) > 1e-3 * diag.max(axis=1)):
                return mean, L
        except np.linalg.LinAlgError:
            pass
    r = np.linalg.qr(Y, mode="r")  # (R, min(m-1, d), d), upper trapezoidal
    F = np.zeros((R, d, d))
    F[:, : r.shape[1], :] = r
    return mean, np.swapaxes(F, 1, 2)


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
