"""Closed-form predictions for the categorical family: the Wright–Fisher model.

Generation 1 counts n_1 real draws from p_0; generation t >= 2 counts its training set, made of
n_s draws from the model of generation t-1 plus, depending on the regime, n_r fresh real draws
(``fresh-data``) or a fixed real set drawn once (``synthetic-augmentation``). With add-α
smoothing p_t = (c + α) / (n + α V); bias (a temperature) must be 1 for these formulas.

**Heterozygosity** H_t = 1 - Σ p_t,i² (the chance that two draws differ). For a multinomial count
vector c of n draws from p, E Σ c_i² = n(n-1) Σ p_i² + n, so without real data and smoothing
E[H_t] = (1 - 1/n) E[H_{t-1}] (the classical decay by 1 - 1/N per generation). With real data the
cross moments G_t = E Σ p_0,i p_t,i (fresh) or K_t = E Σ a_i p_t,i (fixed real counts a) close the
recursion; :func:`expected_heterozygosity` iterates the three.

**Absorption.** Without smoothing a symbol with count 0 has probability 0 forever (lost symbols
never return); p_t is a martingale bounded in [0, 1], so the chain ends in a point mass, on
symbol i with probability E[p_∞,i] = p_0,i (:func:`fixation_probabilities`).

**Survival.** The count of one symbol is itself a two-allele Wright–Fisher chain: c_1 ~ Bin(n_1,
p), c_t ~ Bin(n, c_{t-1} / n_{t-1}). P(c_t > 0) is computed exactly with the (n+1)×(n+1)
binomial transition matrix for n <= ``EXACT_MAX`` (one matrix-vector product per generation,
whatever V), and otherwise by the Poisson branching limit of the binomial recursion (each copy
leaves Poisson(n_t / n_{t-1}) copies; error O(t / n), the regime where rare symbols are lost):
P(c_t = 0 | c_1) = u_t^{c_1} with u_t the composed generating functions at 0, so
P(lost by t) = (1 - p + p u_t)^{n_1}. The expected number of surviving symbols is the sum over
symbols (:func:`expected_support`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.regimes import Regime
from madloop.theory.registry import Predictor, register_predictor

EXACT_MAX = 1000
SUPPORTED_REGIMES = ("fully-synthetic", "fresh-data", "synthetic-augmentation")


def heterozygosity(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return 1.0 - np.sum(p * p, axis=-1)


def fixation_probabilities(p0: np.ndarray) -> np.ndarray:
    """P(the MLE chain ends as a point mass on symbol i) = p_0,i (p_t is a martingale)."""
    p0 = np.asarray(p0, dtype=float)
    return p0 / p0.sum()


def heterozygosity_decay(
    h0: float, generations: int, n: int, n_initial: int | None = None
) -> np.ndarray:
    """E[H_t], t = 1..T, of the fully-synthetic MLE chain: H_0 (1 - 1/n_1)(1 - 1/n)^(t-1)."""
    n1 = n if n_initial is None else n_initial
    t = np.arange(1, generations + 1)
    return h0 * (1 - 1 / n1) * (1 - 1 / n) ** (t - 1)


def _sizes(regime: Regime, t: int) -> tuple[int, int]:
    """(real draws, synthetic draws) of generation t >= 2."""
    n_real = regime.n_real(t) if regime.name != "fully-synthetic" else 0
    return n_real, regime.n_synthetic(t)


def expected_heterozygosity(
    regime: Regime, generations: int, p0: np.ndarray, *, alpha: float = 0.0
) -> np.ndarray:
    """E[1 - Σ p_t²] for t = 1..T (NaN for regimes without a closed form here)."""
    if regime.name not in SUPPORTED_REGIMES:
        return np.full(generations, np.nan)
    p0 = np.asarray(p0, dtype=float)
    V = p0.size
    F0 = float(p0 @ p0)
    out = np.empty(generations)
    n1 = regime.n_initial()
    n_fixed = regime.n_real(1) if regime.name == "synthetic-augmentation" else 0
    A = n_fixed * (n_fixed - 1) * F0 + n_fixed  # E Σ a_i² of the fixed real counts

    def smooth(sq: float, cross: float, n: int, cross_count: float) -> tuple[float, float]:
        """From E Σ c², E Σ x c (x = p_0 or a) to E Σ p², E Σ x p under add-α."""
        D = n + alpha * V
        return (sq + 2 * alpha * n + V * alpha**2) / D**2, (cross + alpha * cross_count) / D

    # generation 1: c ~ Mult(n_1, p_0); cross with p_0 (G) and with the fixed counts a (K)
    sq1 = n1 * (n1 - 1) * F0 + n1
    F, G = smooth(sq1, n1 * F0, n1, 1.0)
    _, K = smooth(sq1, A + n_fixed * (n1 - n_fixed) * F0, n1, n_fixed)
    out[0] = 1 - F
    for t in range(2, generations + 1):
        n_r, n_s = _sizes(regime, t)
        n = n_r + n_s
        syn_sq = n_s * (n_s - 1) * F + n_s
        if regime.name == "synthetic-augmentation":
            n_r = n_fixed
            n = n_r + n_s
            sq = A + 2 * n_s * K + syn_sq
            F_new, K = smooth(sq, A + n_s * K, n, n_r)
            F = F_new
        else:
            real_sq = n_r * (n_r - 1) * F0 + n_r
            sq = real_sq + 2 * n_r * n_s * G + syn_sq
            F, G = smooth(sq, n_r * F0 + n_s * G, n, 1.0)
        out[t - 1] = 1 - F
    return out


def expected_probabilities(
    regime: Regime, generations: int, p0: np.ndarray, *, alpha: float = 0.0
) -> np.ndarray:
    """E[p_t] (T, V): a linear recursion (p_t is a martingale when α = 0)."""
    p0 = np.asarray(p0, dtype=float)
    V = p0.size
    out = np.empty((generations, V))
    n1 = regime.n_initial()
    m = (n1 * p0 + alpha) / (n1 + alpha * V)
    out[0] = m
    for t in range(2, generations + 1):
        n_r, n_s = _sizes(regime, t)
        if regime.name == "synthetic-augmentation":
            n_r = regime.n_real(1)
        m = (n_r * p0 + n_s * m + alpha) / (n_r + n_s + alpha * V)
        out[t - 1] = m
    return out


def _constant_sizes(regime: Regime, generations: int) -> tuple[int, int] | None:
    """(n_1, n) when the regime is fully-synthetic with a constant n from generation 2 on."""
    if regime.name != "fully-synthetic":
        return None
    sizes = {regime.n_synthetic(t) for t in range(2, generations + 1)}
    if len(sizes) > 1:
        return None
    return regime.n_initial(), (sizes.pop() if sizes else regime.n_initial())


def survival_probability(
    p: np.ndarray | float,
    generations: int,
    n: int,
    *,
    n_initial: int | None = None,
    method: str = "auto",
) -> np.ndarray:
    """P(a symbol of real frequency p is still alive at generation t), t = 1..T, in the
    fully-synthetic MLE chain with n_1 real draws then n draws per generation.

    ``method``: "exact" (transition matrix), "branching" (Poisson limit), or "auto" (exact when
    n and n_1 are at most ``EXACT_MAX``). Returns shape (len(p), T)."""
    p = np.atleast_1d(np.asarray(p, dtype=float))
    n1 = n if n_initial is None else n_initial
    if method == "auto":
        method = "exact" if max(n, n1) <= EXACT_MAX else "branching"
    out = np.empty((p.size, generations))
    out[:, 0] = 1 - (1 - p) ** n1
    if generations == 1:
        return out
    if method == "exact":
        # M1[c1, c2] = Bin(n, c1/n1)(c2); M[c, c'] = Bin(n, c/n)(c')
        from scipy.stats import binom  # scipy.stats is slow to import

        B = binom.pmf(np.arange(n1 + 1)[None, :], n1, p[:, None])  # (k, n1+1)
        M1 = binom.pmf(np.arange(n + 1)[None, :], n, (np.arange(n1 + 1) / n1)[:, None])
        M = binom.pmf(np.arange(n + 1)[None, :], n, (np.arange(n + 1) / n)[:, None])
        W = B @ M1  # (k, n+1): the law of c_2 for each p
        g = np.zeros(n + 1)
        g[0] = 1.0  # g(c) = P(c_t = 0 | c_2 = c), t = 2
        for t in range(2, generations + 1):
            out[:, t - 1] = 1 - W @ g
            g = M @ g
    elif method == "branching":
        w = 0.0  # w_j = φ∘…∘φ(0), j compositions of φ(s) = exp(s - 1)
        for t in range(2, generations + 1):
            u = np.exp((n / n1) * (w - 1.0))  # first synthetic step: offspring mean n / n1
            out[:, t - 1] = 1 - (1 - p + p * u) ** n1
            w = np.exp(w - 1.0)
    else:
        raise ValueError(f"method must be 'auto', 'exact' or 'branching', got {method!r}")
    return np.clip(out, 0.0, 1.0)


def expected_support(
    p0: np.ndarray,
    generations: int,
    n: int,
    *,
    n_initial: int | None = None,
    method: str = "auto",
) -> np.ndarray:
    """E[number of symbols alive at generation t], t = 1..T (fully-synthetic MLE)."""
    p0 = np.asarray(p0, dtype=float)
    values, multiplicity = np.unique(p0, return_counts=True)  # Zipf: all distinct; uniform: one
    surv = survival_probability(values, generations, n, n_initial=n_initial, method=method)
    return multiplicity @ surv


def predictions(
    regime: Regime,
    generations: int,
    p0: np.ndarray,
    *,
    tail: np.ndarray | None = None,
    bias: float = 1.0,
    alpha: float = 0.0,
) -> dict[str, np.ndarray]:
    """E[metric] per generation 1..T for the categorical metrics that have a closed form."""
    if bias != 1.0 or regime.name not in SUPPORTED_REGIMES:
        return {}
    p0 = np.asarray(p0, dtype=float)
    out = {"heterozygosity": expected_heterozygosity(regime, generations, p0, alpha=alpha)}
    if tail is not None:
        mean = expected_probabilities(regime, generations, p0, alpha=alpha)
        out["tail_mass"] = mean[:, tail].sum(axis=1) / p0[tail].sum()
    if alpha > 0:
        out["support_size"] = np.full(generations, float(p0.size))  # smoothing: nothing is lost
        return out
    sizes = _constant_sizes(regime, generations)
    if sizes is not None:
        n1, n = sizes
        values, inverse = np.unique(p0, return_inverse=True)
        surv = survival_probability(values, generations, n, n_initial=n1)[inverse]  # (V, T)
        out["support_size"] = surv.sum(axis=0)
        if tail is not None:
            w = p0[tail] / p0[tail].sum()
            out["tail_coverage"] = w @ surv[tail]
    return out


# -- the predictor ---------------------------------------------------------------------------------
def _applies(config: Any, regime: Regime) -> bool:
    """The categorical family on categorical data (Wright–Fisher)."""
    return config.model.family == "categorical" and config.data.source == "categorical"


def _predict(arm: str, config: Any, real: Any, regime: Regime) -> dict[str, np.ndarray]:
    return predictions(
        regime,
        config.generations,
        real.probabilities(),
        tail=real.tail,
        bias=config.sampling.bias,
        alpha=config.model.alpha,
    )


register_predictor(Predictor("wright-fisher", _applies, _predict))
