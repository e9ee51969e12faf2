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
