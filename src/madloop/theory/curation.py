"""Reward-curated Gaussian loops (Ferbach et al. 2024): what a Luce choice among K does to
N(μ, Σ) under a linear reward r(x) = a·x, scaled by β (``loop.curation``).

**One curated draw.** Candidates are drawn from the sampled law N(μ, λΣ); with s² = λ aᵀΣa and
u = λΣa / s, a candidate is μ + u z + w, z ~ N(0, 1) its standardised reward and w independent of
z. The Luce choice (k with probability ∝ exp(β a·x_k) = exp(c z_k), c = β s) picks by z alone, so
the curated point is μ + u Z_K + w, Z_K the chosen z, whose mean m(K, c) and variance v(K, c)
give the curated law's moments exactly:

    mean μ + u m(K, c),   covariance λΣ - u uᵀ (1 - v(K, c)).

With 1/(A + S) = ∫_0^∞ e^{-t(A+S)} dt, for the K iid z_k,
E g(Z_K) = K ∫_0^∞ E[g(z) e^{cz} e^{-t e^{cz}}] L(t)^(K-1) dt with L(t) = E e^{-t e^{cz}}: a
double integral (z and log t, trapezoid rule), exact to quadrature (``luce_normal_moments``).
K = 1 gives (0, 1); K -> ∞ gives (c, 1): the tilted law p e^{βr} = N(μ + βλΣa, λΣ) (Ferbach et
al.'s K -> ∞ limit p_{t+1} ∝ p_t e^{r}); c = 0 gives (0, 1).

**The loop** (``population_recursion``). A Gaussian fitted to n -> ∞ points is their law's mean
and covariance, so with every batch size large (fixed ratios) the loop is the deterministic
recursion of batch moments through the regime's recipe: a real batch has (μ_0, Σ_0), a synthetic
batch the curated moments above, a union pools them (mean of means, covariance = mean of
within + between), a uniform subsample keeps the law. This is exact as n -> ∞ and the O(1/n)
approximation of E[μ_t], E[Σ_t] for finite n (the fitted Σ is random and the curated shift is not
linear in it; the noise of the fitted mean has mean zero). ``mean_reward_t`` = a·μ_t (the model's
own samples are not curated) and ``trace_ratio_t`` = tr Σ_t / tr Σ_0.

**Exact at finite n in the K -> ∞ limit, fully-synthetic** (``limit_mean_reward``): the curated
draws are exactly N(μ_{t-1} + βλΣ_{t-1}a, λΣ_{t-1}), so the fit's scatter is the uncurated one and
E[Σ_t] = b_t Σ_0 as without curation (b_t = λ^(t-1), unbiased estimator); the fitted mean is
linear in Σ_{t-1}, so E[a·μ_t] = a·μ_0 + βλ aᵀΣ_0a Σ_{j=1}^{t-1} b_j. Each generation raises the
expected reward (m(K, c) >= 0 for c >= 0): Ferbach et al.'s monotone improvement. With real data
in every generation (fresh-data, synthetic-augmentation) a share w of each training set stays at
the real law and the shift a·(μ_t - μ_0) settles at a finite fixed point of the recursion.

Quadratic and classifier rewards have no closed form here (sample-based tests only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.regimes import Draw, Kept, Regime
from madloop.theory.registry import Predictor, register_predictor

#: above this c = β s the Luce choice is taken as the argmax of the K candidates (c -> ∞); at
#: c = 20 the mean differs from the argmax's by about 0.2 % (K = 8)
HARD_CHOICE = 20.0


def luce_normal_moments(choices: int | None, c: float) -> tuple[float, float]:
    """(mean, variance) of the z that a Luce choice with weights e^{c z} picks among ``choices``
    iid N(0, 1) (None: K -> ∞, the tilted N(c, 1))."""
    sign, c = (1.0 if c >= 0 else -1.0), abs(float(c))  # c < 0 picks -z: the law mirrored
    if choices is None:
        return sign * c, 1.0
    K = int(choices)
    if K == 1 or c == 0.0:
        return 0.0, 1.0
    top = max(c, float(np.sqrt(2.0 * np.log(K)))) + 9.0
    if c > HARD_CHOICE:  # the cost below grows as c^4: take the argmax (c -> ∞) instead
        from scipy.special import ndtr

        z = np.arange(-9.0, float(np.sqrt(2.0 * np.log(K))) + 9.0, 1e-3)
        density = K * np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi) * ndtr(z) ** (K - 1) * 1e-3
        mean = float(density @ z)
        return sign * mean, float(density @ (z * z)) - mean * mean
    dz = min(0.05, 0.25 / c)  # the kernel's width in z is about 1/c; trapezoid rules converge
    z = np.arange(-9.0, top, dz)  # geometrically on such smooth integrands
    weight = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi) * dz
    dw = 0.1 * max(1.0, c / 5.0)  # both integrands are about c wide in log t
    w = np.arange(-45.0 - c * top, 12.0 + 9.0 * c, dw)
    x = np.minimum(w[:, None] + c * z[None, :], 700.0)  # log(t e^{cz}), (W, Z)
    ex = np.exp(x)
    L = np.exp(-ex) @ weight  # E e^{-t e^{cz}} per t
    kernel = np.exp(x - ex) * weight  # t e^{cz} e^{-t e^{cz}} φ(z) dz: the dt = t dw integrand
    with np.errstate(divide="ignore"):
        power = np.exp((K - 1) * np.log(L))
    moments = [K * dw * float(power @ (kernel @ z**p)) for p in range(3)]
    m0, m1, m2 = moments
    mean = m1 / m0  # m0 = 1 up to quadrature error: normalise by it
    return sign * mean, m2 / m0 - mean * mean


@dataclass
class _Batch:
    """A batch's law in the n -> ∞ limit: its share and its mean and covariance."""

    count: float
    mean: np.ndarray
    cov: np.ndarray


def union(batches: list[_Batch]) -> _Batch:
    """The pooled law: mean of means, covariance = mean (within + between)."""
    batches = [b for b in batches if b.count > 0]
    m = sum(b.count for b in batches)
    mean = sum(b.count * b.mean for b in batches) / m
    second = sum(b.count * (b.cov + np.outer(b.mean, b.mean)) for b in batches) / m
    return _Batch(m, mean, second - np.outer(mean, mean))


def curated_law(
    mean: np.ndarray,
    cov: np.ndarray,
    direction: np.ndarray,
    *,
    bias: float,
    choices: int | None,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of one curated draw from N(mean, bias·cov) (module docstring)."""
    sampled = bias * cov
    with np.errstate(over="ignore", invalid="ignore"):
        s2 = float(direction @ sampled @ direction)
    if not np.isfinite(s2):  # a reward beyond floating point: no prediction
        return np.full_like(mean, np.nan), np.full_like(sampled, np.nan)
    if s2 <= 0.0:
        return mean.copy(), sampled
    s = np.sqrt(s2)
    u = sampled @ direction / s
    m, v = luce_normal_moments(choices, scale * s)
    return mean + u * m, sampled - np.outer(u, u) * (1.0 - v)


@dataclass
class CurationPrediction:
    mean_reward: np.ndarray  # a·μ_t
    trace_ratio: np.ndarray  # tr Σ_t / tr Σ_0


def population_recursion(
    regime: Regime,
    generations: int,
    *,
    mean0: np.ndarray,
    cov0: np.ndarray,
    direction: np.ndarray,
    bias: float = 1.0,
    choices: int | None = 2,
    scale: float = 1.0,
) -> CurationPrediction:
    """The n -> ∞ recursion of the model's moments through the regime's recipe (docstring)."""
    a = np.asarray(direction, dtype=float)
    mean0, cov0 = np.asarray(mean0, dtype=float), np.asarray(cov0, dtype=float)
    real = (mean0, cov0)
    model = real
    kept: dict[str, _Batch] = {}
    rewards, traces = [], []
    for t in range(1, generations + 1):
        comp = regime.compose(t)
        drawn: dict[int, _Batch] = {}
        curated = curated_law(*model, a, bias=bias, choices=choices, scale=scale)

        def law(part: Any, t: int = t, drawn: dict = drawn, curated: tuple = curated) -> _Batch:
            if isinstance(part, Kept):
                return kept[part.name]
            if id(part) not in drawn:
                source = real if part.source == "real" or t == 1 else curated
                drawn[id(part)] = _Batch(float(part.size), *source)
            return drawn[id(part)]

        train = union([law(p) for p in comp.parts if not (isinstance(p, Draw) and p.size == 0)])
        for name, parts in comp.keep.items():
            kept[name] = union([law(p) for p in parts])
        model = (train.mean, train.cov)
        rewards.append(float(a @ train.mean))
        traces.append(float(np.trace(train.cov) / np.trace(cov0)))
    return CurationPrediction(np.asarray(rewards), np.asarray(traces))


def limit_mean_reward(
    generations: int, *, mean0: np.ndarray, cov0: np.ndarray, direction: np.ndarray,
    bias: float = 1.0, scale: float = 1.0,
) -> np.ndarray:  # fmt: skip
    """E[a·μ_t], t = 1..T, of the fully-synthetic loop in the K -> ∞ limit, exact for any n with
    the unbiased covariance: a·μ_0 + βλ aᵀΣ_0a Σ_{j<t} λ^(j-1)."""
    a = np.asarray(direction, dtype=float)
    q0 = float(a @ np.asarray(cov0) @ a)
    t = np.arange(1, generations + 1)
    b = bias ** (t - 1.0)  # E[Σ_t] = b_t Σ_0
    steps = np.concatenate([[0.0], np.cumsum(b)[:-1]])
    return float(a @ np.asarray(mean0)) + scale * bias * q0 * steps


def fresh_data_limit_shift(
    real_share: float, *, q0: float, bias: float = 1.0, scale: float = 1.0
) -> float:
    """The bound on the reward shift a·(μ_t - μ_0) when a share w = ``real_share`` of every
    training set is new real data (fresh-data, or synthetic-augmentation as n -> ∞), q0 = aᵀΣ_0a.

    In the K -> ∞ limit the recursion of (D_t = a·(μ_t - μ_0), q_t = aᵀΣ_t a) is
    D_t = (1-w)(D_{t-1} + βλ q_{t-1}), q_t = w q0 + (1-w) λ q_{t-1} + w(1-w)(D_{t-1} + βλq_{t-1})²
    (the pooled covariance gains the between-batch term). Both increase from (0, q0) to the
    smallest fixed point: q* = (B - √(B² - 4AC)) / 2A with A = (1-w)β²λ²/w, B = 1 - (1-w)λ,
    C = w q0, and D* = (1-w)βλ q* / w. A finite K shifts less (m(K, c) <= c and v <= 1), so D*
    bounds every K. Returns inf when there is no fixed point (too little real data for the
    reward's strength: the pooled variance and the shift grow without bound)."""
    w, lam, beta = float(real_share), float(bias), float(scale)
    if w <= 0.0:
        return float("inf")
    A = (1.0 - w) * beta**2 * lam**2 / w
    B = 1.0 - (1.0 - w) * lam
    C = w * q0
    if A == 0.0:
        return 0.0
    disc = B * B - 4.0 * A * C
    if B <= 0.0 or disc < 0.0:
        return float("inf")
    q = (B - np.sqrt(disc)) / (2.0 * A)
    return (1.0 - w) * beta * lam * q / w


# -- the predictor ---------------------------------------------------------------------------------
def _applies(config: Any, regime: Regime) -> bool:
    """Gaussian data and family, a single-chain regime, linear-reward curation, no correction."""
    curation = getattr(config.loop, "curation", None)
    return (
        config.data.source == "gaussian"
        and config.model.family == "gaussian"
        and getattr(regime, "engine", "loop") == "loop"
        and curation is not None
        and curation.reward == "linear"
        and getattr(config.loop, "correction", None) is None
    )


def _predict(arm: str, config: Any, real: Any, regime: Regime) -> dict[str, np.ndarray]:
    cur = config.loop.curation
    found = population_recursion(
        regime,
        config.generations,
        mean0=real.mean,
        cov0=real.covariance,
        direction=np.asarray(cur.direction, dtype=float),
        bias=config.sampling.bias,
        choices=cur.choices,
        scale=cur.scale,
    )
    return {"mean_reward": found.mean_reward, "trace_ratio": found.trace_ratio}


register_predictor(Predictor("curation", _applies, _predict))
