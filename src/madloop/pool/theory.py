"""The Gaussian theory of web-pool arms (:mod:`madloop.theory.pool` does the maths): the
``theory`` column per lineage, and the collapse boundary over (adoption, detector TPR)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from madloop.config import Arm
from madloop.engines import real_source
from madloop.pool.engine import lineage_arm
from madloop.pool.regime import WebPool
from madloop.theory import Predictor, predictions_frame, register_predictor
from madloop.theory.pool import LineageLaw, pool_moments

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class PoolTheory:
    """Expected metrics per lineage name -> metric -> (T,) and the arm labels."""

    values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


def pool_theory(
    arm: Arm, generations: int | None = None, **loop_overrides: Any
) -> PoolTheory | None:
    """The Gaussian theory of a web-pool arm (None where it does not apply: non-Gaussian data or
    lineage, or curation). ``loop_overrides`` replace [loop] fields (e.g. ``adoption``)."""
    cfg = arm.config
    if cfg.data.source != "gaussian":
        return None
    loop = cfg.loop.model_dump()
    loop.update(loop_overrides)
    regime = WebPool(**loop)
    if regime.cfg.curation.keep < 1:
        return None
    specs = regime.resolve(cfg.model, cfg.sampling.bias)
    if any(s.model.family != "gaussian" for s in specs):
        return None
    real = real_source(cfg)
    trace0 = float(np.trace(real.covariance))
    laws = [
        LineageLaw(
            s.name,
            s.scrape_size,
            s.lag,
            s.bias,
            getattr(s.model, "covariance_estimator", "unbiased"),
        )
        for s in specs
    ]
    sched, det = regime.schedule(), regime.detector()
    T = generations or cfg.generations
    raw = pool_moments(
        laws,
        sched.reachable,
        det.keep_probability,
        T,
        refill=regime.cfg.refill,
        scrape=regime.cfg.scrape,
        min_train=regime.cfg.min_train_size,
        max_age=regime.cfg.max_age,
    )
    out = PoolTheory()
    for s in specs:
        v = raw[s.name]
        out.values[s.name] = {
            "trace_ratio": v["trace_ratio"],
            "mean_error_sq": v["mean_error_sq_per_trace"] * trace0,
            "synthetic_share": v["synthetic_share"],
        }
        out.labels[s.name] = lineage_arm(arm.name, s.name, len(specs))
    return out


def pool_theory_frame(arm: Arm) -> pd.DataFrame:
    """The theory table (arm label, generation, metric, theory) of one web-pool arm."""
    return predictions_frame([(arm.name, arm.config, lambda: real_source(arm.config), None)])


def _applies(config: Any, regime: Any) -> bool:
    return config.loop.regime == WebPool.name


def _predict(arm: str, config: Any, real: Any, regime: Any) -> dict[str, dict[str, np.ndarray]]:
    th = pool_theory(Arm(arm, config))
    if th is None:
        return {}
    return {th.labels[name]: metrics for name, metrics in th.values.items()}


register_predictor(Predictor("web-pool", _applies, _predict, labels=True))


def phase_boundary(
    arm: Arm,
    adoptions: list[float] | np.ndarray,
    *,
    tolerance: float = 2.0,
    generation: int | None = None,
    lineage: str | None = None,
) -> pd.DataFrame:
    """The theory's collapse boundary over (adoption, detector TPR) for a web-pool arm: for each
    constant adoption share, the TPR at which the expected ``mean_error_sq`` at ``generation``
    (default the last) equals ``tolerance`` x the fresh-data level tr Σ_0 / n. Below that TPR the
    error is larger. ``critical_tpr`` is 0 where no detector is needed and NaN where even a
    perfect detector is not enough. Also gives the stationary closed form
    (:func:`madloop.theory.pool.critical_tpr`) for comparison."""
    import pandas as pd
    from scipy import optimize

    from madloop.theory.pool import critical_tpr

    cfg = arm.config
    T = generation or cfg.generations
    real = real_source(cfg)
    trace0 = float(np.trace(real.covariance))
    regime = WebPool(**cfg.loop.model_dump())
    specs = regime.resolve(cfg.model, cfg.sampling.bias)
    spec = specs[0] if lineage is None else next(s for s in specs if s.name == lineage)
    level = tolerance * trace0 / spec.scrape_size
    detector = cfg.loop.detector.model_dump()

    def error(a: float, tpr: float) -> float:
        th = pool_theory(arm, T, adoption=float(a), detector={**detector, "tpr": float(tpr)})
        assert th is not None, (
            "phase_boundary needs the Gaussian theory (Gaussian data, no curation)"
        )
        return float(th.values[spec.name]["mean_error_sq"][T - 1]) - level

    rows = []
    for a in adoptions:
        lo, hi = error(a, 0.0), error(a, 1.0)
        if lo <= 0:
            tpr = 0.0
        elif hi > 0 or not np.isfinite(hi):
            tpr = np.nan
        else:
            tpr = float(optimize.brentq(lambda x, a=a: error(a, x), 0.0, 1.0, xtol=1e-6))
        rows.append(
            {
                "adoption": float(a),
                "critical_tpr": tpr,
                "stationary_critical_tpr": float(
                    critical_tpr(
                        a,
                        n=spec.scrape_size,
                        fpr=cfg.loop.detector.fpr,
                        bias=spec.bias,
                        tolerance=tolerance,
                        estimator=getattr(spec.model, "covariance_estimator", "unbiased"),
                    )
                ),
            }
        )
    return pd.DataFrame(rows)
