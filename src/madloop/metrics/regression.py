"""Metrics of a fitted linear regression against the true coefficients w* (exact, no sampling).

``excess_risk`` = (ŵ - w*)ᵀ Σ_x (ŵ - w*), the test risk above the noise floor σ²; with
x ~ N(0, I_d) that is ‖ŵ - w*‖². ``weight_norm`` = ‖ŵ‖ and ``residual_variance`` = the fit's
s² = RSS/(m - d) (NaN when m <= d).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.metrics.base import MetricSuite, register_suite

REGRESSION_METRICS = ("excess_risk", "weight_norm", "residual_variance")


def regression_metrics(
    coef: np.ndarray, true_coef: np.ndarray, residual_variance: np.ndarray, dof: np.ndarray
) -> dict[str, np.ndarray]:
    """coef, true_coef (R, d); residual_variance, dof (R,) (dof = rows - d of the fit)."""
    error = coef - true_coef
    return {
        "excess_risk": np.einsum("ri,ri->r", error, error),
        "weight_norm": np.linalg.norm(coef, axis=1),
        "residual_variance": np.where(dof > 0, residual_variance, np.nan),
    }


def _applies(model: Any, real: Any) -> bool:
    return hasattr(model, "coefficients") and hasattr(real, "true_coefficients")


def _compute(model: Any, real: Any, *, rng: np.random.Generator, generation: int):
    coef = model.coefficients()
    dof = model.n_samples_ - coef.shape[1]
    truth = real.true_coefficients(coef.shape[0])
    return regression_metrics(coef, truth, model.residual_variance_, dof)


register_suite(MetricSuite("linear-regression", _applies, _compute, draws=False))
