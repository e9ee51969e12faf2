"""Closed-form predictions for Gaussian self-consuming loops.

Everything is in units of the real law: take μ_0 = 0 (drop it) and note that every expected
covariance in these loops is a scalar multiple of Σ_0, so a prediction is a scalar.

**Moment recursion** (``expected_moments``; derivation in ``shared/design/gaussian-exact.md``).
Every batch mean is μ_0 plus a linear combination of independent noise vectors ε_j with
E[ε_j ε_j^T] = v_j Σ_0: a real batch of m points adds ε with v = 1/m; a synthetic batch of m draws
from model t-1 has mean μ_{t-1} + ε with v = λ b_{t-1} / m, where E[Σ_{t-1}] = b_{t-1} Σ_0. The
noises are martingale differences, hence uncorrelated, so E[x̄_k x̄_l^T] = Σ_j c_kj c_lj v_j Σ_0.
For a union of batches (Chan et al.'s merge, expectations taken)

    E[S] = Σ_k (E[S_k] + m_k E[x̄_k x̄_k^T]) - m E[x̄ x̄^T],

which is additive over batches once each batch carries (m_k, m_k c_k, E[S_k] + m_k c_k^T V c_k):
kept pools are aggregated in O(#noises) per generation. A uniform subsample of k rows from N
without replacement has E[S_sub] = (k-1)/(N-1) E[S_N] and mean x̄_N + η, η uncorrelated with the
past, Var η = (N-k)/(N k (N-1)) E[S_N] (finite-population correction). Then
E[Σ_t] = E[S]/(m-1) (unbiased) or E[S]/m (MLE),
E[trace_ratio_t] = b_t and E[mean_error_sq_t] = tr Σ_0 · Σ_j a_tj² v_j.
For fully-synthetic this gives E[Σ_t] = λ^(t-1) Σ_0 and E||μ_t - μ_0||² = tr Σ_0/n ·
(1-λ^t)/(1-λ) (Alemohammad et al. 2024); with the MLE, E[Σ_t] = λ^(t-1) ((n-1)/n)^t Σ_0.

**Log-det drift** (``log_det_drift``, fully-synthetic only). With Σ_{t-1} = L L^T, the next
scatter is λ L W L^T with W ~ Wishart(I, n-1) = A A^T (Bartlett), so
log det Σ_t - log det Σ_{t-1} = d log λ + Σ_i log χ²_{n-1-i} - d log(n-1), independent across
generations, with E log χ²_k = ψ(k/2) + log 2 and Var log χ²_k = ψ'(k/2). Hence per generation
d log λ + Σ_{i=0}^{d-1} [ψ((n-1-i)/2) + log(2/(n-1))] (no λ term at t = 1), negative even at λ = 1
(Jensen): Σ_t -> 0 almost surely though E[Σ_t] = Σ_0. For the MLE replace the divisor n-1 by n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import digamma, polygamma

from madloop.regimes import Draw, Kept, Regime
from madloop.theory.registry import Predictor, register_predictor


@dataclass
class _Aggregate:
    """Additive expected statistics of a set of atomic batches (units of Σ_0)."""

    count: float
    weighted: np.ndarray  # Σ m_k c_k over the noise basis
    within: float  # Σ_k (E[S_k] + m_k c_k^T V c_k) / 1, in units of Σ_0

    def scatter(self, v: np.ndarray) -> float:
        c = self.weighted[: v.size] / self.count
        return self.within - self.count * float(c @ (v * c))

    def mean_coef(self, size: int) -> np.ndarray:
        c = np.zeros(size)
        c[: self.weighted.size] = self.weighted / self.count
        return c


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[: a.size] = a
    return out


def _add(aggs: list[_Aggregate], n: int) -> _Aggregate:
    return _Aggregate(
        sum(a.count for a in aggs),
        sum((_pad(a.weighted, n) for a in aggs), np.zeros(n)),
        sum(a.within for a in aggs),
    )


@dataclass
class MomentPrediction:
    generation: np.ndarray
    trace_ratio: np.ndarray  # E[tr Σ_t / tr Σ_0]  (exact for Σ_0 of any shape)
    mean_error_sq_per_trace: np.ndarray  # E||μ_t - μ_0||² / tr Σ_0


def expected_moments(
    regime: Regime,
    generations: int,
    *,
    bias: float = 1.0,
    covariance_estimator: str = "unbiased",
) -> MomentPrediction:
    """E[trace_ratio] and E[mean_error_sq]/tr Σ_0 for generations 1..T of any batch-union regime
    (and accumulate-subsample), by the exact linear recursion described in the module docstring."""
    v: list[float] = []  # noise variances
    kept: dict[str, _Aggregate] = {}
    model_coef = np.zeros(0)
    b_prev = 1.0
    traces, means = [], []
    for t in range(1, generations + 1):
        comp = regime.compose(t)
        drawn: dict[int, _Aggregate] = {}

        def part_agg(part, t=t, drawn=drawn, b_prev=b_prev, model_coef=model_coef) -> _Aggregate:
            if isinstance(part, Kept):
                return kept[part.name]
            if id(part) in drawn:
                return drawn[id(part)]
            m = part.size
            if m == 0:  # an empty batch (e.g. real_size = 0) adds nothing, not even noise
                return _Aggregate(0.0, np.zeros(0), 0.0)
            real = part.source == "real" or t == 1
            scale = 1.0 if real else bias * b_prev
            v.append(scale / m)
            coef = np.zeros(len(v))
            coef[-1] = 1.0
            if not real:
                coef[: model_coef.size] += model_coef
            self_moment = float(coef @ (np.asarray(v) * coef))
            agg = _Aggregate(float(m), m * coef, (m - 1) * scale + m * self_moment)
            drawn[id(part)] = agg
            return agg

        parts = [part_agg(p) for p in comp.parts if not (isinstance(p, Draw) and p.size == 0)]
        keeps = {k: [part_agg(p) for p in ps] for k, ps in comp.keep.items()}
        n_noise = len(v)
        train = _add(parts, n_noise)
        varr = np.asarray(v)
        scatter = train.scatter(varr)
        coef = train.mean_coef(n_noise)
        m = train.count
        if comp.subsample is not None and m > comp.subsample:
            k = float(comp.subsample)
            v.append((m - k) / (m * k * (m - 1)) * scatter)
            coef = np.append(coef, 1.0)
            scatter = (k - 1) / (m - 1) * scatter
            m = k
            varr = np.asarray(v)
        divisor = m - 1 if covariance_estimator == "unbiased" else m
        b_prev = scatter / divisor if divisor > 0 else np.nan
        model_coef = coef
        for name, aggs in keeps.items():
            kept[name] = _add(aggs, n_noise)
        traces.append(b_prev)
        means.append(float(coef @ (varr * coef)))
    return MomentPrediction(np.arange(1, generations + 1), np.asarray(traces), np.asarray(means))


def fully_synthetic_trace_ratio(
    t: np.ndarray | int, bias: float, n: int, covariance_estimator: str = "unbiased"
) -> np.ndarray:
    """E[tr Σ_t]/tr Σ_0 = λ^(t-1) (times ((n-1)/n)^t for the MLE)."""
    t = np.asarray(t, dtype=float)
    out = bias ** (t - 1)
    if covariance_estimator == "mle":
        out = out * ((n - 1) / n) ** t
    return out


def fully_synthetic_mean_error(t: np.ndarray | int, bias: float, n: int, trace0: float):
    """E||μ_t - μ_0||² = tr Σ_0 / n · (1 - λ^t)/(1 - λ) for the unbiased estimator.

    (For the MLE the covariance shrinks by (n-1)/n more each generation; use
    :func:`expected_moments` for that and every other regime.)"""
    t = np.asarray(t, dtype=float)
    geometric = t if bias == 1.0 else (1 - bias**t) / (1 - bias)
    return trace0 / n * geometric


def log_det_step(n: int, dim: int, covariance_estimator: str = "unbiased") -> tuple[float, float]:
    """Mean and variance of log det Σ_t - log det (λ Σ_{t-1}) for one generation of n points."""
    i = np.arange(dim)
    dof = n - 1 - i
    if np.any(dof <= 0):
        return -np.inf, np.nan
    divisor = n - 1 if covariance_estimator == "unbiased" else n
    mean = float(np.sum(digamma(dof / 2) + np.log(2.0 / divisor)))
    var = float(np.sum(polygamma(1, dof / 2)))
    return mean, var


def log_det_drift(
    regime: Regime,
    generations: int,
    dim: int,
    *,
    bias: float = 1.0,
    covariance_estimator: str = "unbiased",
) -> tuple[np.ndarray, np.ndarray]:
    """(E, Var) of log det Σ_t - log det Σ_0 for t = 1..T of the fully-synthetic loop.

    Returns NaN arrays for regimes where no closed form exists (only fully-synthetic has one)."""
    if regime.name != "fully-synthetic":
        nan = np.full(generations, np.nan)
        return nan, nan.copy()
    means, variances = [], []
    total_mean, total_var = 0.0, 0.0
    for t in range(1, generations + 1):
        comp = regime.compose(t)
        n = comp.parts[0].size
        step_mean, step_var = log_det_step(n, dim, covariance_estimator)
        total_mean += step_mean + (dim * np.log(bias) if t > 1 else 0.0)
        total_var += step_var
        means.append(total_mean)
        variances.append(total_var)
    return np.asarray(means), np.asarray(variances)


def predictions(
    regime: Regime,
    generations: int,
    *,
    dim: int,
    trace0: float,
    bias: float = 1.0,
    covariance_estimator: str = "unbiased",
) -> dict[str, np.ndarray]:
    """Expected value of each Gaussian metric that has a closed form, per generation 1..T."""
    moments = expected_moments(
        regime, generations, bias=bias, covariance_estimator=covariance_estimator
    )
    log_det, _ = log_det_drift(
        regime, generations, dim, bias=bias, covariance_estimator=covariance_estimator
    )
    out = {
        "trace_ratio": moments.trace_ratio,
        "mean_error_sq": moments.mean_error_sq_per_trace * trace0,
    }
    if np.isfinite(log_det).any() or np.isneginf(log_det).any():
        out["log_det_change"] = log_det
    return out


# -- the predictor ---------------------------------------------------------------------------------
def _applies(config: Any, regime: Regime) -> bool:
    """Gaussian data fitted by the Gaussian family, in a single-chain regime, unprocessed
    (``loop.preprocess`` has its own predictor, :mod:`madloop.theory.preprocess`)."""
    return (
        not getattr(config.loop, "preprocess", ())
        and config.data.source == "gaussian"
        and config.model.family == "gaussian"
        and getattr(regime, "engine", "loop") == "loop"
    )


def _predict(arm: str, config: Any, real: Any, regime: Regime) -> dict[str, np.ndarray]:
    return predictions(
        regime,
        config.generations,
        dim=real.dim,
        trace0=float(np.trace(real.covariance)),
        bias=config.sampling.bias,
        covariance_estimator=getattr(config.model, "covariance_estimator", "unbiased"),
    )


register_predictor(Predictor("gaussian", _applies, _predict))
