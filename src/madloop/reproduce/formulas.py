"""Closed-form references by id: what a study row's ``reference = {kind = "formula", id = ...}``
evaluates. Each is ``formula(data, arm, generation, params) -> float``, reading the sizes, the
bias and the estimator from the arm's resolved config (so quick-mode overrides cannot put a
reference out of step with its run) and anything else from ``params``.

Every formula says where it comes from in ``Formula.text`` (shown in comparison.csv's
``reference_source``). Register a new one with ``register_formula``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.registry import Registry
from madloop.reproduce.measures import StudyData


@dataclass(frozen=True)
class Formula:
    name: str
    evaluate: Callable[[StudyData, str, int, dict[str, Any]], float]
    text: str


FORMULAS: Registry[Formula] = Registry("formula")
register_formula = FORMULAS.register


def _loop(data: StudyData, arm: str) -> Any:
    return data.config(arm).loop


def _estimator(data: StudyData, arm: str) -> str:
    return getattr(data.config(arm).model, "covariance_estimator", "unbiased")


def _fully_synthetic_trace(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.gaussian import fully_synthetic_trace_ratio

    cfg = data.config(arm)
    n = _loop(data, arm).synthetic_size
    return float(fully_synthetic_trace_ratio(t, cfg.sampling.bias, n, _estimator(data, arm)))


register_formula(
    Formula(
        "fully_synthetic_trace_ratio",
        _fully_synthetic_trace,
        "E[tr Σ_t]/tr Σ_0 = λ^(t-1) (times ((n-1)/n)^t for the MLE); Alemohammad et al. 2024 §4",
    )
)


def _mle_variance(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    n = _loop(data, arm).synthetic_size
    return ((n - 1) / n) ** t


register_formula(
    Formula(
        "mle_variance",
        _mle_variance,
        "E[σ²_t]/σ²_0 = ((n-1)/n)^t, MLE refits on n samples, generation 1 the fit to real data",
    )
)


def _log_variance(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.regimes import FullySynthetic
    from madloop.theory.gaussian import log_det_drift

    cfg = data.config(arm)
    regime = FullySynthetic(synthetic_size=_loop(data, arm).synthetic_size)
    mean, _ = log_det_drift(regime, t, cfg.data.dim, bias=cfg.sampling.bias,
                            covariance_estimator=_estimator(data, arm))  # fmt: skip
    return float(mean[-1])


register_formula(
    Formula(
        "log_variance",
        _log_variance,
        "E log det Σ_t/det Σ_0 of the fully-synthetic loop: Σ_s [ψ((n-1-i)/2) + log(2/divisor)] "
        "+ d log λ per later generation (Bartlett)",
    )
)


def _mean_walk(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.gaussian import fully_synthetic_mean_error

    cfg = data.config(arm)
    n = _loop(data, arm).synthetic_size
    return float(fully_synthetic_mean_error(t, cfg.sampling.bias, n, data.trace0(arm)))


register_formula(
    Formula(
        "fully_synthetic_mean_error",
        _mean_walk,
        "E||μ_t-μ_0||² = tr Σ_0/n (1-λ^t)/(1-λ) (t/n tr Σ_0 at λ = 1); Alemohammad et al. 2024 §4",
    )
)


# -- fresh data: the error that more synthetic data can make worse, and its threshold -----------
def fresh_error(n_real: int, n_synthetic: int, bias: float, t: int, estimator: str) -> float:
    """E||μ_t - μ_0||²/tr Σ_0 + (1 - E[tr Σ_t]/tr Σ_0)² of the fresh-data loop whose generation 1
    trains on the n_real real points alone, by the exact moment recursion."""
    from madloop.regimes import FreshData
    from madloop.theory.gaussian import expected_moments

    regime = FreshData(real_size=n_real, synthetic_size=n_synthetic, initial_real_size=n_real)
    m = expected_moments(regime, t, bias=bias, covariance_estimator=estimator)
    return float(m.mean_error_sq_per_trace[-1] + (1.0 - m.trace_ratio[-1]) ** 2)


def fresh_threshold(n_real: int, bias: float, t: int, estimator: str, limit: int = 4096) -> float:
    """The smallest n_s at which generation t's :func:`fresh_error` reaches the real-only loop's
    (n_s = 0): beyond it more synthetic data makes the model worse. inf if none up to ``limit``."""
    alone = fresh_error(n_real, 0, bias, t, estimator)

    def worse(ns: int) -> bool:
        return fresh_error(n_real, ns, bias, t, estimator) >= alone

    hi = 1
    while not worse(hi):  # the error dips, then grows: double past the crossing, then bisect
        hi *= 2
        if hi > limit:
            return np.inf
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if worse(mid) else (mid, hi)
    return float(hi)


def _fresh_args(data: StudyData, arm: str, t: int) -> tuple[int, float, int, str]:
    loop = _loop(data, arm)
    if loop.regime != "fresh-data" or loop.initial_real_size != loop.real_size:
        raise ValueError(
            f"arm {arm}: the fresh-data formulas need loop.regime = 'fresh-data' and "
            "loop.initial_real_size = loop.real_size (generation 1 on the real data alone)"
        )
    return loop.real_size, data.config(arm).sampling.bias, t, _estimator(data, arm)


def _fresh_error_formula(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    n_real, bias, t, est = _fresh_args(data, arm, t)
    return fresh_error(n_real, _loop(data, arm).synthetic_size, bias, t, est)


def _fresh_threshold_formula(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    return fresh_threshold(*_fresh_args(data, arm, t))


register_formula(
    Formula(
        "fresh_error",
        _fresh_error_formula,
        "E||μ_t-μ_0||²/tr Σ_0 + (1-E[tr Σ_t]/tr Σ_0)², exact moment recursion (theory/gaussian.py)",
    )
)
register_formula(
    Formula(
        "fresh_threshold",
        _fresh_threshold_formula,
        "smallest n_s whose fresh_error at generation t reaches the real-only loop's, "
        "exact moment recursion",
    )
)


# -- the web pool's single lineage ----------------------------------------------------------------
def _real_fraction(data: StudyData, arm: str) -> tuple[float, int]:
    loop = _loop(data, arm)
    if loop.regime != "web-pool" or loop.max_age != 1 or not isinstance(loop.adoption, float):
        raise ValueError(
            f"arm {arm}: the pool formulas need loop.regime = 'web-pool', loop.max_age = 1 and "
            "a constant loop.adoption (the generated share)"
        )
    return 1.0 - loop.adoption, loop.scrape_size


def _pool_stationary(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.pool import stationary_moments

    rho, n = _real_fraction(data, arm)
    m_star, _ = stationary_moments(rho, n, bias=data.config(arm).sampling.bias)
    return m_star * float(params.get("scale", 1.0))


register_formula(
    Formula(
        "pool_stationary_mean_error",
        _pool_stationary,
        "fixed point of the single-lineage moment recursion, E||μ||²/tr Σ_0 "
        "(theory/pool.py stationary_moments)",
    )
)


# -- linear regression on its own labels (Gerstgrasser et al. 2024) -------------------------------
def _regression(data: StudyData, arm: str) -> tuple[float, int, int]:
    cfg = data.config(arm)
    fixed = cfg.data.source == "linear-regression" and cfg.data.design == "fixed"
    if not fixed or cfg.model.ridge != 0.0 or cfg.data.design_size <= cfg.data.dim + 1:
        raise ValueError(
            f"arm {arm}: the regression formulas need data.source = 'linear-regression' with "
            "data.design = 'fixed', model.ridge = 0 and data.design_size > data.dim + 1"
        )
    return cfg.data.noise_variance, cfg.data.dim, cfg.data.design_size


def _replace_excess_risk(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    sigma2, d, T = _regression(data, arm)
    return t * sigma2 * d / (T - d - 1.0)


def _accumulate_bound(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    sigma2, d, T = _regression(data, arm)
    return np.pi**2 / 6.0 * sigma2 * d / (T - d - 1.0)


register_formula(
    Formula(
        "replace_excess_risk",
        _replace_excess_risk,
        "E||ŵ_t-w*||² = t σ² d/(T-d-1), replace, fixed design of T rows, E tr (XᵀX)⁻¹ = "
        "d/(T-d-1) (Gerstgrasser et al. 2024)",
    )
)
register_formula(
    Formula(
        "accumulate_excess_risk_bound",
        _accumulate_bound,
        "π²/6 × σ² d/(T-d-1) (generation 1's risk): accumulate's σ² d/(T-d-1) Σ_{i<=t} 1/i² "
        "stays below it (Gerstgrasser et al. 2024)",
    )
)


# -- categorical laws: homozygosity, survival, top-k tails ----------------------------------------
def _law(data: StudyData, arm: str) -> tuple[np.ndarray, Any]:
    from madloop.config.schema import make_regime
    from madloop.engines import real_source

    cfg = data.config(arm)
    if cfg.data.source != "categorical" or cfg.model.family != "categorical":
        raise ValueError(f"arm {arm}: the categorical formulas need categorical data and family")
    return real_source(cfg).probabilities(), make_regime(cfg.loop)


def _fully_synthetic_sizes(data: StudyData, arm: str) -> tuple[np.ndarray, int, int]:
    p0, regime = _law(data, arm)
    cfg = data.config(arm)
    if regime.name != "fully-synthetic" or cfg.sampling.bias != 1.0 or cfg.model.alpha != 0:
        raise ValueError(
            f"arm {arm}: this formula needs loop.regime = 'fully-synthetic', sampling.bias = 1 "
            "and model.alpha = 0 (the counting MLE)"
        )
    return p0, regime.n_initial(), regime.n_synthetic(2)


def _homozygosity(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.discrete import homozygosity, homozygosity_recursion

    p0, n1, n = _fully_synthetic_sizes(data, arm)
    return float(homozygosity_recursion(float(homozygosity(p0)), t, n, n1)[-1])


def _support_bound(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.discrete import expected_support_lower_bound

    p0, n1, n = _fully_synthetic_sizes(data, arm)
    if n1 != n:
        raise ValueError(f"arm {arm}: Suresh et al.'s bound needs n draws in every generation")
    return float(expected_support_lower_bound(p0, t, n)[-1])


def _top_k(data: StudyData, arm: str) -> tuple[np.ndarray, int, Any]:
    p0, regime = _law(data, arm)
    k = data.config(arm).sampling.top_k
    if k is None:
        raise ValueError(f"arm {arm}: the top-k formulas need sampling.top_k")
    return p0, k, regime


def _top_k_floor(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.discrete import top_k_mass

    p0, k, _ = _top_k(data, arm)
    return 1.0 - top_k_mass(p0, k)


def _top_k_missing(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.discrete import top_k_missing_mass

    p0, k, regime = _top_k(data, arm)
    temperature = data.config(arm).sampling.bias  # the categorical family's T = λ
    return top_k_missing_mass(p0, k, regime.training_size(2), temperature=temperature)


register_formula(
    Formula(
        "homozygosity_recursion",
        _homozygosity,
        "S_t = 1 - (1-1/n)^t (1-S_0), S = Σ p², fully-synthetic MLE on n draws a generation "
        "(Seddik et al. 2024)",
    )
)
register_formula(
    Formula(
        "support_size_lower_bound",
        _support_bound,
        "Σ_i E[1 - exp(-c_i/(t-1))], c_i ~ Bin(n, p_i) the first sample's counts: a symbol seen "
        "c times survives k generations with probability >= 1 - e^(-c/k) (Suresh et al. 2025)",
    )
)
register_formula(
    Formula(
        "top_k_floor",
        _top_k_floor,
        "1 - P_k, the real mass beyond the k most likely symbols: a top-k model keeps at most k "
        "symbols, so missing_mass_t >= 1 - P_k for t >= 2 (Dohmatob et al. 2024)",
    )
)
register_formula(
    Formula(
        "top_k_missing_mass",
        _top_k_missing,
        "Σ_{i<=k} p_i (1 - p_i/P_k)^m + Σ_{i>k} p_i, m draws of the top-k truncated true law "
        "(Dohmatob et al. 2024); generation 2 of the loop only approximately (it truncates "
        "generation 1's fit)",
    )
)


# -- reward curation: the K -> ∞ limit ------------------------------------------------------------
def _curation_limit(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.engines import real_source
    from madloop.theory.curation import limit_mean_reward

    cfg = data.config(arm)
    cur = getattr(cfg.loop, "curation", None)
    if cfg.loop.regime != "fully-synthetic" or cur is None or cur.reward != "linear":
        raise ValueError(
            f"arm {arm}: the curation limit needs loop.regime = 'fully-synthetic' and "
            "loop.curation with reward = 'linear'"
        )
    real = real_source(cfg)
    limit = limit_mean_reward(t, mean0=real.mean, cov0=real.covariance,
                              direction=np.asarray(cur.direction, dtype=float),
                              bias=cfg.sampling.bias, scale=cur.scale)  # fmt: skip
    return float(limit[-1])


register_formula(
    Formula(
        "curation_limit_mean_reward",
        _curation_limit,
        "K -> ∞ limit E[a·μ_t] = a·μ_0 + βλ aᵀΣ_0a Σ_{j<t} λ^(j-1), exact at finite n "
        "(unbiased fit; Ferbach et al. 2024; theory/curation.py limit_mean_reward)",
    )
)


# -- weighted real data: the golden ratio (He, Xu, Cheng 2025) ------------------------------------
def _weighted(data: StudyData, arm: str) -> tuple[float | None, int, int, float]:
    cfg = data.config(arm)
    loop = cfg.loop
    if loop.regime != "fresh-data" or getattr(cfg.model, "fit", None) != "mean":
        raise ValueError(
            f"arm {arm}: the real-weight formulas need loop.regime = 'fresh-data' and "
            "model.fit = 'mean' (the covariance known)"
        )
    return loop.real_weight, loop.real_size, loop.synthetic_size, cfg.sampling.bias


def _stationary_weighted(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.gaussian import stationary_mean_error

    w, n_r, n_s, bias = _weighted(data, arm)
    if w is None:
        raise ValueError(f"arm {arm}: stationary_weighted_mean_error needs loop.real_weight")
    return stationary_mean_error(w, n_r, n_s, bias=bias)


def _optimal_weight(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.gaussian import optimal_real_weight

    _, n_r, n_s, bias = _weighted(data, arm)
    return optimal_real_weight(n_r, n_s, bias=bias)


register_formula(
    Formula(
        "stationary_weighted_mean_error",
        _stationary_weighted,
        "lim E||μ_t-μ_0||²/tr Σ_0 = ((1-w)² λ/n_s + w²/n_r)/(1-(1-w)²), real rows weighing w "
        "(He, Xu, Cheng 2025)",
    )
)
register_formula(
    Formula(
        "optimal_real_weight",
        _optimal_weight,
        "argmin_w of the stationary error: 1 - u, u = 1 + r/2 - sqrt(r + r²/4), r = λ n_r/n_s "
        "(1/φ at r = 1; He, Xu, Cheng 2025)",
    )
)


# -- processing: the share a clip removes ---------------------------------------------------------
def _clip_removed_share(data: StudyData, arm: str, t: int, params: dict[str, Any]) -> float:
    from madloop.theory.preprocess import clip_share

    cfg = data.config(arm)
    steps = [s for s in getattr(cfg.loop, "preprocess", ()) if s.step == "clip"]
    if len(steps) != 1 or len(cfg.loop.preprocess) != 1 or steps[0].radius is None:
        raise ValueError(
            f"arm {arm}: clip_removed_share needs loop.preprocess = one clip step with radius"
        )
    return 1.0 - clip_share(steps[0].radius, cfg.data.dim)


register_formula(
    Formula(
        "clip_removed_share",
        _clip_removed_share,
        "share outside Mahalanobis radius k of a d-dim Gaussian, 1 - P(d/2, k²/2) "
        "(theory/preprocess.py clip_share; the n -> ∞ limit of the plug-in clip)",
    )
)
