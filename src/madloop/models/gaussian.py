"""The multivariate Gaussian family: the case of the MAD analysis that can be done exactly.

Fit: mean = sample mean, covariance = unbiased sample covariance (divide by n - 1) or the MLE
(divide by n); with ``fit = "mean"`` only the mean is learned and the model samples with the real
source's covariance. Weighted training sets (``loop.real_weight``) give the weighted mean and the
weighted scatter divided by V1 - V2/V1 (reliability weights, unbiased) or by V1 (MLE), where
V1 = sum w_i and V2 = sum w_i^2. Sampling bias λ in (0, 1] samples N(μ, λΣ), the Gaussian
truncation trick of Alemohammad et al. (2024). R replicate chains are held as arrays with a
leading axis R, so neither mode has a Python loop over chains.

Two modes, one law:
- ``sample`` draws the points and fits them;
- ``exact`` draws the fitted statistics directly (mean normal, scatter Wishart by Bartlett), so a
  generation costs O(d^3) whatever its size. See ``shared/design/gaussian-exact.md``.
The covariance is carried as a lower-triangular factor ``cov_factor_`` (Σ = L L^T): collapse
over thousands of generations stays accurate and log det Σ = 2 Σ log|L_ii| never overflows.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Self

import numpy as np

from madloop.config import DataConfig, ModelConfig
from madloop.linalg import draw_stats, lower_factor, stats_from_points, weighted_stats_from_points
from madloop.models.base import FamilySpec, check_is_fitted, register_family
from madloop.types import SYNTHETIC, Frame, Points, Stats


class GaussianConfig(ModelConfig):
    family: Literal["gaussian"] = "gaussian"
    mode: Literal["exact", "sample"] = "exact"
    covariance_estimator: Literal["unbiased", "mle"] = "unbiased"
    #: what is learned: both moments, or the mean only (sampling with the real covariance)
    fit: Literal["mean-and-covariance", "mean"] = "mean-and-covariance"
    min_train_size: ClassVar[int] = 2  # a covariance needs two points
    accepts_weights: ClassVar[bool] = True  # fits weighted points and weighted statistics

    def data_problem(self, data: DataConfig) -> str | None:
        """``fit = "mean"`` samples with the real covariance: only a Gaussian source knows it."""
        if self.fit == "mean" and data.source != "gaussian":
            return (
                f"model.fit = 'mean' samples with the real source's covariance, which only "
                f"data.source = 'gaussian' has (got '{data.source}'); use model.fit = "
                "'mean-and-covariance'"
            )
        return None

    def state_size(self, event_size: int) -> int:
        """Floats of learned state per replicate (mean, covariance factor, count)."""
        return event_size * event_size + event_size + 1


def bias_knob(lam: float) -> dict[str, float]:
    """The covariance scale for the paper's bias λ: ``{"variance_scale": λ}``."""
    return GaussianConfig.bias_knob.knob(lam)


class GaussianFamily:
    """R replicate Gaussian models.

    Parameters
    ----------
    replicates : int, default=1
        Number of independent chains held together.
    covariance_estimator : {"unbiased", "mle"}, default="unbiased"
        Divide the scatter matrix by n - 1 or by n (weighted: by V1 - V2/V1 or by V1).
    covariance_factor : ndarray of shape (d, d), optional
        A fixed lower covariance factor: when given, only the mean is fitted (``fit = "mean"``)
        and the model samples with this covariance.

    Attributes
    ----------
    mean_ : ndarray of shape (R, d)
    cov_factor_ : ndarray of shape (R, d, d)
        Lower-triangular L with covariance_ = L L^T. Zeros on its diagonal mean a singular fit
        (n <= d): log det = -inf, reported as such.
    n_samples_ : ndarray of shape (R,)
        Training-set size of each chain's last fit.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> model = GaussianFamily(replicates=2).fit(rng.standard_normal((2, 50, 3)))
    >>> model.sample(4, bias=0.5, rng=rng).shape
    (2, 4, 3)
    """

    def __init__(
        self,
        replicates: int = 1,
        *,
        covariance_estimator: Literal["unbiased", "mle"] = "unbiased",
        covariance_factor: np.ndarray | None = None,
    ) -> None:
        self.replicates = replicates
        self.covariance_estimator = covariance_estimator
        self.covariance_factor = covariance_factor
        self.mean_: np.ndarray | None = None
        self.cov_factor_: np.ndarray | None = None
        self.n_samples_: np.ndarray | None = None

    # -- scikit-learn style ---------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: None = None, sample_weight: np.ndarray | None = None) -> Self:
        """Fit on X of shape (R, n, d), or (n, d) for a single chain; ``sample_weight`` (R, n)
        or (n,) gives a weighted fit."""
        X = np.asarray(X, dtype=float)
        if X.ndim == 2:
            X = X[None]
        if X.ndim != 3 or X.shape[1] < 2:
            raise ValueError(f"X must have shape (R, n >= 2, d), got {X.shape}")
        if sample_weight is not None:
            weight = np.broadcast_to(np.asarray(sample_weight, dtype=float), X.shape[:2])
            mean, factor, v1, v2 = weighted_stats_from_points(X, weight)
            return self._set(mean, factor, np.full(X.shape[0], X.shape[1]), weights=(v1, v2))
        mean, factor = stats_from_points(X)
        return self._set(mean, factor, np.full(X.shape[0], X.shape[1]))

    def sample(
        self, n: int, *, bias: float = 1.0, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """n draws per chain from N(μ, bias·Σ), shape (R, n, d)."""
        rng = np.random.default_rng(rng)
        return self.sample_points(n, bias=bias, rng=rng).global_X()

    @property
    def covariance_(self) -> np.ndarray:
        check_is_fitted(self, "cov_factor_")
        return self.cov_factor_ @ np.swapaxes(self.cov_factor_, 1, 2)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (R, d), lower covariance factor (R, d, d)) for the moment metrics."""
        check_is_fitted(self, "cov_factor_")
        return self.mean_, self.cov_factor_

    # -- the loop's interface -------------------------------------------------------------------
    def fit_points(self, points: Points, *, rng: np.random.Generator | None = None) -> Self:
        """Fit on a batch; points kept in a model's frame are fitted in that frame (exactly).
        Weighted points (``points.weight``) get the weighted fit."""
        weights = None
        if points.weight is None:
            mean, factor = stats_from_points(points.X)
        else:
            mean, factor, v1, v2 = weighted_stats_from_points(points.X, points.weight)
            weights = (v1, v2)
        if points.frame is not None:
            factor = points.frame.factor @ factor
            mean = points.frame.to_global(mean[:, None, :])[:, 0, :]
        return self._set(mean, factor, np.full(points.replicates, points.size), weights=weights)

    def sample_points(self, n: int, *, bias: float, rng: np.random.Generator) -> Points:
        """Draws as whitened deviations in the frame of N(μ, bias Σ): x = μ + (sqrt(bias) L) z.

        The bias goes into the frame's factor, not into the points: no pass over the draws."""
        check_is_fitted(self, "cov_factor_")
        R, d = self.mean_.shape
        local = rng.standard_normal((R, n, d))
        factor = self.cov_factor_ if bias == 1.0 else np.sqrt(bias) * self.cov_factor_
        return Points.tagged(local, source=SYNTHETIC, origin=-1, frame=Frame(self.mean_, factor))

    def fit_stats(self, stats: Stats) -> Self:
        weights = None if stats.weight is None else (stats.weight, stats.total_weight_sq())
        return self._set(stats.mean, stats.factor, stats.count, weights=weights)

    def sample_stats(self, n: int, *, bias: float, rng: np.random.Generator) -> Stats:
        check_is_fitted(self, "cov_factor_")
        mean, factor = draw_stats(self.mean_, self.cov_factor_, n, rng, scale=bias)
        return Stats(np.full(self.mean_.shape[0], n), mean, factor)

    # -- checkpoints: arrays only, never pickle ---------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.mean_ is None:
            return {}
        return {"mean": self.mean_, "cov_factor": self.cov_factor_, "n_samples": self.n_samples_}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            self.mean_ = np.asarray(state["mean"])
            self.cov_factor_ = np.asarray(state["cov_factor"])
            self.n_samples_ = np.asarray(state["n_samples"])

    def _set(
        self,
        mean: np.ndarray,
        scatter_factor: np.ndarray,
        count: np.ndarray,
        *,
        weights: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Self:
        """Store a fit from (weighted) statistics; ``weights`` = (V1, V2), None: unweighted."""
        count = np.asarray(count, dtype=float)
        if self.covariance_factor is not None:  # fit = "mean": the covariance is given
            self.mean_ = mean
            shape = (mean.shape[0], *self.covariance_factor.shape)
            self.cov_factor_ = np.broadcast_to(self.covariance_factor, shape).copy()
            self.n_samples_ = count
            return self
        if weights is None:
            divisor = count - 1.0 if self.covariance_estimator == "unbiased" else count
        else:  # reliability weights: E[S^w] = (V1 - V2/V1) Σ for i.i.d. points
            v1, v2 = weights
            divisor = v1 - v2 / v1 if self.covariance_estimator == "unbiased" else v1
        low, high = divisor.min(initial=np.inf), divisor.max(initial=-np.inf)  # R = 0: neither
        if low == high and low > 0:
            # one divisor for every chain (the usual case): a scalar product, the same numbers
            # as the per-chain one at well under half its cost
            cov_factor = scatter_factor * np.float64(1.0 / math.sqrt(low))
        elif low > 0:
            cov_factor = scatter_factor * (1.0 / np.sqrt(divisor))[:, None, None]
        else:  # a fit on < 2 points (unbiased) has no covariance: NaN, not a crash
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(divisor > 0, 1.0 / np.sqrt(np.maximum(divisor, 1e-300)), np.nan)
            cov_factor = scatter_factor * scale[:, None, None]
        self.mean_ = mean
        self.cov_factor_ = cov_factor
        self.n_samples_ = count
        return self


def _build(config: GaussianConfig, *, replicates: int, real: object) -> GaussianFamily:
    fixed = None
    if config.fit == "mean":  # validation made sure the real source is Gaussian
        fixed = getattr(real, "factor", None)
        if fixed is None:
            fixed = lower_factor(np.asarray(real.covariance))
    return GaussianFamily(
        replicates, covariance_estimator=config.covariance_estimator, covariance_factor=fixed
    )


register_family(FamilySpec("gaussian", GaussianConfig, _build))
