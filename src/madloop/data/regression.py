"""Linear regression as the real law: y = x·w* + ε, x ~ N(0, I_d), ε ~ N(0, σ²).

The loop of Gerstgrasser et al. (2024, "Is model collapse inevitable?"), Dohmatob, Feng & Kempe
(2024) and Kazdan, Schaeffer et al. ("Collapse or thrive"): each generation fits w by least
squares (or ridge) on labels made by the previous fit. A row of a batch is one labelled example,
x and y concatenated: ``Points.X`` has shape (R, m, d + 1) with y in the last column.
(``Points.y`` is for class labels, which guidance and class-conditional sampling read as ids; a
row as one vector keeps the loop, unions, subsamples and checkpoints untouched.)

Each replicate chain r has its own w* ~ N(0, I_d) and, with ``design = "fixed"``, its own design
X (T x d), both drawn once from ``SeedSequence(key, spawn_key=(r,))``: the same for every arm of
a run (common random numbers), independent of R, rebuilt identically on resume (no state to
save). A fixed-design batch of n = kT rows is k copies of the design with independent noise; a
fresh-design batch draws new x for every row.

``exact`` mode carries the sufficient statistics (XᵀX, Xᵀy, yᵀy, count) of
:class:`RegressionStats`; :func:`draw_label_stats` draws Xᵀy and yᵀy for a known XᵀX from d
normals and one chi-square instead of n labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from madloop.config import DataConfig
from madloop.data.base import DataSpec, register_source
from madloop.linalg import bartlett
from madloop.types import REAL, Points

FAMILY = "linear-regression"


class RegressionDataConfig(DataConfig):
    source: Literal["linear-regression"] = "linear-regression"
    dim: int = Field(10, ge=1, le=4096)  # d
    design_size: int = Field(100, ge=1, le=10_000_000)  # T rows of a fixed design
    design: Literal["fixed", "fresh"] = "fixed"  # fresh: new x for every draw (design_size unused)
    noise_variance: float = Field(1.0, gt=0.0, le=1e12)  # σ²

    def event_size(self) -> int:
        """Numbers per row: x (d) and y."""
        return self.dim + 1

    def config_problems(self, model: Any, loop: Any, regime: Any) -> list[str]:
        """Checks that need ``[model]`` and ``[loop]`` too (called by the schema when both are
        valid): the family, whole copies of a fixed design, and a non-singular fit."""
        if model.family != FAMILY:
            return [
                f"model.family: data.source = '{FAMILY}' needs family '{FAMILY}' (it fits "
                f"(x, y) pairs by least squares), got '{model.family}'"
            ]
        problems = []
        T, d = self.design_size, self.dim
        if self.design == "fixed":
            for name in ("initial_real_size", "real_size", "synthetic_size"):
                spec = getattr(loop, name)
                values = [] if spec is None else [spec] if isinstance(spec, int) else spec
                bad = [v for v in values if v % T]
                if bad:
                    problems.append(
                        f"loop.{name}: must be a multiple of data.design_size (T = {T}) with "
                        f"data.design = 'fixed' (a batch is whole copies of the design), got "
                        f"{bad[0]}; use {max(T, bad[0] // T * T)} or data.design = 'fresh'"
                    )
        ridge = float(getattr(model, "ridge", 0.0))
        estimated = getattr(model, "noise", "known") == "estimated"
        if ridge == 0.0 or estimated:
            why = (
                "least squares (model.ridge = 0) is singular: XᵀX has rank <= its rows; set "
                "model.ridge > 0"
                if ridge == 0.0
                else "model.noise = 'estimated' divides the residuals by rows - d; use "
                "model.noise = 'known'"
            )
            if self.design == "fixed" and T <= d:
                problems.append(
                    f"data.design_size: must be > data.dim ({d}), got {T}: {why}, or raise "
                    "data.design_size"
                )
            elif self.design == "fresh" and not problems:
                problems.extend(_fresh_size_problems(regime, d, why))
        return problems


def _fresh_size_problems(regime: Any, d: int, why: str) -> list[str]:
    """With fresh x every generation fits its own rows: each training set needs > d of them."""
    lists = (np.atleast_1d(regime.real_size), np.atleast_1d(regime.synthetic_size))
    for t in range(1, 2 + max(len(v) for v in lists)):
        size = regime.training_size(t)
        if size <= d:
            first = t == 1 and regime.initial_real_size is not None
            where = "loop.initial_real_size" if first else "loop.synthetic_size"
            return [
                f"{where}: a training set of {size} rows (generation {t}) must be > "
                f"data.dim ({d}): {why}, or give more rows"
            ]
    return []


@dataclass(eq=False)
class RegressionStats:
    """Sufficient statistics of R replicate regression batches: ``count`` (R,), ``gram`` XᵀX
    (R, d, d), ``xty`` Xᵀy (R, d), ``yty`` yᵀy (R,); ``provenance`` as in
    :class:`madloop.types.Stats`. Least squares, ridge and the residual sum of squares need
    nothing else, and a union of batches is their sum."""

    count: np.ndarray
    gram: np.ndarray
    xty: np.ndarray
    yty: np.ndarray
    provenance: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(np.max(self.count, initial=0))

    @staticmethod
    def merge(parts: list[RegressionStats]) -> RegressionStats:
        """The union of batches: every statistic adds."""
        if len(parts) == 1:
            return parts[0]
        prov: dict[tuple[int, int], np.ndarray] = {}
        for p in parts:
            for k, v in p.provenance.items():
                prov[k] = prov.get(k, 0) + v
        return RegressionStats(
            sum(p.count for p in parts),
            sum(p.gram for p in parts),
            sum(p.xty for p in parts),
            sum(p.yty for p in parts),
            prov,
        )

    @classmethod
    def from_rows(cls, X: np.ndarray) -> RegressionStats:
        """The statistics of rows (R, m, d + 1), y in the last column."""
        x, y = X[..., :-1], X[..., -1]
        xt = np.swapaxes(x, 1, 2)  # matmul, not einsum: BLAS on (R, d, m) @ (R, m, d)
        count = np.full(X.shape[0], X.shape[1])
        return cls(count, xt @ x, (xt @ y[..., None])[..., 0], (y * y).sum(axis=1))


def design_rows(design: np.ndarray, n: int) -> np.ndarray:
    """n rows of a fixed design (R, T, d): whole copies, then the first n mod T rows."""
    return design[:, np.arange(n) % design.shape[1]]


def design_gram(design: np.ndarray, n: int) -> np.ndarray:
    """XᵀX of :func:`design_rows` (R, d, d) without materialising the copies."""
    T = design.shape[1]
    part = design[:, : n % T]
    gram = (n // T) * (np.swapaxes(design, 1, 2) @ design)
    return gram + np.swapaxes(part, 1, 2) @ part


def labelled(x: np.ndarray, w: np.ndarray, variance: np.ndarray, rng: np.random.Generator):
    """Rows (R, n, d + 1): x with y = x·w + N(0, variance) (variance (R,))."""
    noise = rng.standard_normal(x.shape[:2]) * np.sqrt(variance)[:, None]
    y = (x @ w[..., None])[..., 0] + noise
    return np.concatenate([x, y[..., None]], axis=2)


def draw_label_stats(
    gram: np.ndarray, w: np.ndarray, variance: np.ndarray, rows: int, rng: np.random.Generator
) -> RegressionStats:
    """The statistics of ``rows`` labels y = Xw + ε, ε ~ N(0, v I), for a design with Gram
    matrix ``gram`` (R, d, d), without drawing y.

    With G = V diag(e) Vᵀ: u = Xᵀε = √v V diag(√e) z, z ~ N(0, I_d) (Cov vG), and ‖ε‖² splits
    into its projection on X's columns, εᵀX G⁺ Xᵀε = v ‖z‖² over the rank directions, plus an
    independent v χ²(rows - rank). So Xᵀy = Gw + u and yᵀy = wᵀGw + 2wᵀu + v(‖z‖² + χ²).
    For k copies of a design, G is k XᵀX and rows kT: the law of the k copies' sums.
    """
    R, d, _ = gram.shape
    e, V = np.linalg.eigh(gram)
    keep = e > np.max(e, axis=1, keepdims=True) * d * np.finfo(float).eps
    z = rng.standard_normal((R, d)) * keep
    sd = np.sqrt(np.asarray(variance, dtype=float) * np.ones(R))
    u = sd[:, None] * np.einsum("rij,rj->ri", V, np.sqrt(np.clip(e, 0.0, None)) * z)
    dof = np.maximum(rows - keep.sum(axis=1), 0) / 2.0
    chi2 = 2.0 * rng.standard_gamma(dof)
    gw = np.einsum("rij,rj->ri", gram, w)
    yty = np.einsum("ri,ri->r", w, gw) + 2.0 * np.einsum("ri,ri->r", w, u)
    yty = yty + sd**2 * (np.einsum("ri,ri->r", z, z) + chi2)
    return RegressionStats(np.full(R, rows), gram, gw + u, yty)


def fresh_gram(n: int, dim: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """XᵀX of n fresh rows x ~ N(0, I_d): Wishart(I_d, n), by Bartlett."""
    A = bartlett(n, dim, replicates, rng)
    return A @ np.swapaxes(A, 1, 2)


class RegressionSource:
    """The real law of R chains: w* and (fixed design) the design of each, and noise σ²."""

    def __init__(
        self, *, dim: int, design_size: int, design: str, noise_variance: float, key: int
    ) -> None:
        self.dim = dim
        self.design_size = design_size
        self.design = design
        self.noise_variance = float(noise_variance)
        self.key = key
        self._drawn: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def problem(self, replicates: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(w* (R, d), design (R, T, d) or None for fresh design), drawn once per chain."""
        if replicates not in self._drawn:
            ws, designs = [], []
            for r in range(replicates):
                rng = np.random.default_rng(np.random.SeedSequence(self.key, spawn_key=(r,)))
                ws.append(rng.standard_normal(self.dim))
                if self.design == "fixed":
                    designs.append(rng.standard_normal((self.design_size, self.dim)))
            design = np.stack(designs) if designs else None
            self._drawn[replicates] = (np.stack(ws), design)
        return self._drawn[replicates]

    def true_coefficients(self, replicates: int) -> np.ndarray:
        return self.problem(replicates)[0]

    def design_for(self, replicates: int) -> np.ndarray | None:
        return self.problem(replicates)[1]

    def covariates(self, n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
        """x of n rows (R, n, d): the fixed design's copies, or fresh N(0, I_d) draws."""
        design = self.design_for(replicates)
        if design is None:
            return rng.standard_normal((replicates, n, self.dim))
        return design_rows(design, n)

    def gram(self, n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
        """XᵀX of :meth:`covariates` in law (fixed design: exactly), without the rows."""
        design = self.design_for(replicates)
        if design is None:
            return fresh_gram(n, self.dim, replicates, rng)
        return design_gram(design, n)

    def sample_points(self, n: int, *, replicates: int, rng: np.random.Generator) -> Points:
        w = self.true_coefficients(replicates)
        x = self.covariates(n, replicates, rng)
        X = labelled(x, w, np.full(replicates, self.noise_variance), rng)
        return Points.tagged(X, source=REAL, origin=0)

    def sample_stats(self, n: int, *, replicates: int, rng: np.random.Generator) -> RegressionStats:
        w = self.true_coefficients(replicates)
        gram = self.gram(n, replicates, rng)
        return draw_label_stats(gram, w, np.full(replicates, self.noise_variance), n, rng)


def _build(config: RegressionDataConfig, *, rng: np.random.Generator) -> RegressionSource:
    return RegressionSource(
        dim=config.dim,
        design_size=config.design_size,
        design=config.design,
        noise_variance=config.noise_variance,
        key=int(rng.integers(2**63)),
    )


register_source(DataSpec(FAMILY, RegressionDataConfig, _build))
