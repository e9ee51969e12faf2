"""Theory of ``loop.preprocess`` for the Gaussian fully-synthetic loop: a clip keeps a truncated
Gaussian, so the variance falls by a fixed factor every generation even without sampling bias.

**Population clip (exact).** For x ~ N(μ, Σ) in d dimensions, r² = (x-μ)^T Σ^{-1} (x-μ) ~ χ²_d.
Keeping r < k keeps the share p(k, d) = P(d/2, k²/2) and, by symmetry, a law with mean μ and
covariance c(k, d) Σ, where

    c(k, d) = E[χ²_d | χ²_d < k²] / d = P(d/2 + 1, k²/2) / P(d/2, k²/2)

(P the regularised lower incomplete gamma, ``scipy.special.gammainc``).

**Plug-in clip (what the loop does).** The loop clips at the radius measured with the training
set's *own* sample mean x̄ and unbiased covariance S, then fits the kept rows. The whitened
residuals u_i = S^{-1/2}(x_i - x̄) of a Gaussian sample are ancillary: their law depends on
(n, d) only and is rotation invariant, and (x̄, S) is complete sufficient, so (Basu) they are
independent of (x̄, S). The kept rows' covariance is S^{1/2} M S^{1/2} with M the kept u's
covariance, E[M] = c_n(k, d) I, hence exactly

    E[Σ_t | Σ_{t-1}] = c_n(k, d) λ Σ_{t-1},   E[Σ_t] = c_n^{t_c} λ^{t-1} Σ_0,

t_c the number of clipped generations up to t (t for ``applies_to = "all"``, t - 1 for
``"synthetic"``, 1 for ``"real"``). c_n has no closed form; this module uses its n -> ∞ limit
c(k, d) (**approximate**: the measured relative error of c per generation is +1.0% at n = 100
and -0.05% to +0.2% at n = 1000 for k = 2, d = 2; tests/test_preprocess.py). ``keep = q`` is the
same with the radius of the q quantile, k² = χ²_d quantile(q) (again n -> ∞).

**Standardise (exact for the trace).** Each coordinate is mapped to the real law's mean and
standard deviation using the kept rows' own unbiased spread, so the unbiased fit has diag Σ_t =
diag Σ_0 exactly: trace_ratio = 1 after it (a later clip multiplies it by c again).
**Align** is a rotation: the trace is unchanged. **Dedup at tolerance 0** removes nothing from
draws of a continuous law (almost surely): the identity. **Dedup with a tolerance > 0** has no
theory here (it thins the dense core, so it *raises* the spread a little): no prediction.
Only ``trace_ratio`` is predicted; the mean error, the log-det drift and the other regimes (a
union of real and synthetic rows is a mixture, not a Gaussian) have no prediction with steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import chdtri, gammainc

from madloop.regimes import Regime
from madloop.theory.registry import Predictor, register_predictor


def clip_share(radius: float, dim: int) -> float:
    """p(k, d) = P(χ²_d < k²): the share a population clip at radius k keeps."""
    return float(gammainc(dim / 2.0, radius * radius / 2.0))


def clip_factor(radius: float, dim: int) -> float:
    """c(k, d) = P(d/2 + 1, k²/2) / P(d/2, k²/2): the covariance factor of N(μ, Σ) clipped at
    Mahalanobis radius k."""
    x = radius * radius / 2.0
    return float(gammainc(dim / 2.0 + 1.0, x) / gammainc(dim / 2.0, x))


def keep_radius(keep: float, dim: int) -> float:
    """The radius whose population clip keeps the share q (the χ²_d quantile's square root)."""
    return float(np.sqrt(chdtri(dim, 1.0 - keep))) if keep < 1.0 else np.inf


def step_factor(step: Any, dim: int) -> float | None:
    """The trace factor of one step (None: the step resets the trace to the real one;
    NaN: no theory)."""
    if step.step == "clip":
        radius = step.radius if step.radius is not None else keep_radius(step.keep, dim)
        return 1.0 if not np.isfinite(radius) else clip_factor(radius, dim)
    if step.step == "standardise":
        return None
    if step.step == "align" or (step.step == "dedup" and step.tolerance == 0.0):
        return 1.0
    return np.nan


def applies_at(step: Any, generation: int) -> bool:
    """Whether a step sees the fully-synthetic loop's training set of ``generation`` (real at
    generation 1, synthetic after)."""
    source = "real" if generation == 1 else "synthetic"
    return step.applies_to in ("all", source)


def expected_trace_ratio(steps: tuple, generations: int, *, dim: int, bias: float) -> np.ndarray:
    """E[tr Σ_t]/tr Σ_0, t = 1..T, of the fully-synthetic Gaussian loop with ``steps``: per
    generation b <- λ b (t > 1), then each step that sees the set: clip b <- c b, standardise
    b <- 1 (see the module docstring for what is exact). Two clips of one generation's set have
    no prediction (NaN): the second clips a truncated law, not a Gaussian."""
    out, b = [], 1.0
    for t in range(1, generations + 1):
        if t > 1:
            b *= bias
        seen = [s for s in steps if applies_at(s, t)]
        if sum(s.step == "clip" for s in seen) > 1:  # a clip of a clipped set: not Gaussian
            b = np.nan
        for step in seen:
            factor = step_factor(step, dim)
            b = 1.0 if factor is None else b * factor
        out.append(b)
    return np.asarray(out)


def _applies(config: Any, regime: Regime) -> bool:
    """The Gaussian family on Gaussian data, fully synthetic, unbiased fit, with steps."""
    steps = getattr(config.loop, "preprocess", ())
    return (
        bool(steps)
        and config.data.source == "gaussian"
        and config.model.family == "gaussian"
        and regime.name == "fully-synthetic"
        and getattr(config.model, "covariance_estimator", "unbiased") == "unbiased"
    )


def _predict(arm: str, config: Any, real: Any, regime: Regime) -> dict[str, np.ndarray]:
    steps = config.loop.preprocess
    trace = expected_trace_ratio(steps, config.generations, dim=real.dim, bias=config.sampling.bias)
    return {} if np.isnan(trace).all() else {"trace_ratio": trace}


register_predictor(Predictor("preprocess", _applies, _predict))
