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

**Homozygosity** S_t = Σ p_t² = 1 - H_t: Seddik et al. 2024's S_t = 1 - (1 - 1/n)^t (1 - S_0)
for the fully-synthetic chain with n draws per generation, t the loop's generation (generation 1
fits n real draws) (:func:`homozygosity_recursion`; the ``homozygosity`` metric and theory).

**Survival bound** (Suresh et al. 2025): a symbol with count c in the first sample is alive k
generations later with probability >= 1 - exp(-c/k) (n draws every generation); averaged over
the first sample, a lower bound on E[support_size] (:func:`expected_support_lower_bound`, the
theory-only curve ``support_size_lower_bound``).

**Missing mass** Σ p_0,i over the symbols absent from a generation's training set (the test
error of a memoriser, Dohmatob et al. 2024). Generation 1: Σ p_0,i (1 - p_0,i)^n_1, exact in
every regime and for any sampling. Fully synthetic, MLE, bias 1: Σ p_0,i (1 - P(alive at t)),
exact; the missing mass never decreases (a lost symbol never returns). With ``top_k = k`` (the
k most likely symbols of each model, renormalised), m draws from the top-k truncation of the
TRUE law give Σ_{i<=k} p_i (1 - p_i / P_k)^m + Σ_{i>k} p_i (:func:`top_k_missing_mass`, exact
for that experiment). In the loop generation 2 truncates generation 1's fitted model, not p, so
the formula is only an approximation there: below the simulated mean by 0.7-17% in seven
checks (Zipf, V = 50-1000, n = 100-10^4, k = 5-100; the error shrinks as n grows), so it is not
in the theory column. What holds exactly for t >= 2 is
missing_mass_t >= 1 - P_k and support_size_t <= k (:func:`top_k_mass`).
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


def homozygosity(p: np.ndarray) -> np.ndarray:
    """S = Σ p² (the chance that two draws agree): Seddik et al. 2024's collapse statistic."""
    return 1.0 - heterozygosity(p)


def homozygosity_recursion(
    s0: float, generations: int, n: int, n_initial: int | None = None
) -> np.ndarray:
    """E[S_t], t = 1..T, of the fully-synthetic MLE chain (Seddik et al. 2024):
    S_t = 1 - (1 - 1/n)^t (1 - S_0) when every generation draws n points.

    Generation t of the loop is their t: generation 1 fits n_1 real draws (one resampling of
    p_0), generation t >= 2 fits n draws of generation t-1's model, so in general
    S_t = 1 - (1 - 1/n_1)(1 - 1/n)^(t-1)(1 - S_0) (the heterozygosity decay, complemented)."""
    return 1.0 - heterozygosity_decay(1.0 - s0, generations, n, n_initial)


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


def survival_lower_bound(p: np.ndarray | float, generations: int, n: int) -> np.ndarray:
    """Suresh et al. 2025's bound, averaged over the first sample: (len(p), T).

    A symbol with count c in the first sample (generation 1's n real draws) is alive k more
    generations later with probability >= 1 - exp(-c/k), when every generation draws n points.
    Generation t = 1 + k, so for t >= 2 and c ~ Bin(n, p),
    E[1 - exp(-c/(t-1))] = 1 - (1 - p + p e^(-1/(t-1)))^n; at t = 1 the value is exact,
    1 - (1 - p)^n. A lower bound on :func:`survival_probability` (about half the exact value
    of a rare symbol late: a critical lineage survives k steps with probability ~ 2/k)."""
    p = np.atleast_1d(np.asarray(p, dtype=float))[:, None]
    k = np.arange(generations, dtype=float)[None, :]  # generations after the first sample
    with np.errstate(divide="ignore"):
        keep = np.where(k > 0, np.exp(-1.0 / np.maximum(k, 1e-300)), 0.0)
    return 1.0 - (1.0 - p + p * keep) ** n


def expected_support_lower_bound(p0: np.ndarray, generations: int, n: int) -> np.ndarray:
    """Σ_i of :func:`survival_lower_bound`: E[support_size_t] is at least this (T,)."""
    return survival_lower_bound(np.asarray(p0, dtype=float), generations, n).sum(axis=0)


def expected_missing_mass(
    p0: np.ndarray,
    generations: int,
    n: int,
    *,
    n_initial: int | None = None,
    method: str = "auto",
) -> np.ndarray:
    """E[missing_mass_t] = Σ_i p_0,i P(symbol i lost by generation t), t = 1..T, of the
    fully-synthetic MLE chain (bias 1, no truncation): exact where the survival is
    (:func:`survival_probability`); generation 1 is Σ p_0,i (1 - p_0,i)^n_1 in every regime."""
    p0 = np.asarray(p0, dtype=float)
    values, inverse = np.unique(p0, return_inverse=True)
    surv = survival_probability(values, generations, n, n_initial=n_initial, method=method)
    return p0 @ (1.0 - surv[inverse])


def top_k_order(p: np.ndarray) -> np.ndarray:
    """Symbols from most to least likely, ties by symbol id: the order truncation keeps."""
    return np.argsort(-np.asarray(p, dtype=float), kind="stable")


def top_k_missing_mass(p: np.ndarray, k: int, m: int, *, temperature: float = 1.0) -> float:
    """E[missing mass] of a memoriser trained on m draws from the top-k truncation of p
    (Dohmatob et al. 2024): Σ_{i<=k} p_i (1 - q_i)^m + Σ_{i>k} p_i, with q the law sampled,
    q_i ∝ p_i^(1/T) on the k most likely symbols (q_i = p_i / P_k at T = 1).

    Exact for training on draws of the truncated TRUE law; in the loop this is generation 2
    with generation 1's fitted model replaced by p (see :func:`predictions`)."""
    p = np.asarray(p, dtype=float)
    top = top_k_order(p)[: min(int(k), p.size)]
    w = p[top] ** (1.0 / temperature)
    q = w / w.sum()
    return float(p[top] @ (1.0 - q) ** m + (p.sum() - p[top].sum()))


def top_k_mass(p: np.ndarray, k: int) -> float:
    """P_k, the real mass of the k most likely symbols. After one truncated generation the
    model keeps at most k symbols, so missing_mass_t >= 1 - P_k for every t >= 2 (any k symbols
    carry at most P_k); in the fully-synthetic MLE chain the symbols cut never return."""
    p = np.asarray(p, dtype=float)
    return float(p[top_k_order(p)[: min(int(k), p.size)]].sum())


def predictions(
    regime: Regime,
    generations: int,
    p0: np.ndarray,
    *,
    tail: np.ndarray | None = None,
    bias: float = 1.0,
    alpha: float = 0.0,
    top_k: int | None = None,
) -> dict[str, np.ndarray]:
    """E[metric] per generation 1..T for the categorical metrics that have a closed form.

    A biased (tempered) or truncated arm keeps only generation 1's missing mass (generation 1
    fits real data, so sampling does not enter); NaN marks generations without a closed form.
    ``support_size_lower_bound`` is Suresh et al.'s bound, a theory-only curve: no metric has
    that name, so the summary's agreement check never compares it as an expected value.
    """
    if regime.name not in SUPPORTED_REGIMES:
        return {}
    p0 = np.asarray(p0, dtype=float)
    missing = np.full(generations, np.nan)
    missing[0] = p0 @ (1.0 - p0) ** regime.n_initial()  # exact: c ~ Mult(n_1, p_0)
    truncated = top_k is not None and top_k < p0.size
    if bias != 1.0 or truncated:
        return {"missing_mass": missing}
    het = expected_heterozygosity(regime, generations, p0, alpha=alpha)
    out = {"heterozygosity": het, "homozygosity": 1.0 - het, "missing_mass": missing}
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
        out["missing_mass"] = p0 @ (1.0 - surv)
        if n1 == n:
            out["support_size_lower_bound"] = expected_support_lower_bound(p0, generations, n)
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
        top_k=config.sampling.top_k,
    )


register_predictor(Predictor("wright-fisher", _applies, _predict))
