"""Closed-form predictions for the internet pool (``web-pool``): Gaussian lineages that publish into
and scrape from one pool, with a content-blind detector between scrape and training.

Units and conventions as in :mod:`madloop.theory`: μ_0 = 0, every expected covariance is a scalar
multiple of Σ_0. A *generating model* g is the real law (index 0: mean 0, E[Σ] = Σ_0, bias 1) or a
fitted model (lineage k, generation s), whose content is N(μ_g, λ_k Σ_g). The pool is web-scale:
a scrape is a small random sample of it, so two scrapes share no document and the items a scrape
takes from a cohort are fresh i.i.d. draws from the cohort's generating model.

**Counts.** Lineage k's scrape at generation t sees cohorts c with amounts a_c (the schedule is
deterministic), drawn with probability π_c = a_c / Σ a. The detector keeps a real item with
probability 1 - FPR and a generated one with 1 - TPR (0 if its lineage watermarks), independently
of its content. With ``refill`` (the lab scrapes until n items pass) the kept counts are
Multinomial(n, ρ) with ρ_c ∝ π_c q_c; without it, the kept size m ~ Binomial(n, Q), Q = Σ π_c q_c,
and given m the counts are Multinomial(m, ρ). A ``proportional`` scrape takes the expected counts
(largest-remainder rounding) instead. Group the cohorts by generating model: p_g = m_g / m.

**Moment recursion** (exact for every content-blind case; the counts are independent of the
content). The state is B_g = E[Σ_g]/Σ_0 and M_gh = E[μ_g μ_h^T]/Σ_0 for every model alive. Given
m, with A = ρ^T M ρ, D = Σ_g ρ_g M_gg and L = Σ_g ρ_g λ_g B_g (Chan's merge, expectations taken):

    E[μ μ^T | m] = (1 - 1/m) A + (D + L)/m,          E[Σ | m] = (m-1)/div(m) · (L + D - A),
    E[μ μ_h^T]   = Σ_g ρ_g M_gh  for any older model h,

where div(m) = m - 1 (unbiased) or m (MLE). For fixed (proportional) counts p:
E[μ μ^T] = p^T M p + L/m and E[Σ] = ((m-1) L + m (D - A))/div(m). Without ``refill`` a lineage
whose kept set has fewer than ``min_train`` items keeps its previous model (probability
P(m < min_train), mixed in exactly). Two lineages trained in the same generation have independent
counts and noise, so E[μ_k μ_k'^T] = w_k^T M w_k' with w_k their expected mixing weights. With one
lineage, proportional counts, no detection and ``max_age = 1`` this is the fresh-data recursion of
:func:`madloop.theory.expected_moments` (a test checks it); the generic recursion cannot be reused
directly because random counts enter through E[1/m] and E[p p^T], not through expected counts.

**Critical real fraction.** One lineage whose training set mixes fresh real data (share ρ, after
detection) with its previous generation's output has a 2x2 linear recursion for (M, B). A real item
among synthetic ones adds the squared distance of the model's mean from the truth to the fitted
covariance, and a wider model walks its mean further; below ρ_c (≈ 1/(2n) for λ = 1, about half a
real item per training set) this feedback wins and the expected mean error and trace ratio grow
geometrically (:func:`growth_factor` > 1); above it they settle at a level that, for λ = 1 and
large n, is tr Σ_0 / n · 1/(ρ (2 - ρ)). :func:`critical_real_fraction` gives ρ_c, or with a
``tolerance`` κ the ρ* below which the settled error exceeds κ times the fresh-data level
(≈ 1 - sqrt(1 - 1/κ)); :func:`critical_tpr` the detector true positive rate that keeps the
effective real fraction above it for a given share of generated content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

REAL_SOURCE = 0  # cohort source code of real content; lineage k publishes under 1 + k


@dataclass(frozen=True)
class Cohort:
    """Content that entered the pool together: ``source`` 0 (real) or 1 + k (lineage k),
    ``published`` the generation it arrived, ``amount`` its size in pool units."""

    source: int
    published: int
    amount: float

    @property
    def origin(self) -> int:
        """The generation of the model that made it (0 for real content): lineage content
        published at generation s was sampled from the lineage's generation s - 1."""
        return 0 if self.source == REAL_SOURCE else self.published - 1


@dataclass(frozen=True)
class LineageLaw:
    """What the theory needs to know about one lineage."""

    name: str
    scrape_size: int
    lag: int = 0
    bias: float = 1.0
    estimator: Literal["unbiased", "mle"] = "unbiased"


def apportion(n: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding of n · weights / sum(weights) to integers summing to n (ties go
    to the earlier entry, so the result is deterministic)."""
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    if n <= 0 or total <= 0:
        return np.zeros(w.shape, dtype=np.int64)
    exact = n * w / total
    base = np.floor(exact).astype(np.int64)
    short = int(n - base.sum())
    if short > 0:
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:short]] += 1
    return base


def binomial_law(n: int, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Support and probabilities of Binomial(n, q), cut where the tail is below 1e-16."""
    from scipy import stats  # imported late: scipy.stats is slow to import

    if q >= 1.0:
        return np.array([n]), np.array([1.0])
    if q <= 0.0:
        return np.array([0]), np.array([1.0])
    sd = np.sqrt(n * q * (1 - q))
    lo = max(0, int(np.floor(n * q - 12 * sd - 2)))
    hi = min(n, int(np.ceil(n * q + 12 * sd + 2)))
    m = np.arange(lo, hi + 1)
    return m, stats.binom.pmf(m, n, q)


def pool_moments(
    lineages: Sequence[LineageLaw],
    reachable: Callable[[int, int], Sequence[Cohort]],
    keep: Callable[[int], float],
    generations: int,
    *,
    refill: bool = True,
    scrape: Literal["random", "proportional"] = "random",
    min_train: int = 2,
    max_age: int | None = None,
) -> dict[str, dict[str, np.ndarray]]:  # long: one recursion step, read beside the docstring
    """E[trace_ratio], E[mean_error_sq] / tr Σ_0 and E[synthetic_share] per lineage and generation.

    ``reachable(t, lag)`` lists the cohorts a scrape with that lag sees at generation t (t >= 2;
    generation 1 trains on n real items), ``keep(source)`` the detector's keep probability. See the
    module docstring for the recursion. Only the models whose content a later scrape can reach are
    kept (give ``max_age`` to let old ones go): O(K^2 G + K G^2) per generation for G alive.
    """
    K, T = len(lineages), generations
    max_lag = max((lin.lag for lin in lineages), default=0)
    keys: list[tuple[int, int]] = [(-1, 0)]  # (lineage, generation); (-1, 0) is the real law
    M = np.zeros((1, 1))
    B = np.array([1.0])
    lam = np.array([1.0])
    out = {
        lin.name: {"trace_ratio": [], "mean_error_sq_per_trace": [], "synthetic_share": []}
        for lin in lineages
    }
    for t in range(1, T + 1):
        pos = {key: i for i, key in enumerate(keys)}
        A_ = len(keys)
        W = np.zeros((K, A_))
        self_m, b_new, shares = np.zeros(K), np.zeros(K), np.zeros(K)
        for k, lin in enumerate(lineages):
            n = lin.scrape_size

            def div(m: np.ndarray | float, lin: LineageLaw = lin) -> np.ndarray | float:
                return m - 1 if lin.estimator == "unbiased" else m

            if t == 1:
                W[k, 0] = 1.0
                self_m[k] = 1.0 / n
                b_new[k] = (n - 1) / div(n)
                continue
            o = pos[(k, t - 1)]
            cohorts = list(reachable(t, lin.lag))
            groups = np.array(
                [
                    0 if c.source == REAL_SOURCE else pos[(c.source - 1, c.published - 1)]
                    for c in cohorts
                ]
            )
            amounts = np.array([c.amount for c in cohorts], dtype=float)
            q = np.array([keep(c.source) for c in cohorts], dtype=float)
            pi = amounts / amounts.sum()
            uniq, inv = np.unique(groups, return_inverse=True)
            Mg = M[np.ix_(uniq, uniq)]
            lamB = lam[uniq] * B[uniq]
            real_pos = np.flatnonzero(uniq == 0)
            if scrape == "proportional":
                if refill:
                    kept = apportion(n, pi * q)
                else:
                    kept = np.floor(apportion(n, pi) * q + 0.5).astype(np.int64)
                m = int(kept.sum())
                p = np.bincount(inv, weights=kept, minlength=uniq.size) / max(m, 1)
                if m >= min_train:
                    A = float(p @ Mg @ p)
                    D = float(p @ np.diag(Mg))
                    L = float(p @ lamB)
                    W[k, uniq] += p
                    self_m[k] = A + L / m
                    b_new[k] = ((m - 1) * L + m * (D - A)) / div(m)
                else:
                    W[k, o] += 1.0
                    self_m[k], b_new[k] = M[o, o], B[o]
                shares[k] = 1.0 - p[real_pos].sum() if m > 0 else np.nan
                continue
            Q = float(pi @ q)
            rho = np.bincount(inv, weights=pi * q, minlength=uniq.size) / Q if Q > 0 else 0 * pi
            A = float(rho @ Mg @ rho)
            D = float(rho @ np.diag(Mg))
            L = float(rho @ lamB)
            if refill:
                ms, probs = np.array([n]), np.array([1.0])
            else:
                ms, probs = binomial_law(n, Q)
            ok = ms >= min_train
            mo, po = ms[ok].astype(float), probs[ok]
            p_low = float(probs[~ok].sum())
            W[k, uniq] += po.sum() * rho
            W[k, o] += p_low
            self_m[k] = float(po @ ((1 - 1 / mo) * A + (D + L) / mo)) + p_low * M[o, o]
            b_new[k] = float(po @ ((mo - 1) / div(mo))) * (L + D - A) + p_low * B[o]
            shares[k] = 1.0 - float(rho[real_pos].sum()) if Q > 0 else np.nan
        # the new models' moments with every older one, then with each other
        cross = W @ M  # (K, A)
        between = cross @ W.T
        between[np.diag_indices(K)] = self_m
        M = np.block([[M, cross.T], [cross, between]])
        B = np.concatenate([B, b_new])
        lam = np.concatenate([lam, [lin.bias for lin in lineages]])
        keys = keys + [(k, t) for k in range(K)]
        for k, lin in enumerate(lineages):
            out[lin.name]["trace_ratio"].append(b_new[k])
            out[lin.name]["mean_error_sq_per_trace"].append(self_m[k])
            out[lin.name]["synthetic_share"].append(shares[k])
        if max_age is not None:  # forget models no later scrape can reach (nor fall back to)
            oldest = t + 1 - max_lag - max_age
            alive = np.array([g < 0 or gen >= min(oldest, t) for g, gen in keys])
            M, B, lam = M[np.ix_(alive, alive)], B[alive], lam[alive]
            keys = [key for key, a in zip(keys, alive, strict=True) if a]
    return {name: {m: np.asarray(v) for m, v in d.items()} for name, d in out.items()}


# -- the stationary single-lineage loop and its critical real fraction ---------------------------
def _single_lineage_system(
    real_fraction: float, n: int, bias: float, estimator: str
) -> tuple[np.ndarray, np.ndarray]:
    """(J, f) with (M_t, B_t) = J (M_{t-1}, B_{t-1}) + f for one lineage whose n training items
    are each real with probability r and otherwise samples of its previous generation."""
    r = float(real_fraction)
    s = 1.0 - r
    c = (n - 1) / ((n - 1) if estimator == "unbiased" else n)
    # M' = (1 - 1/n) s^2 M + (s M + r + s λ B)/n ;  B' = c (r + s λ B + s M - s^2 M)
    J = np.array([[(1 - 1 / n) * s * s + s / n, s * bias / n], [c * s * r, c * s * bias]])
    return J, np.array([r / n, c * r])


def growth_factor(
    real_fraction: float,
    n: int,
    *,
    bias: float = 1.0,
    estimator: Literal["unbiased", "mle"] = "unbiased",
) -> float:
    """Spectral radius of the single-lineage moment recursion: above 1 the expected mean error
    and trace ratio grow geometrically without bound."""
    J, _ = _single_lineage_system(real_fraction, n, bias, estimator)
    return float(np.max(np.abs(np.linalg.eigvals(J))))


def stationary_moments(
    real_fraction: float,
    n: int,
    *,
    bias: float = 1.0,
    estimator: Literal["unbiased", "mle"] = "unbiased",
) -> tuple[float, float]:
    """(E[mean_error_sq] / tr Σ_0, E[trace_ratio]) at the fixed point of a loop whose training set
    is n items, each real with probability ``real_fraction`` and otherwise a sample of the previous
    generation (random counts: ``web-pool`` with ``max_age = 1``). (inf, inf) where there is no
    stable fixed point (:func:`growth_factor` >= 1)."""
    if growth_factor(real_fraction, n, bias=bias, estimator=estimator) >= 1.0:
        return np.inf, np.inf
    J, f = _single_lineage_system(real_fraction, n, bias, estimator)
    m_star, b_star = np.linalg.solve(np.eye(2) - J, f)
    return float(m_star), float(b_star)


def critical_real_fraction(
    n: int,
    *,
    bias: float = 1.0,
    estimator: Literal["unbiased", "mle"] = "unbiased",
    tolerance: float | None = None,
) -> float:
    """The effective real fraction below which the mean error keeps growing.

    Without ``tolerance``: the ρ_c at which the single-lineage moment recursion turns unstable
    (:func:`growth_factor` = 1). A real item between synthetic ones adds the squared distance of
    the model's mean to the truth to the fitted covariance, and a wider model walks its mean
    further: for λ = 1 this feedback wins when ρ < ρ_c ≈ 1/(2n), i.e. below about half a real item
    per training set. 0.0 when the loop is stable for every ρ > 0 (most λ < 1).

    With ``tolerance`` κ > 1: the ρ* below which the stationary expected mean error exceeds κ times
    the fresh-data level tr Σ_0 / n (≈ 1 - sqrt(1 - 1/κ) for large n and λ = 1)."""
    from scipy import optimize

    tiny = 1e-12
    if tolerance is None:

        def excess(r: float) -> float:
            return growth_factor(r, n, bias=bias, estimator=estimator) - 1.0

    else:
        if tolerance <= 1.0:
            raise ValueError(
                f"tolerance must be > 1 (a multiple of the fresh-data error), got {tolerance}"
            )
        floor = stationary_moments(1.0, n, bias=bias, estimator=estimator)[0]

        def excess(r: float) -> float:
            m = stationary_moments(r, n, bias=bias, estimator=estimator)[0]
            return min(m / floor, 1e300) - tolerance

    if excess(tiny) <= 0:
        return 0.0
    return float(optimize.brentq(excess, tiny, 1.0, xtol=1e-15, rtol=1e-12))


def effective_real_fraction(
    synthetic_share: float | np.ndarray, tpr: float | np.ndarray, fpr: float | np.ndarray = 0.0
) -> np.ndarray:
    """Share of real items among those a content-blind detector keeps, from a pool whose share of
    generated content is ``synthetic_share``."""
    a = np.asarray(synthetic_share, dtype=float)
    real = (1 - a) * (1 - np.asarray(fpr, dtype=float))
    fake = a * (1 - np.asarray(tpr, dtype=float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return real / (real + fake)


def critical_tpr(
    synthetic_share: float | np.ndarray,
    *,
    n: int,
    fpr: float = 0.0,
    bias: float = 1.0,
    estimator: Literal["unbiased", "mle"] = "unbiased",
    tolerance: float | None = None,
) -> np.ndarray:
    """The detector true positive rate at which the effective real fraction equals
    :func:`critical_real_fraction` (same ``tolerance`` meaning), for a pool whose share of generated
    content is ``synthetic_share``: below this TPR the mean error keeps growing (or exceeds κ x the
    fresh-data level). 0 where no detector is needed; NaN where even TPR = 1 is not enough."""
    rho = critical_real_fraction(n, bias=bias, estimator=estimator, tolerance=tolerance)
    a = np.asarray(synthetic_share, dtype=float)
    if rho <= 0:
        return np.zeros_like(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = 1 - (1 - a) * (1 - fpr) * (1 - rho) / (a * rho)
    tau = np.where(a <= 0, 0.0, tau)
    return np.where(tau > 1, np.nan, np.clip(tau, 0.0, 1.0))


# -- curation: keeping the n most likely of N candidates -----------------------------------------
def curation_contraction(dim: int, keep: int, candidates: int) -> float:
    """E[Σ_t] = c · λ Σ_{t-1} when a model's own samples are curated: N = ``candidates`` draws
    from N(μ, λΣ), scored by their likelihood under N(μ, Σ), the ``keep`` most likely refitted
    (unbiased estimator). In whitened coordinates the kept directions are isotropic, so
    c = E[sum of the ``keep`` smallest of N χ²_d] / (d · keep), computed from the order statistics:
    E[Σ_{i<=k} X_(i)] = N ∫ x f(x) P(Binomial(N - 1, F(x)) <= k - 1) dx."""
    if not 1 <= keep <= candidates:
        raise ValueError(f"need 1 <= keep <= candidates, got keep={keep}, candidates={candidates}")
    from scipy import integrate, stats

    chi = stats.chi2(dim)

    def integrand(x: float) -> float:
        return x * chi.pdf(x) * stats.binom.cdf(keep - 1, candidates - 1, chi.cdf(x))

    hi = chi.ppf(1 - 1e-15)
    cut = chi.ppf(keep / candidates)
    total = 0.0
    for a, b in ((0.0, cut), (cut, hi)):
        val, _ = integrate.quad(integrand, a, b, limit=400, epsabs=1e-13, epsrel=1e-11)
        total += val
    return candidates * total / (dim * keep)
