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

**Weighted real data** (``loop.real_weight`` = w, from generation 2 on). Each real row weighs
u_r = w / n_r and each synthetic row u_s = (1 - w) / n_s, so V1 = Σ w_i = 1 and
V2 = Σ w_i² = w²/n_r + (1-w)²/n_s. The fit is μ_t = Σ w_i x_i = Σ_k u_k m_k x̄_k and
Σ_t = S^w / (V1 - V2/V1) (unbiased: reliability weights) or S^w / V1 (MLE), with the weighted
scatter S^w = Σ w_i x_i x_i^T - V1 μ_t μ_t^T. Taking expectations batch by batch,

    E[S^w] = Σ_k u_k (E[S_k] + m_k E[x̄_k x̄_k^T]) - V1 E[μ_t μ_t^T],

the same additive form as above with (m_k, m_k c_k, within_k) scaled by u_k, so the recursion
closes and stays exact: the weights are fixed numbers, E[S_k] = (m_k - 1) × (1 or λ b_{t-1}) Σ_0
and the noises are still uncorrelated. For fresh-data this is exact for every generation. For
synthetic-augmentation it is exact *unconditionally* (averaged over the fixed real set, which each
replicate draws anew: what R replicates measure); conditional on one fixed real set it is not
what is computed. With ``fit = "mean"`` the model's covariance is Σ_0 (b_t = 1) and the mean
recursion of fresh-data reads e_t = (1-w)² (e_{t-1} + λ tr Σ_0 / n_s) + w² tr Σ_0 / n_r,
e_1 = tr Σ_0 / n_1, with fixed point tr Σ_0 ((1-w)² λ/n_s + w²/n_r) / (1 - (1-w)²), least at
w* = 1 - u*, u* = 1 + r/2 - sqrt(r + r²/4), r = λ n_r / n_s; w* = 1/φ at r = 1 (He, Xu, Cheng
2025: the golden ratio).

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

from madloop.regimes import Draw, FreshData, Kept, Regime
from madloop.theory.registry import Predictor, register_predictor


@dataclass
class _Aggregate:
    """Additive expected statistics of a set of atomic batches (units of Σ_0).

    Weighted (``loop.real_weight``): ``count`` is the total weight V1 = Σ_k u_k m_k, ``weighted``
    Σ_k u_k m_k c_k and ``within`` Σ_k u_k (E[S_k] + m_k c_k^T V c_k), u_k batch k's weight per
    row: E[Σ w_i x_i x_i^T] is linear in the batches, so the same merge holds."""

    count: float
    weighted: np.ndarray  # Σ m_k c_k over the noise basis
    within: float  # Σ_k (E[S_k] + m_k c_k^T V c_k) / 1, in units of Σ_0
    source: str = "real"  # "real", "synthetic" or "mixed" (a kept union of both)

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
    sources = {a.source for a in aggs}
    return _Aggregate(
        sum(a.count for a in aggs),
        sum((_pad(a.weighted, n) for a in aggs), np.zeros(n)),
        sum(a.within for a in aggs),
        sources.pop() if len(sources) == 1 else "mixed",
    )


def _weigh(aggs: list[_Aggregate], real_weight: float) -> tuple[list[_Aggregate], float]:
    """The batches of a training set weighted as the loop weighs them (real rows w / n_r,
    synthetic rows (1 - w) / n_s; :func:`madloop.types.weigh_sources`), and V2 = Σ w_i²."""
    share = {"real": real_weight, "synthetic": 1.0 - real_weight}
    if any(a.source not in share for a in aggs):
        raise ValueError("loop.real_weight needs batches of one source each")
    rows = {s: sum(a.count for a in aggs if a.source == s) for s in share}
    present = sum(share[s] for s in share if rows[s] > 0)
    per_row = {s: share[s] / present / rows[s] if rows[s] > 0 else 0.0 for s in share}
    out = [
        _Aggregate(u * a.count, u * a.weighted, u * a.within, a.source)
        for a in aggs
        for u in [per_row[a.source]]
    ]
    return out, sum(per_row[a.source] ** 2 * a.count for a in aggs)


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
    real_weight: float | None = None,
    fit: str = "mean-and-covariance",
) -> MomentPrediction:
    """E[trace_ratio] and E[mean_error_sq]/tr Σ_0 for generations 1..T of any batch-union regime
    (and accumulate-subsample), by the exact linear recursion described in the module docstring.

    ``real_weight`` weighs each training set from generation 2 on as the loop does (then the
    covariance divisor is V1 - V2/V1 or V1); ``fit = "mean"`` keeps the model's covariance at
    Σ_0 (b_t = 1), so only the mean recursion moves."""
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
            source = "real" if real else "synthetic"
            v.append(scale / m)
            coef = np.zeros(len(v))
            coef[-1] = 1.0
            if not real:
                coef[: model_coef.size] += model_coef
            self_moment = float(coef @ (np.asarray(v) * coef))
            agg = _Aggregate(float(m), m * coef, (m - 1) * scale + m * self_moment, source)
            drawn[id(part)] = agg
            return agg

        parts = [part_agg(p) for p in comp.parts if not (isinstance(p, Draw) and p.size == 0)]
        keeps = {k: [part_agg(p) for p in ps] for k, ps in comp.keep.items()}
        n_noise = len(v)
        weight_sq = None
        if real_weight is not None and t > 1:
            parts, weight_sq = _weigh(parts, real_weight)
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
        if weight_sq is None:
            divisor = m - 1 if covariance_estimator == "unbiased" else m
        else:  # m is V1 here
            divisor = m - weight_sq / m if covariance_estimator == "unbiased" else m
        b_prev = scatter / divisor if divisor > 0 else np.nan
        if fit == "mean":
            b_prev = 1.0
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
    steps: dict[int, tuple[float, float]] = {}  # by n: digamma sums cost ~20 µs a generation
    for t in range(1, generations + 1):
        comp = regime.compose(t)
        n = comp.parts[0].size
        if n not in steps:
            steps[n] = log_det_step(n, dim, covariance_estimator)
        step_mean, step_var = steps[n]
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
    real_weight: float | None = None,
    fit: str = "mean-and-covariance",
) -> dict[str, np.ndarray]:
    """Expected value of each Gaussian metric that has a closed form, per generation 1..T."""
    moments = expected_moments(
        regime,
        generations,
        bias=bias,
        covariance_estimator=covariance_estimator,
        real_weight=real_weight,
        fit=fit,
    )
    out = {
        "trace_ratio": moments.trace_ratio,
        "mean_error_sq": moments.mean_error_sq_per_trace * trace0,
    }
    if fit == "mean":  # the covariance is Σ_0's: no log-det drift to predict
        return out
    log_det, _ = log_det_drift(
        regime, generations, dim, bias=bias, covariance_estimator=covariance_estimator
    )
    if np.isfinite(log_det).any() or np.isneginf(log_det).any():
        out["log_det_change"] = log_det
    return out


# -- weighted real data: the golden ratio ----------------------------------------------------------
def stationary_mean_error(
    real_weight: float, n_real: int, n_synthetic: int, *, bias: float = 1.0
) -> float:
    """lim E||μ_t - μ_0||² / tr Σ_0 of fresh-data with ``fit = "mean"`` (a known covariance).

    μ_t = w x̄_r + (1 - w) x̄_s with x̄_s = μ_{t-1} + ε, E εε^T = λ Σ_0 / n_s, so
    e_t = (1 - w)² (e_{t-1} + λ tr Σ_0 / n_s) + w² tr Σ_0 / n_r, whose fixed point is
    ((1 - w)² λ / n_s + w² / n_r) / (1 - (1 - w)²) (He, Xu, Cheng 2025 at λ = 1)."""
    u = 1.0 - real_weight
    return (u * u * bias / n_synthetic + real_weight**2 / n_real) / (1.0 - u * u)


def optimal_real_weight(n_real: int, n_synthetic: int, *, bias: float = 1.0) -> float:
    """The w in (0, 1) minimising :func:`stationary_mean_error`.

    With u = 1 - w, a = λ / n_s and b = 1 / n_r the derivative vanishes where a u = b (1 - u)²,
    so u = 1 + r/2 - sqrt(r + r²/4) with r = a / b = λ n_r / n_s (the root in (0, 1)); at
    r = 1, u = (3 - √5)/2 and w = (√5 - 1)/2 = 1/φ ≈ 0.618, the golden ratio's inverse."""
    r = bias * n_real / n_synthetic
    u = 1.0 + r / 2.0 - np.sqrt(r + r * r / 4.0)
    return float(1.0 - u)


def optimal_real_weight_numeric(
    regime: Regime,
    *,
    bias: float = 1.0,
    covariance_estimator: str = "unbiased",
    fit: str = "mean-and-covariance",
    generations: int = 100,
) -> tuple[float, float]:
    """(w, E||μ_T - μ_0||² / tr Σ_0) minimising the exact weighted recursion's mean error at
    generation T (``generations``; fresh-data is stationary long before T = 100, the error
    contracting by (1 - w)² a generation), by a bounded scalar search over w in (0, 1). For
    ``fit = "mean"`` it agrees with :func:`optimal_real_weight`; with the covariance fitted too
    the optimum moves (n_r = n_s = 10: about 0.624 unbiased, 0.607 MLE)."""
    from scipy.optimize import minimize_scalar

    def error(w: float) -> float:
        found = expected_moments(
            regime,
            generations,
            bias=bias,
            covariance_estimator=covariance_estimator,
            real_weight=w,
            fit=fit,
        )
        return float(found.mean_error_sq_per_trace[-1])

    best = minimize_scalar(
        error, bounds=(1e-6, 1 - 1e-6), method="bounded", options={"xatol": 1e-7}
    )
    return float(best.x), float(best.fun)


def real_weight_note(config: Any) -> str | None:
    """What ``madloop theory`` says about ``loop.real_weight`` for a Gaussian fresh-data arm: the
    optimal weight (closed form for ``fit = "mean"``, the numerical argmin of the exact recursion
    otherwise) and the stationary error at the arm's own weight."""
    if not (_applies(config, None) and config.loop.regime == "fresh-data"):
        return None
    regime_sizes = [config.loop.real_size, config.loop.synthetic_size]
    n_r, n_s = (v if isinstance(v, int) else v[-1] for v in regime_sizes)
    lam = config.sampling.bias
    w = config.loop.real_weight
    own = f"real_weight = {w}"
    if w is None:  # equal rows: the mean is (n_r x̄_r + n_s x̄_s) / (n_r + n_s)
        w = n_r / (n_r + n_s)
        own = f"unweighted (w = n_r / (n_r + n_s) = {w:.4g})"
    fit = getattr(config.model, "fit", "mean-and-covariance")
    if fit == "mean":
        best = optimal_real_weight(n_r, n_s, bias=lam)
        text = (
            f"optimal loop.real_weight = {best:.6f} (n_r = {n_r}, n_s = {n_s}, λ = {lam:g}): "
            f"stationary E||μ - μ_0||² / tr Σ_0 = "
            f"{stationary_mean_error(best, n_r, n_s, bias=lam):.6g}"
        )
        return text + f"; {own}: {stationary_mean_error(w, n_r, n_s, bias=lam):.6g}"
    est = getattr(config.model, "covariance_estimator", "unbiased")
    regime = FreshData(real_size=n_r, synthetic_size=n_s)
    best, err = optimal_real_weight_numeric(regime, bias=lam, covariance_estimator=est)
    at_own = expected_moments(regime, 100, bias=lam, covariance_estimator=est, real_weight=w)
    return (
        f"optimal loop.real_weight ≈ {best:.4f} (numerical, covariance fitted ({est}), n_r = "
        f"{n_r}, n_s = {n_s}, λ = {lam:g}): E||μ_100 - μ_0||² / tr Σ_0 = {err:.6g}; {own}: "
        f"{at_own.mean_error_sq_per_trace[-1]:.6g}"
    )


# -- the predictor ---------------------------------------------------------------------------------
def _applies(config: Any, regime: Regime | None) -> bool:
    """Gaussian data fitted by the Gaussian family, in a single-chain regime whose synthetic
    draws are plain samples (curation among K > 1 and correction with γ > 0 change their law:
    see :mod:`madloop.theory.curation`), unprocessed (``loop.preprocess`` has its own
    predictor, :mod:`madloop.theory.preprocess`)."""
    curation = getattr(config.loop, "curation", None)
    correction = getattr(config.loop, "correction", None)
    return (
        not getattr(config.loop, "preprocess", ())
        and config.data.source == "gaussian"
        and config.model.family == "gaussian"
        and getattr(regime, "engine", "loop") == "loop"
        and (curation is None or curation.choices == 1)
        and (correction is None or correction.strength == 0.0)
    )


def _predict(arm: str, config: Any, real: Any, regime: Regime) -> dict[str, np.ndarray]:
    return predictions(
        regime,
        config.generations,
        dim=real.dim,
        trace0=float(np.trace(real.covariance)),
        bias=config.sampling.bias,
        covariance_estimator=getattr(config.model, "covariance_estimator", "unbiased"),
        real_weight=getattr(config.loop, "real_weight", None),
        fit=getattr(config.model, "fit", "mean-and-covariance"),
    )


register_predictor(Predictor("gaussian", _applies, _predict))
