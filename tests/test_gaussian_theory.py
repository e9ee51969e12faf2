"""Simulation meets theory: the closed forms of ``madloop.theory`` against the exact Gaussian loop.

Every check is a mean over R replicate chains compared with its expectation within k = 4 standard
errors (estimated from the same replicates), with fixed seeds. Regimes, dimensions, sizes (down to
n = d + 2), both covariance estimators, λ = 1 and λ < 1 and a non-identity Σ_0 with μ_0 != 0 are
all covered; accumulate-subsample runs in ``sample`` mode (``exact`` cannot reproduce it).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import digamma, polygamma

from gaussian_helpers import assert_mean_matches, assert_var_matches, make_loop, run_metrics
from madloop.regimes import REGIMES
from madloop.theory import gaussian as theory

K = 4.0  # standard errors allowed


def _trace0(loop) -> float:
    return float(np.trace(loop.real.covariance))


# (regime, sizes, dim, bias, estimator, covariance, exact, generations, replicates)
MOMENT_CASES = [
    # fully synthetic: n = d + 2, λ < 1, unbiased and MLE, identity and random Σ_0
    ("fully-synthetic", {"synthetic_size": 5}, 3, 0.8, "unbiased", "identity", True, 12, 4000),
    ("fully-synthetic", {"synthetic_size": 5}, 3, 0.8, "mle", "random", True, 12, 4000),
    ("fully-synthetic", {"synthetic_size": 100}, 10, 1.0, "unbiased", "random", True, 20, 2000),
    ("fully-synthetic", {"synthetic_size": 12}, 10, 0.9, "mle", "identity", True, 15, 3000),
    # a first generation of another size (n_ini), then n_s per generation from a list
    (
        "fully-synthetic",
        {"synthetic_size": [6, 9, 4], "initial_real_size": 20},
        2,
        0.7,
        "unbiased",
        "identity",
        True,
        10,
        4000,
    ),
    (
        "synthetic-augmentation",
        {"real_size": 4, "synthetic_size": 6},
        3,
        0.7,
        "unbiased",
        "random",
        True,
        12,
        4000,
    ),
    (
        "synthetic-augmentation",
        {"real_size": 20, "synthetic_size": 30, "initial_real_size": 25},
        5,
        1.0,
        "mle",
        "identity",
        True,
        12,
        3000,
    ),
    (
        "fresh-data",
        {"real_size": 5, "synthetic_size": 10},
        4,
        0.9,
        "mle",
        "identity",
        True,
        12,
        4000,
    ),
    (
        "fresh-data",
        {"real_size": [3, 8], "synthetic_size": [10, 5, 20], "initial_real_size": 7},
        3,
        1.0,
        "unbiased",
        "random",
        True,
        10,
        4000,
    ),
    (
        "accumulate",
        {"real_size": 0, "synthetic_size": 5},
        3,
        0.8,
        "unbiased",
        "identity",
        True,
        12,
        4000,
    ),
    (
        "accumulate",
        {"real_size": 10, "synthetic_size": [4, 8], "initial_real_size": 6},
        3,
        1.0,
        "mle",
        "random",
        True,
        12,
        4000,
    ),
    (
        "accumulate-subsample",
        {"real_size": 3, "synthetic_size": 4},
        3,
        0.8,
        "unbiased",
        "identity",
        False,
        10,
        4000,
    ),
    (
        "accumulate-subsample",
        {"real_size": 0, "synthetic_size": [6, 10], "initial_real_size": 8},
        2,
        1.0,
        "mle",
        "random",
        False,
        10,
        4000,
    ),
]


@pytest.mark.parametrize(
    "regime,sizes,dim,bias,estimator,covariance,exact,T,R",
    MOMENT_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(MOMENT_CASES)],
)
def test_expected_trace_and_mean_error(
    regime, sizes, dim, bias, estimator, covariance, exact, T, R
):
    """E[trace_ratio] and E[mean_error_sq] at every generation 1..T within K standard errors."""
    loop = make_loop(
        regime,
        dim=dim,
        replicates=R,
        exact=exact,
        bias=bias,
        estimator=estimator,
        covariance=covariance,
        seed=2024,
        **sizes,
    )
    assert loop.exact == exact
    metrics, _ = run_metrics(loop, T)
    pred = theory.expected_moments(loop.regime, T, bias=bias, covariance_estimator=estimator)
    trace0 = _trace0(loop)
    # T checks per metric: widen K a little for the multiple comparisons (still ~4 SE)
    for t in range(T):
        assert_mean_matches(
            metrics["trace_ratio"][t], pred.trace_ratio[t], k=K, what=f"trace_ratio t={t + 1}"
        )
        assert_mean_matches(
            metrics["mean_error_sq"][t],
            pred.mean_error_sq_per_trace[t] * trace0,
            k=K,
            what=f"mean_error_sq t={t + 1}",
        )


def test_theory_detects_a_wrong_prediction():
    """The comparison has power: the λ = 1 prediction is rejected for a λ = 0.8 loop."""
    loop = make_loop(
        "fully-synthetic", dim=3, replicates=4000, exact=True, bias=0.8, synthetic_size=5, seed=1
    )
    metrics, _ = run_metrics(loop, 8)
    wrong = theory.expected_moments(loop.regime, 8, bias=1.0)
    with pytest.raises(AssertionError):
        assert_mean_matches(metrics["trace_ratio"][-1], wrong.trace_ratio[-1], k=K)


@pytest.mark.parametrize("estimator", ["unbiased", "mle"])
@pytest.mark.parametrize("bias", [1.0, 0.8])
def test_fully_synthetic_closed_forms(estimator, bias):
    """The general recursion reproduces the published closed forms of the fully synthetic loop:
    E[Σ_t] = λ^(t-1) Σ_0 (× ((n-1)/n)^t for the MLE) and, unbiased,
    E||μ_t - μ_0||² = tr Σ_0 / n · (1 - λ^t)/(1 - λ)."""
    n, T = 7, 40
    regime = REGIMES["fully-synthetic"](synthetic_size=n)
    pred = theory.expected_moments(regime, T, bias=bias, covariance_estimator=estimator)
    t = np.arange(1, T + 1)
    np.testing.assert_allclose(
        pred.trace_ratio, theory.fully_synthetic_trace_ratio(t, bias, n, estimator), rtol=1e-10
    )
    if estimator == "unbiased":
        np.testing.assert_allclose(
            pred.mean_error_sq_per_trace,
            theory.fully_synthetic_mean_error(t, bias, n, 1.0),
            rtol=1e-10,
        )
    else:  # MLE: the model variance shrinks by (n-1)/n more per generation
        b = bias ** (t - 1) * ((n - 1) / n) ** t
        var = np.cumsum(np.concatenate([[1.0], bias * b[:-1]])) / n
        np.testing.assert_allclose(pred.mean_error_sq_per_trace, var, rtol=1e-10)


def test_log_det_step_formula():
    """The per-generation drift is the issue's formula, negative even at λ = 1."""
    for n, d in [(5, 3), (7, 3), (100, 10), (12, 10)]:
        mean, var = theory.log_det_step(n, d)
        i = np.arange(d)
        expected = np.sum(digamma((n - 1 - i) / 2) + np.log(2 / (n - 1)))
        assert mean == pytest.approx(expected, rel=1e-12)
        assert mean < 0
        assert var == pytest.approx(np.sum(polygamma(1, (n - 1 - i) / 2)), rel=1e-12)
        mle_mean, _ = theory.log_det_step(n, d, "mle")
        assert mle_mean == pytest.approx(expected + d * np.log((n - 1) / n), rel=1e-12)
    assert theory.log_det_step(3, 3)[0] == -np.inf  # n <= d: singular


# (dim, n, bias, estimator, covariance, generations, replicates)
LOGDET_CASES = [
    (3, 5, 1.0, "unbiased", "identity", 20, 4000),  # n = d + 2
    (3, 7, 0.8, "mle", "random", 20, 4000),
    (10, 12, 1.0, "unbiased", "random", 20, 2000),  # n = d + 2 in 10-D
    (10, 100, 0.9, "unbiased", "identity", 50, 2000),
    (5, 30, 1.0, "mle", "identity", 30, 3000),
    (3, 1_000_000, 0.95, "unbiased", "random", 10, 3000),  # exact: n costs nothing
]


@pytest.mark.parametrize("dim,n,bias,estimator,covariance,T,R", LOGDET_CASES)
def test_log_det_drift_mean_and_variance(dim, n, bias, estimator, covariance, T, R):
    """Mean and variance of log det Σ_t - log det Σ_0 match theory at several generations: the
    mean within K standard errors; the variance within K standard errors of a sample variance
    (estimated from the fourth central moment)."""
    loop = make_loop(
        "fully-synthetic",
        dim=dim,
        replicates=R,
        exact=True,
        bias=bias,
        estimator=estimator,
        covariance=covariance,
        seed=99,
        synthetic_size=n,
    )
    metrics, _ = run_metrics(loop, T)
    mean, var = theory.log_det_drift(loop.regime, T, dim, bias=bias, covariance_estimator=estimator)
    assert np.all(mean < 0)  # drift is negative even at λ = 1
    for t in sorted({1, 2, T // 2, T}):
        x = metrics["log_det_change"][t - 1]
        assert_mean_matches(x, mean[t - 1], k=K, what=f"log_det_change t={t}")
        assert_var_matches(x, var[t - 1], k=K, what=f"Var log_det_change t={t}")


def test_log_det_falls_although_trace_holds():
    """At λ = 1 the mean covariance stays Σ_0 while log det drifts down: Σ_t -> 0 a.s."""
    loop = make_loop(
        "fully-synthetic", dim=3, replicates=4000, exact=True, synthetic_size=5, seed=5
    )
    metrics, _ = run_metrics(loop, 30)
    assert_mean_matches(metrics["trace_ratio"][-1], 1.0, k=K, what="trace_ratio t=30")
    assert np.median(metrics["trace_ratio"][-1]) < 0.1  # typical chains have collapsed
    assert metrics["log_det_change"][-1].mean() < -30


def test_predictions_include_log_det_only_for_fully_synthetic():
    fs = theory.predictions(REGIMES["fully-synthetic"](synthetic_size=10), 5, dim=2, trace0=2.0)
    fd = theory.predictions(
        REGIMES["fresh-data"](real_size=5, synthetic_size=5), 5, dim=2, trace0=2.0
    )
    assert set(fs) == {"trace_ratio", "mean_error_sq", "log_det_change"}
    assert set(fd) == {"trace_ratio", "mean_error_sq"}
    np.testing.assert_allclose(fs["mean_error_sq"], 2.0 * np.arange(1, 6) / 10)
