"""Closed forms for the linear-regression loop (Gerstgrasser et al. 2024; Dohmatob et al. 2024).

Notation: d features, fixed design X (T x d) with G = XᵀX, generation i trains on k_i copies of
the design (n_i = k_i T rows; k_1 real, then synthetic), V_i the noise variance of generation i's
labels: V_1 = σ² (real), V_i = λσ² (``noise = "known"``) or λ s²_{i-1} (``"estimated"``) for
i >= 2. Generation 1 is the fit to real data.

**Least squares, fixed design.** Let δ_t = ŵ_t - w*. The fit on k copies of labels Xŵ + ε is
ŵ + G⁻¹Xᵀε̄ (ε̄ the copies' mean noise), so with η_i ~ N(0, V_i/k_i · G⁻¹) independent:
- replace: δ_t = δ_{t-1} + η_t;
- accumulate: the pool's K_t = Σ_{j<=t} k_j copies give K_t δ_t = K_{t-1} δ_{t-1} + k_t (δ_{t-1} +
  η_t), i.e. δ_t = δ_{t-1} + (k_t/K_t) η_t.
Both: E[δ_t δ_tᵀ | X] = Σ_{i<=t} (k_i V_i / K_i²) G⁻¹, with K_i = k_i for replace. Over designs,
E tr G⁻¹ = d/(T - d - 1) (the inverse-Wishart mean, finite for T > d + 1), so

    E[excess_risk_t] = σ² d/(T - d - 1) · Σ_{i<=t} k_i v_i / K_i²,   v_1 = 1, v_i = E[V_i]/σ².

Known noise v_i = λ: replace with k_i = 1 gives (1 + (t-1)λ) σ² d/(T-d-1) (t σ² d/(T-d-1) at
λ = 1: linear growth); accumulate gives σ² d/(T-d-1)·(1 + λ Σ_{2<=i<=t} 1/i²) < π²/6 times
generation 1 at λ = 1. Estimated noise, replace: s² = RSS/(n - d) is unbiased for V and
independent of X and of the projected noise, so E V_i = λ^(i-1) σ²: v_i = λ^(i-1) (exact).
For the mean over R chains, each with its own design, this is the expectation the mean estimates.

**Fresh design, replace**: new rows every generation: E[excess_risk_t] = Σ_{i<=t} E[V_i] d/(n_i -
d - 1) (exact; each generation adds a fresh E tr (XᵀX)⁻¹ V_i term).

**Ridge α, fixed design, known noise** (replace and accumulate), given the chains' designs (w*
and the noise random): in G's eigenbasis (eigenvalue e, w*_j ~ N(0, 1)) the pool's Xᵀy
coordinate is S_t = a_t w*_j + noise of variance q_t, ŵ_t = S_t/D_t with D_t = K_t e + α, and
a batch of k copies adds k e ŵ_{t-1} + N(0, k e V_t): S_t = r_t S_{t-1} + ν with r_t = k_t e /
D_{t-1} (replace) or 1 + k_t e / D_{t-1} (accumulate). Then E[excess] per direction is
(a_t/D_t - 1)² + q_t/D_t², summed over directions and averaged over the R chains' designs
(exact given the designs; there is no closed form over Wishart designs).

``residual_variance``, least squares, replace: E s²_t = E V_t (either noise mode and design).

No closed form here: accumulate with estimated noise (the pooled residuals mix generations with
different means), accumulate with fresh designs (the pool weights each generation by its own
Gram matrix), ridge with fresh designs or estimated noise, ``weight_norm`` (E‖ŵ‖, not
E‖ŵ‖²), and the other regimes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.regimes import Regime
from madloop.theory.registry import Predictor, register_predictor

FAMILY = "linear-regression"
REGIMES = ("fully-synthetic", "accumulate")


def batch_sizes(regime: Regime, generations: int) -> np.ndarray:
    """Rows drawn at generations 1..T: the real batch, then each synthetic one."""
    rest = [regime.n_synthetic(t) for t in range(2, generations + 1)]
    return np.asarray([regime.n_initial(), *rest], dtype=float)


def noise_scale(generations: int, bias: float, noise: str) -> np.ndarray:
    """v_i = E[V_i]/σ² for i = 1..T: 1, then λ (known) or λ^(i-1) (estimated)."""
    i = np.arange(1, generations + 1)
    if noise == "estimated":
        return bias ** (i - 1.0)
    return np.where(i == 1, 1.0, bias)


def pool_weights(copies: np.ndarray, accumulate: bool) -> np.ndarray:
    """k_i / K_i² per generation: K_i = k_i (replace) or Σ_{j<=i} k_j (accumulate)."""
    pool = np.cumsum(copies) if accumulate else copies
    return copies / pool**2


def excess_risk_fixed(
    copies: np.ndarray,
    scale: np.ndarray,
    *,
    sigma2: float,
    dim: int,
    design_size: int,
    accumulate: bool,
) -> np.ndarray:
    """E[excess_risk_t], least squares on a fixed Gaussian design (over designs too)."""
    trace = dim / (design_size - dim - 1.0)
    return sigma2 * trace * np.cumsum(pool_weights(copies, accumulate) * scale)


def excess_risk_fresh(
    rows: np.ndarray, scale: np.ndarray, *, sigma2: float, dim: int
) -> np.ndarray:
    """E[excess_risk_t], least squares on fresh designs, replace."""
    return sigma2 * np.cumsum(scale * dim / (rows - dim - 1.0))


def excess_risk_ridge(
    eigenvalues: np.ndarray,
    copies: np.ndarray,
    scale: np.ndarray,
    *,
    sigma2: float,
    ridge: float,
    accumulate: bool,
) -> np.ndarray:
    """E[excess_risk_t | designs] for ridge (any α >= 0) on fixed designs with eigenvalues
    (R, d) of XᵀX, averaged over the R chains (the recursion of the module docstring)."""
    e = np.clip(np.asarray(eigenvalues, dtype=float), 0.0, None)
    variance = sigma2 * scale
    a = copies[0] * e
    q = copies[0] * e * variance[0]
    pool = copies[0]
    out = np.empty(copies.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(copies.size):
            if t > 0:
                r = copies[t] * e / (pool * e + ridge)
                r = 1.0 + r if accumulate else r
                a, q = r * a, r * r * q + copies[t] * e * variance[t]
                pool = pool + copies[t] if accumulate else copies[t]
            D = pool * e + ridge
            per_direction = np.where(D > 0, (a / D - 1.0) ** 2 + q / D**2, 1.0)
            out[t] = per_direction.sum(axis=1).mean()
    return out


def predictions(config: Any, real: Any, regime: Regime) -> dict[str, np.ndarray]:
    """E[metric] per generation 1..T for the metrics with a closed form here (see above)."""
    data, model = config.data, config.model
    gens, lam = config.generations, config.sampling.bias
    accumulate = regime.name == "accumulate"
    rows = batch_sizes(regime, gens)
    scale = noise_scale(gens, lam, model.noise)
    sigma2, d, T_design = data.noise_variance, data.dim, data.design_size
    out: dict[str, np.ndarray] = {}
    if not accumulate and model.ridge == 0.0:
        out["residual_variance"] = sigma2 * scale
    if data.design == "fixed":
        copies = rows / data.design_size
        if model.ridge > 0.0:
            if model.noise == "known":
                design = real.design_for(config.replicates)
                eig = np.linalg.eigvalsh(np.einsum("rti,rtj->rij", design, design))
                out["excess_risk"] = excess_risk_ridge(
                    eig, copies, scale, sigma2=sigma2, ridge=model.ridge, accumulate=accumulate
                )
        elif T_design > d + 1 and not (accumulate and model.noise == "estimated"):
            out["excess_risk"] = excess_risk_fixed(
                copies, scale, sigma2=sigma2, dim=d, design_size=T_design, accumulate=accumulate
            )
    elif not accumulate and model.ridge == 0.0 and rows.min() > d + 1:
        out["excess_risk"] = excess_risk_fresh(rows, scale, sigma2=sigma2, dim=d)
    return out


def _applies(config: Any, regime: Regime) -> bool:
    return (
        config.model.family == FAMILY
        and config.data.source == FAMILY
        and regime.name in REGIMES
    )


def _predict(arm: str, config: Any, real: Any, regime: Regime) -> dict[str, np.ndarray]:
    return predictions(config, real, regime)


register_predictor(Predictor(FAMILY, _applies, _predict))
