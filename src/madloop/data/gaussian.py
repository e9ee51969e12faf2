"""A multivariate Gaussian as the real distribution: N(μ_0, Σ_0) in any dimension."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from madloop.config import DataConfig
from madloop.data.base import DataSpec, register_source
from madloop.linalg import draw_stats, lower_factor
from madloop.types import REAL, Frame, Points, Stats


class GaussianDataConfig(DataConfig):
    source: Literal["gaussian"] = "gaussian"
    dim: int = Field(2, ge=1, le=4096)
    mean: float | list[float] = 0.0
    covariance: Literal["identity", "random"] | list[list[float]] = "identity"
    condition_number: float = Field(10.0, ge=1.0, le=1e12)

    @field_validator("mean")
    @classmethod
    def _finite_mean(cls, v: float | list[float]) -> float | list[float]:
        if not np.all(np.isfinite(v)):
            raise ValueError(f"must be finite, got {v}")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> GaussianDataConfig:
        if isinstance(self.mean, list) and len(self.mean) != self.dim:
            raise ValueError(
                f"mean: has {len(self.mean)} values but dim = {self.dim}; give one number or "
                f"{self.dim} numbers"
            )
        if isinstance(self.covariance, list):
            cov = np.asarray(self.covariance, dtype=float)
            if cov.shape != (self.dim, self.dim):
                raise ValueError(
                    f"covariance: must be a {self.dim}x{self.dim} matrix, got shape {cov.shape}"
                )
            if not np.all(np.isfinite(cov)):
                raise ValueError("covariance: must be finite (it holds NaN or inf)")
            if not np.allclose(cov, cov.T):
                raise ValueError("covariance: must be a symmetric matrix")
            low = float(np.linalg.eigvalsh(cov).min())
            if low <= 0:
                what = "a zero-variance direction" if low == 0 else "a negative variance"
                raise ValueError(
                    "covariance: must be positive definite (all eigenvalues > 0), got smallest "
                    f"eigenvalue {low:.4g}: {what}; give that direction a small positive "
                    "variance or drop the dimension"
                )
        return self


class GaussianSource:
    """N(mean, covariance) with its lower factor; draws points or sufficient statistics."""

    def __init__(self, mean: np.ndarray, covariance: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=float)
        self.covariance = np.asarray(covariance, dtype=float)
        self.factor = lower_factor(self.covariance)
        self.dim = self.mean.shape[0]

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, self.factor

    def _frame(self, replicates: int) -> Frame:
        return Frame(
            np.broadcast_to(self.mean, (replicates, self.dim)),
            np.broadcast_to(self.factor, (replicates, self.dim, self.dim)),
        )

    def sample_points(self, n: int, *, replicates: int, rng: np.random.Generator) -> Points:
        z = rng.standard_normal((replicates, n, self.dim))
        return Points.tagged(z, source=REAL, origin=0, frame=self._frame(replicates))

    def sample_stats(self, n: int, *, replicates: int, rng: np.random.Generator) -> Stats:
        frame = self._frame(replicates)
        mean, factor = draw_stats(frame.offset, frame.factor, n, rng)
        return Stats(np.full(replicates, n), mean, factor)


def random_covariance(dim: int, condition_number: float, rng: np.random.Generator) -> np.ndarray:
    """A random rotation of log-spaced eigenvalues from 1 down to 1/condition_number, scaled to
    trace = dim (so tr Σ_0 matches the identity's)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q *= np.sign(np.diagonal(r))
    eig = np.geomspace(1.0, 1.0 / condition_number, dim)
    eig *= dim / eig.sum()
    cov = (q * eig) @ q.T
    return (cov + cov.T) / 2


def _build(config: GaussianDataConfig, *, rng: np.random.Generator) -> GaussianSource:
    mean = np.broadcast_to(np.asarray(config.mean, dtype=float), (config.dim,)).copy()
    if config.covariance == "identity":
        cov = np.eye(config.dim)
    elif config.covariance == "random":
        cov = random_covariance(config.dim, config.condition_number, rng)
    else:
        cov = np.asarray(config.covariance, dtype=float)
    return GaussianSource(mean, cov)


register_source(DataSpec("gaussian", GaussianDataConfig, _build))
