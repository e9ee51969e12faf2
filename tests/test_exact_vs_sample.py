"""`exact` and `sample` are one law: two-sample tests on the metrics at a late generation.

For every regime `exact` supports, the same loop runs in both modes (independent seeds) and each
metric's distribution over R replicates at the last generation is compared with the two-sample
Kolmogorov-Smirnov and k-sample Anderson-Darling tests. A negative control (a slightly different
bias) shows the tests have the power to tell laws apart at this R.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import anderson_ksamp, ks_2samp

from gaussian_helpers import make_loop, run_metrics
from madloop.regimes import REGIMES

R = 4000
T = 8
ALPHA = 1e-3  # per test; ~4 metrics x 2 tests x 9 cases, fixed seeds
METRICS = ("trace_ratio", "mean_error_sq", "log_det_change", "wasserstein2", "kl_divergence")

CASES = [
    ("fully-synthetic", {"synthetic_size": 6}, 3, 0.9, "unbiased"),
    ("fully-synthetic", {"synthetic_size": [12, 15]}, 10, 1.0, "mle"),
    ("synthetic-augmentation", {"real_size": 4, "synthetic_size": 6}, 3, 0.8, "unbiased"),
    (
        "synthetic-augmentation",
        {"real_size": 3, "synthetic_size": 10, "initial_real_size": 8},
        4,
        1.0,
        "mle",
    ),
    ("fresh-data", {"real_size": 3, "synthetic_size": 7}, 3, 1.0, "unbiased"),
    (
        "fresh-data",
        {"real_size": [2, 5], "synthetic_size": 9, "initial_real_size": 6},
        5,
        0.7,
        "mle",
    ),
    ("accumulate", {"real_size": 0, "synthetic_size": 4}, 3, 0.9, "unbiased"),
    (
        "accumulate",
        {"real_size": 2, "synthetic_size": [5, 3], "initial_real_size": 7},
        4,
        1.0,
        "mle",
    ),
]


def _late(mode_exact: bool, regime, sizes, dim, bias, estimator, seed, covariance="random"):
    loop = make_loop(
        regime,
        dim=dim,
        replicates=R,
        exact=mode_exact,
        bias=bias,
        estimator=estimator,
        covariance=covariance,
        seed=seed,
        **sizes,
    )
    assert loop.exact == mode_exact
    metrics, _ = run_metrics(loop, T)
    return {k: v[-1] for k, v in metrics.items()}


def _p_values(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anderson_ksamp caps its p-value at [0.001, 0.25]
        ad = anderson_ksamp([a, b], method=None)
    return ks_2samp(a, b).pvalue, float(ad.pvalue)


def test_every_exact_regime_is_covered():
    # regimes with an engine of their own (web-pool) test both modes in their own suites
    exact_regimes = {
        name
        for name, cls in REGIMES.items()
        if cls.exact and cls.engine == "loop"
    }
    assert exact_regimes >= {c[0] for c in CASES}
    assert {c[0] for c in CASES} >= exact_regimes - {
        n for n in exact_regimes if n.startswith("test-")
    }


@pytest.mark.parametrize(
    "regime,sizes,dim,bias,estimator", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_same_law_in_both_modes(regime, sizes, dim, bias, estimator):
    ex = _late(True, regime, sizes, dim, bias, estimator, seed=10)
    sa = _late(False, regime, sizes, dim, bias, estimator, seed=20)
    for metric in METRICS:
        a, b = ex[metric], sa[metric]
        assert np.isfinite(a).all() and np.isfinite(b).all(), metric
        ks, ad = _p_values(a, b)
        assert ks > ALPHA and ad > ALPHA, f"{metric}: KS p={ks:.2g}, AD p={ad:.2g}"


def test_two_sample_tests_have_power():
    """Negative control: the same comparison rejects a bias of 0.9 against 0.8."""
    case = ("fully-synthetic", {"synthetic_size": 6}, 3)
    ex = _late(True, *case, 0.9, "unbiased", seed=10)
    sa = _late(False, *case, 0.8, "unbiased", seed=20)
    ks, ad = _p_values(ex["trace_ratio"], sa["trace_ratio"])
    assert ks < ALPHA and ad <= ALPHA  # AD's p-value is floored at 0.001


def test_modes_differ_only_in_randomness():
    """Same seed and mode => same numbers (reproducible); exact and sample use different draws."""
    a = _late(True, "fresh-data", {"real_size": 3, "synthetic_size": 7}, 3, 1.0, "unbiased", 5)
    b = _late(True, "fresh-data", {"real_size": 3, "synthetic_size": 7}, 3, 1.0, "unbiased", 5)
    np.testing.assert_array_equal(a["trace_ratio"], b["trace_ratio"])
    c = _late(False, "fresh-data", {"real_size": 3, "synthetic_size": 7}, 3, 1.0, "unbiased", 5)
    assert not np.allclose(a["trace_ratio"], c["trace_ratio"])
