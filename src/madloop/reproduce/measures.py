"""What a study row measures, by name: a function of one arm's per-chain metrics at a generation,
returning the mean over replicate chains and its standard error.

A measure is ``Measure(name, value, theory)``: ``value(data, arm, generation, row)`` ->
``(mean, std_error)``, and optionally ``theory(data, arm, generation, row)``, the same quantity
computed from madloop's ``theory`` column (what a row's ``reference.kind = "theory"`` reads).
Register a new one with ``register_measure``; a study names it with ``measure = "..."``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from madloop.registry import Registry


@dataclass
class StudyData:
    """A study's run: each arm's resolved config, the long metric table and the summary."""

    configs: dict[str, Any]
    metrics: pd.DataFrame
    summary: pd.DataFrame
    real_traces: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keyed = self.metrics.sort_values(["arm", "metric", "generation", "replicate"])
        self._values = {
            key: g["value"].to_numpy(float)
            for key, g in keyed.groupby(["arm", "metric", "generation"], sort=False)
        }
        self._theory = {
            (r.arm, r.metric, int(r.generation)): float(r.theory) for r in self.summary.itertuples()
        }

    def values(self, arm: str, metric: str, generation: int) -> np.ndarray:
        """Per-chain values (replicate order; NaN for a stopped chain)."""
        key = (arm, metric, int(generation))
        if key not in self._values:
            raise KeyError(f"arm {arm!r} has no metric {metric!r} at generation {generation}")
        return self._values[key]

    def theory(self, arm: str, metric: str, generation: int) -> float:
        return self._theory.get((arm, metric, int(generation)), np.nan)

    def config(self, label: str) -> Any:
        """The config of an arm, or of the arm of a label ``arm:lineage`` (web-pool lineages)."""
        return self.configs[label] if label in self.configs else self.configs[label.split(":")[0]]

    def generations(self, arm: str) -> int:
        return int(self.config(arm).generations)

    def trace0(self, arm: str) -> float:
        return self.real_traces[arm.split(":")[0] if arm not in self.real_traces else arm]


def mean_and_error(v: np.ndarray) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if v.size < 2:
        return (float(v.mean()) if v.size else np.nan), np.nan
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


Value = Callable[[StudyData, str, int, Any], tuple[float, float]]
Theory = Callable[[StudyData, str, int, Any], float]


@dataclass(frozen=True)
class Measure:
    name: str
    value: Value
    theory: Theory | None = None
    label: str = ""  # the y axis of the figure


MEASURES: Registry[Measure] = Registry("measure")
register_measure = MEASURES.register


# -- metric: one metric of the run, optionally per tr Σ_0, as an increment since a generation -----
# (``since``: a generation, or "previous" for the one before) and as a difference from another
# arm (``minus_arm``: chain by chain, paired by replicate, so the standard error is the paired
# one; arms of one experiment share their seed and so their real data)
def _metric_scale(data: StudyData, arm: str, row: Any) -> float:
    scale = float(row.params.get("scale", 1.0))
    return scale / data.trace0(arm) if row.params.get("per_trace", False) else scale


def _since(row: Any, generation: int) -> int | None:
    since = row.params.get("since")
    return generation - 1 if since == "previous" else since


def _arm_values(data: StudyData, arm: str, generation: int, row: Any) -> np.ndarray:
    v = data.values(arm, row.metric, generation)
    since = _since(row, generation)
    if since == generation - 1 and row.params.get("since") == "previous" and since < 1:
        try:  # a metric without generation 0 has no increment at generation 1 (NaN: no point)
            data.values(arm, row.metric, since)
        except KeyError:
            return np.full_like(v, np.nan)
    if since is not None:
        v = v - data.values(arm, row.metric, since)
    return v * _metric_scale(data, arm, row)


def _metric_value(data: StudyData, arm: str, generation: int, row: Any) -> tuple[float, float]:
    v = _arm_values(data, arm, generation, row)
    other = row.params.get("minus_arm")
    if other is not None:
        w = _arm_values(data, other, generation, row)
        if w.shape != v.shape:
            raise ValueError(f"minus_arm {other!r}: its replicates differ from arm {arm!r}'s")
        v = v - w
    return mean_and_error(v)


def _arm_theory(data: StudyData, arm: str, generation: int, row: Any) -> float:
    value = data.theory(arm, row.metric, generation)
    since = _since(row, generation)
    if since is not None:
        value -= data.theory(arm, row.metric, since)
    return value * _metric_scale(data, arm, row)


def _metric_theory(data: StudyData, arm: str, generation: int, row: Any) -> float:
    value = _arm_theory(data, arm, generation, row)
    other = row.params.get("minus_arm")
    return value if other is None else value - _arm_theory(data, other, generation, row)


register_measure(Measure("metric", _metric_value, _metric_theory))


# -- tail_mass: a 1-D model's mass beyond c σ_0 of the real mean, over the real law's ------------
def tail_mass(
    mean_error_sq: np.ndarray, trace_ratio: np.ndarray, beyond: float, *, log: bool = False
) -> np.ndarray:
    """P(|X - μ_0| > c σ_0) for X ~ N(μ_t, σ_t²) (in units of σ_0: |μ_t - μ_0| = sqrt of the
    squared mean error, σ_t² = the trace ratio), divided by the real law's 2 Φ(-c). With
    ``mean_error_sq = 0``: the mass beyond c σ_0 of the model's own mean (its shape alone).
    ``log``: its logarithm, from log-survival functions, so a collapsed chain's mass (far below
    the smallest double) stays finite instead of dropping out as log 0."""
    shift = np.sqrt(mean_error_sq)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(trace_ratio)
        upper, lower = (beyond - shift) / sd, (-beyond - shift) / sd
        if log:
            both = np.logaddexp(norm.logsf(upper), norm.logcdf(lower))
            return both - np.log(2.0 * norm.sf(beyond))
        return (norm.sf(upper) + norm.cdf(lower)) / (2.0 * norm.sf(beyond))


def _tail_value(data: StudyData, arm: str, generation: int, row: Any) -> tuple[float, float]:
    if data.config(arm).data.dim != 1:
        raise ValueError("measure tail_mass needs one-dimensional data (data.dim = 1)")
    tr = data.values(arm, "trace_ratio", generation)
    if row.params.get("centered", False):  # about the model's own mean: the spread alone
        mes = np.zeros_like(tr)
    else:  # ||μ_t - μ_0||² in units of σ_0² = tr Σ_0 (one dimension)
        mes = data.values(arm, "mean_error_sq", generation) / data.trace0(arm)
    beyond = float(row.params.get("beyond", 2.0))
    # log: the typical chain's mass, not the mean's (the few wide chains dominate the mean)
    return mean_and_error(tail_mass(mes, tr, beyond, log=bool(row.params.get("log", False))))


register_measure(Measure("tail_mass", _tail_value, label="tail mass / real tail mass"))


# -- fresh_error: E||μ_t - μ_0||²/tr Σ_0 + (1 - E[tr Σ_t]/tr Σ_0)² --------------------------------
def _fresh_error(data: StudyData, arm: str, generation: int, row: Any) -> tuple[float, float]:
    """The mean error plus the squared bias of the spread; both terms have closed forms in the
    exact recursion (:func:`madloop.theory.gaussian.expected_moments`). The squared mean of the
    trace ratio is debiased (minus its squared standard error) and the standard error is the
    delta method's over the chains' joint spread of the two metrics."""
    m = data.values(arm, "mean_error_sq", generation) / data.trace0(arm)
    b = data.values(arm, "trace_ratio", generation)
    ok = np.isfinite(m) & np.isfinite(b)
    m, b = m[ok], b[ok]
    n = m.size
    gap = 1.0 - b.mean()
    value = m.mean() + gap**2 - b.var(ddof=1) / n
    grad = np.array([1.0, -2.0 * gap])
    cov = np.cov(np.vstack([m, b]), ddof=1) / n
    return float(value), float(np.sqrt(grad @ cov @ grad))


register_measure(
    Measure("fresh_error", _fresh_error, label=r"$E\|\mu_t-\mu_0\|^2/$tr$\Sigma_0$ + bias$^2$")
)


# -- closed_form: a formula's own value, no simulation --------------------------------------------
def _closed_form(data: StudyData, arm: str, generation: int, row: Any) -> tuple[float, float]:
    """The closed form ``params.id`` at the arm (standard error 0): for a row that checks one
    closed form against another or a constant, e.g. an optimum against 1/φ. Imported here, not
    at the top: the formulas read :class:`StudyData` from this module."""
    from madloop.reproduce.formulas import FORMULAS

    formula = row.params.get("id")
    if formula not in FORMULAS:
        raise ValueError(f"measure closed_form needs params.id = a formula, got {formula!r}")
    return float(FORMULAS[formula].evaluate(data, arm, generation, row.params)), 0.0


register_measure(Measure("closed_form", _closed_form, label="closed form"))
