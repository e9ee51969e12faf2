"""The linear-regression family: each generation refits w on labels made by the previous fit.

Fit: ŵ = X⁺y (least squares, ``ridge = 0``) or ŵ = (XᵀX + αI)⁻¹Xᵀy (ridge α, the penalty
α‖w‖² on the *sum* of squares, as scikit-learn's ``Ridge``: with accumulate its pull weakens as
the pool grows). Sampling: synthetic labels y = x·ŵ + N(0, λσ²) on the same fixed design (or on
fresh x ~ N(0, I_d)), where σ² is the true noise variance (``noise = "known"``, as in Gerstgrasser
et al. 2024 and Dohmatob et al. 2024) or the fit's residual variance s² = RSS/(m - d)
(``noise = "estimated"``). The sampling bias λ in (0, 1] scales the synthetic labels' noise
variance: λσ² (λ = 1: none); ``summary.csv`` shows it as the variance scale.

R chains are arrays with a leading axis R. Two modes, one law: ``sample`` draws the rows (x, y)
and fits them; ``exact`` draws the sufficient statistics (XᵀX, Xᵀy, yᵀy) of a batch directly
(:func:`madloop.data.regression.draw_label_stats`: d normals and a chi-square per batch).
The design is the real source's (:meth:`RegressionSource.design_for`), handed over by the build
factory, so the model's synthetic rows lie on the design it was fitted on.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field

from madloop.config import DataConfig, ModelConfig
from madloop.data.regression import (
    FAMILY,
    RegressionSource,
    RegressionStats,
    design_gram,
    design_rows,
    draw_label_stats,
    fresh_gram,
    labelled,
)
from madloop.models.base import FamilySpec, check_is_fitted, register_family
from madloop.types import SYNTHETIC, Points


class RegressionConfig(ModelConfig):
    family: Literal["linear-regression"] = "linear-regression"
    mode: Literal["exact", "sample"] = "exact"  # exact: XᵀX, Xᵀy, yᵀy only (same law)
    ridge: float = Field(0.0, ge=0.0, le=1e12)  # α; 0 = least squares (pinv)
    noise: Literal["known", "estimated"] = "known"  # synthetic noise: λσ² or λs²
    #: the fit's design, its QR factor and the residuals, each of the batch's size (measured
    #: with tracemalloc: 3.9 batch copies at the peak, against the loop's 2)
    fit_batch_copies: ClassVar[int] = 3

    def data_problem(self, data: DataConfig) -> str | None:
        if data.source != FAMILY:
            return (
                f"family '{FAMILY}' needs data.source = '{FAMILY}' ((x, y) pairs), got "
                f"'{data.source}'"
            )
        return None

    def state_size(self, event_size: int) -> int:
        """Floats per replicate: ŵ (at most ``event_size`` = d + 1 of an (x, y) row, what the
        dry run passes), the noise variance, s² and the count."""
        return event_size + 3


def bias_knob(lam: float) -> dict[str, float]:
    """The synthetic labels' noise-variance scale for the bias λ: ``{"variance_scale": λ}``."""
    return RegressionConfig.bias_knob.knob(lam)


def solve(gram: np.ndarray, xty: np.ndarray, ridge: float) -> np.ndarray:
    """ŵ (R, d) from XᵀX and Xᵀy: ridge by a solve, least squares by the pseudo-inverse."""
    if ridge > 0.0:
        d = gram.shape[-1]
        return np.linalg.solve(gram + ridge * np.eye(d), xty[..., None])[..., 0]
    return np.einsum("rij,rj->ri", np.linalg.pinv(gram, hermitian=True), xty)


class LinearRegressionFamily:
    """R replicate linear regressions.

    Parameters
    ----------
    replicates : int
    noise_variance : float
        σ², the real noise variance (the synthetic noise with ``noise = "known"``).
    design : ndarray of shape (R, T, d) or None
        The chains' fixed designs (synthetic rows reuse them); None: fresh x ~ N(0, I_d).
    dim : int
    ridge : float, default=0.0
    noise : {"known", "estimated"}, default="known"

    Attributes
    ----------
    coef_ : ndarray of shape (R, d)
        ŵ of the last fit.
    residual_variance_ : ndarray of shape (R,)
        s² = RSS/(m - d) of the last fit (0 when m <= d: no residual degrees of freedom).
    noise_variance_ : ndarray of shape (R,)
        The variance synthetic labels get before the bias λ: σ², or s² with ``noise = "estimated"``.
    n_samples_ : ndarray of shape (R,)
    """

    def __init__(
        self,
        replicates: int,
        *,
        noise_variance: float,
        design: np.ndarray | None,
        dim: int,
        ridge: float = 0.0,
        noise: Literal["known", "estimated"] = "known",
    ) -> None:
        self.replicates = replicates
        self.sigma2 = float(noise_variance)
        self.design = design
        self.dim = dim
        self.ridge = float(ridge)
        self.noise = noise
        self.coef_: np.ndarray | None = None
        self.residual_variance_: np.ndarray | None = None
        self.noise_variance_: np.ndarray | None = None
        self.n_samples_: np.ndarray | None = None

    def coefficients(self) -> np.ndarray:
        check_is_fitted(self, "coef_")
        return self.coef_

    # -- fitting ----------------------------------------------------------------------------------
    def fit_points(self, points: Points, *, rng: np.random.Generator | None = None) -> Self:
        X = points.global_X()
        x, y = X[..., :-1], X[..., -1]
        if self.ridge > 0.0:
            stats = RegressionStats.from_rows(X)
            coef = solve(stats.gram, stats.xty, self.ridge)
        else:
            coef = (np.linalg.pinv(x) @ y[..., None])[..., 0]
        resid = y - (x @ coef[..., None])[..., 0]
        rss = (resid * resid).sum(axis=1)
        return self._set(coef, rss, np.full(X.shape[0], X.shape[1]))

    def fit_stats(self, stats: RegressionStats) -> Self:
        coef = solve(stats.gram, stats.xty, self.ridge)
        gw = np.einsum("rij,rj->ri", stats.gram, coef)
        rss = stats.yty - 2.0 * np.einsum("ri,ri->r", coef, stats.xty)
        rss = np.clip(rss + np.einsum("ri,ri->r", coef, gw), 0.0, None)
        return self._set(coef, rss, np.asarray(stats.count))

    def _set(self, coef: np.ndarray, rss: np.ndarray, count: np.ndarray) -> Self:
        dof = np.asarray(count, dtype=float) - self.dim
        with np.errstate(divide="ignore", invalid="ignore"):
            s2 = np.where(dof > 0, rss / np.maximum(dof, 1.0), 0.0)
        self.coef_ = coef
        self.residual_variance_ = s2
        self.noise_variance_ = s2 if self.noise == "estimated" else np.full(len(coef), self.sigma2)
        self.n_samples_ = np.asarray(count, dtype=float)
        return self

    # -- sampling ---------------------------------------------------------------------------------
    def _covariates(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.design is None:
            return rng.standard_normal((self.replicates, n, self.dim))
        return design_rows(self.design, n)

    def sample_points(self, n: int, *, bias: float, rng: np.random.Generator) -> Points:
        """n rows (x, y) per chain, y = x·ŵ + N(0, λ·noise_variance_)."""
        check_is_fitted(self, "coef_")
        x = self._covariates(n, rng)
        X = labelled(x, self.coef_, bias * self.noise_variance_, rng)
        return Points.tagged(X, source=SYNTHETIC, origin=-1)

    def sample_stats(self, n: int, *, bias: float, rng: np.random.Generator) -> RegressionStats:
        check_is_fitted(self, "coef_")
        if self.design is None:
            gram = fresh_gram(n, self.dim, self.replicates, rng)
        else:
            gram = design_gram(self.design, n)
        return draw_label_stats(gram, self.coef_, bias * self.noise_variance_, n, rng)

    # -- checkpoints: arrays only -----------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.coef_ is None:
            return {}
        return {
            "coef": self.coef_,
            "residual_variance": self.residual_variance_,
            "noise_variance": self.noise_variance_,
            "n_samples": self.n_samples_,
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            self.coef_ = np.asarray(state["coef"])
            self.residual_variance_ = np.asarray(state["residual_variance"])
            self.noise_variance_ = np.asarray(state["noise_variance"])
            self.n_samples_ = np.asarray(state["n_samples"])


def _build(config: RegressionConfig, *, replicates: int, real: Any) -> LinearRegressionFamily:
    if not isinstance(real, RegressionSource):  # validation refuses this; a clear error anyway
        raise TypeError(f"family '{FAMILY}' needs the '{FAMILY}' data source, got {real!r}")
    return LinearRegressionFamily(
        replicates,
        noise_variance=real.noise_variance,
        design=real.design_for(replicates),
        dim=real.dim,
        ridge=config.ridge,
        noise=config.noise,
    )


register_family(FamilySpec(FAMILY, RegressionConfig, _build))
