"""The web-pool theory: reductions to the foundation's recursion, the critical real fraction and
the curation contraction."""

from __future__ import annotations

import numpy as np
import pytest

from madloop.config import parse
from madloop.pool import PoolSchedule, WebPoolConfig, phase_boundary, pool_theory
from madloop.regimes import FreshData
from madloop.theory import gaussian as theory
from madloop.theory.pool import (
    Cohort,
    LineageLaw,
    apportion,
    critical_real_fraction,
    critical_tpr,
    curation_contraction,
    effective_real_fraction,
    growth_factor,
    pool_moments,
    stationary_moments,
)


def one_lineage(n: int, T: int, *, keep=lambda s: 1.0, estimator="unbiased", **loop):
    cfg = WebPoolConfig(scrape_size=n, **loop)
    sched = PoolSchedule(cfg, [1.0])
    law = LineageLaw("m", n, estimator=estimator)
    return pool_moments(
        [law], sched.reachable, keep, T, refill=cfg.refill, scrape=cfg.scrape, max_age=cfg.max_age
    )["m"]


def test_apportion_sums_and_is_deterministic():
    for n in (1, 7, 100):
        w = np.array([0.3, 0.3, 0.2, 0.2, 1e-9])
        a = apportion(n, w)
        assert a.sum() == n and np.all(a >= 0)
        assert np.all(np.abs(a - n * w / w.sum()) < 1)
        np.testing.assert_array_equal(a, apportion(n, w))
    np.testing.assert_array_equal(apportion(50, [0.6, 0.4]), [30, 20])


@pytest.mark.parametrize("adoption", [0.0, 0.3, 0.55])
@pytest.mark.parametrize("estimator", ["unbiased", "mle"])
def test_proportional_unfiltered_current_pool_is_the_fresh_data_recursion(adoption, estimator):
    """One lineage, expected counts, no detector and max_age = 1: the training set is n(1-a) new
    real items plus n·a samples of the previous generation, the fresh-data regime."""
    n, T = 40, 12
    got = one_lineage(
        n, T, estimator=estimator, adoption=adoption, max_age=1, scrape="proportional"
    )
    n_real, n_syn = apportion(n, np.array([1 - adoption, adoption]))
    want = theory.expected_moments(
        FreshData(real_size=int(n_real), synthetic_size=int(n_syn), initial_real_size=n),
        T,
        covariance_estimator=estimator,
    )
    np.testing.assert_allclose(got["trace_ratio"], want.trace_ratio, rtol=1e-12)
    np.testing.assert_allclose(
        got["mean_error_sq_per_trace"], want.mean_error_sq_per_trace, rtol=1e-12
    )


def test_perfect_detector_theory_is_fresh_real_data():
    n, T = 25, 10
    got = one_lineage(
        n, T, keep=lambda s: 1.0 if s == 0 else 0.0, adoption=0.8, detector={"tpr": 1.0}
    )
    want = theory.expected_moments(FreshData(real_size=n, synthetic_size=0), T)
    np.testing.assert_allclose(got["trace_ratio"], want.trace_ratio, rtol=1e-12)
    np.testing.assert_allclose(
        got["mean_error_sq_per_trace"], want.mean_error_sq_per_trace, rtol=1e-12
    )
    np.testing.assert_allclose(got["synthetic_share"], 0.0, atol=1e-12)


def test_random_counts_cost_a_little_over_expected_counts():
    """Multinomial counts add variance: the mean error is (slightly) above the proportional one."""
    rand = one_lineage(20, 15, adoption=0.6, max_age=1)
    prop = one_lineage(20, 15, adoption=0.6, max_age=1, scrape="proportional")
    assert np.all(rand["mean_error_sq_per_trace"][1:] > prop["mean_error_sq_per_trace"][1:])
    assert np.all(rand["mean_error_sq_per_trace"][1:] < 1.2 * prop["mean_error_sq_per_trace"][1:])


def test_stationary_moments_are_the_limit_of_the_recursion():
    n = 30
    for r in (0.05, 0.3, 0.9):
        got = one_lineage(n, 3000, adoption=1 - r, max_age=1)
        m_star, b_star = stationary_moments(r, n)
        assert got["mean_error_sq_per_trace"][-1] == pytest.approx(m_star, rel=1e-9)
        assert got["trace_ratio"][-1] == pytest.approx(b_star, rel=1e-9)


def test_critical_real_fraction_separates_bounded_from_growing():
    n = 20
    rho_c = critical_real_fraction(n)
    assert growth_factor(rho_c, n) == pytest.approx(1.0, abs=1e-9)
    assert rho_c == pytest.approx(1 / (2 * n), rel=0.05)
    T = 4000
    above = one_lineage(n, T, adoption=1 - 2 * rho_c, max_age=1)["mean_error_sq_per_trace"]
    below = one_lineage(n, T, adoption=1 - rho_c / 2, max_age=1)["mean_error_sq_per_trace"]
    assert above[-1] / above[T // 2] < 1.001  # settled
    assert above[-1] == pytest.approx(stationary_moments(2 * rho_c, n)[0], rel=1e-3)
    assert below[-1] / below[T // 2] > 10.0  # growing geometrically
    # a sampling bias shrinks the variance, and with it the mean's walk: stable for every ρ > 0
    assert critical_real_fraction(n, bias=0.9) == 0.0


def test_tolerance_fraction_large_n_closed_form():
    for kappa in (1.5, 2.0, 4.0):
        rho = critical_real_fraction(100_000, tolerance=kappa)
        assert rho == pytest.approx(1 - np.sqrt(1 - 1 / kappa), abs=1e-3)
        m_star = stationary_moments(rho, 100_000)[0]
        assert m_star * 100_000 * (100_000 - 1) / 100_000 == pytest.approx(kappa, rel=1e-3)


def test_critical_tpr_restores_the_critical_fraction():
    a = np.array([0.5, 0.9, 0.95, 0.99])
    tau = critical_tpr(a, n=50, fpr=0.1, tolerance=2.0)
    rho = critical_real_fraction(50, tolerance=2.0)
    ok = tau > 0
    np.testing.assert_allclose(effective_real_fraction(a[ok], tau[ok], 0.1), rho, rtol=1e-9)
    assert np.all(effective_real_fraction(a[~ok], 0.0, 0.1) >= rho)
    assert np.all(np.diff(tau) >= 0)


def test_curation_contraction_against_order_statistics():
    rng = np.random.default_rng(5)
    d, k, N, reps = 3, 40, 100, 20_000
    x = np.sort(rng.chisquare(d, size=(reps, N)), axis=1)[:, :k].mean(axis=1) / d
    c = curation_contraction(d, k, N)
    assert abs(x.mean() - c) < 4 * x.std(ddof=1) / np.sqrt(reps)
    assert curation_contraction(2, 50, 50) == pytest.approx(1.0, rel=1e-9)  # keep all: no change


def test_lag_and_aging_change_what_the_theory_sees():
    cfg = WebPoolConfig(adoption=0.5, max_age=2)
    sched = PoolSchedule(cfg, [1.0, 1.0])
    assert {(c.source, c.published) for c in sched.reachable(5, 0)} == {
        (0, 4),
        (1, 4),
        (2, 4),
        (0, 5),
        (1, 5),
        (2, 5),
    }
    assert {(c.source, c.published) for c in sched.reachable(5, 2)} == {
        (0, 2),
        (1, 2),
        (2, 2),
        (0, 3),
        (1, 3),
        (2, 3),
    }
    assert sched.reachable(2, 5) == [Cohort(0, 1, 1.0)]  # a cutoff before generation 1


def test_phase_boundary_is_where_theory_meets_the_tolerance():
    _, arms = parse(
        {
            "generations": 25,
            "data": {"source": "gaussian", "dim": 2},
            "model": {"family": "gaussian"},
            "loop": {"regime": "web-pool", "scrape_size": 30, "max_age": 1},
        }
    )
    arm = arms[0]
    frame = phase_boundary(arm, [0.2, 0.8, 0.95, 0.99], tolerance=2.0)
    level = 2.0 * 2 / 30
    tpr = frame["critical_tpr"].to_numpy()
    assert tpr[0] == 0.0 and np.all(np.diff(tpr) > 0) and tpr[-1] < 1
    for a, t in zip(frame["adoption"], tpr, strict=True):
        if t > 0:
            th = pool_theory(arm, adoption=a, detector={"tpr": t})
            assert th.values["model"]["mean_error_sq"][-1] == pytest.approx(level, rel=1e-4)
    # by generation 25 the max_age = 1 loop is near its fixed point: the closed form agrees
    np.testing.assert_allclose(tpr[1:], frame["stationary_critical_tpr"][1:], atol=0.02)
