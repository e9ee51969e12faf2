"""Weighted real data, ``loop.real_weight`` (He, Xu, Cheng 2025): real rows weigh w / n_r,
synthetic rows (1 - w) / n_s.

- simulation against the exact weighted moment recursion (``theory.gaussian.expected_moments``),
  within K standard errors of the simulation's own spread, for both estimators, two weights, both
  regimes that mix sources, and both modes, which also agree with each other in law;
- the golden ratio: the stationary mean error of fresh-data with a known covariance is least at
  w = 1/φ when n_s = n_r (closed form and numerical argmin), and simulated w = 0.618 beats 0.3
  and 0.9 beyond K standard errors;
- the weighted statistics are sufficient (merged batch statistics = the weighted fit of the
  points) and match numpy's reliability-weight covariance;
- without the key the numbers are bit for bit those of the unweighted code (stored from main);
- checkpoint/resume of a weighted arm is bit exact; bad input is a ConfigError naming the key.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.optimize import minimize_scalar
from typer.testing import CliRunner

from blas import bit_for_bit
from madloop.cli import app
from madloop.config import ConfigError, parse
from madloop.experiment import run
from madloop.linalg import to_stats, weighted_stats_from_points
from madloop.models.gaussian import GaussianFamily
from madloop.regimes import FreshData
from madloop.theory.gaussian import (
    expected_moments,
    optimal_real_weight,
    optimal_real_weight_numeric,
    stationary_mean_error,
)
from madloop.types import REAL, SYNTHETIC, Points, Stats, weigh_sources

K = 4.0  # standard errors
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 1/φ


def config(
    *,
    regime: str = "fresh-data",
    mode: str = "exact",
    weight: float | None = None,
    estimator: str = "unbiased",
    fit: str = "mean-and-covariance",
    generations: int = 8,
    replicates: int = 2000,
    seed: int = 3,
    real_size: int = 6,
    synthetic_size: int = 14,
    bias: float = 1.0,
) -> dict:
    loop = {"regime": regime, "real_size": real_size, "synthetic_size": synthetic_size}
    if weight is not None:
        loop["real_weight"] = weight
    return {
        "name": "w",
        "seed": seed,
        "generations": generations,
        "replicates": replicates,
        "data": {"source": "gaussian", "dim": 2, "covariance": [[1.0, 0.3], [0.3, 0.5]]},
        "model": {
            "family": "gaussian",
            "mode": mode,
            "covariance_estimator": estimator,
            "fit": fit,
        },
        "sampling": {"bias": bias},
        "loop": loop,
    }


def last(summary: pd.DataFrame, metric: str, generation: int) -> pd.Series:
    row = summary[(summary.metric == metric) & (summary.generation == generation)]
    assert len(row) == 1
    return row.iloc[0]


def check_theory(summary: pd.DataFrame, generations: tuple[int, ...]) -> None:
    for metric in ("mean_error_sq", "trace_ratio"):
        for g in generations:
            r = last(summary, metric, g)
            assert np.isfinite(r.theory)
            assert abs(r["mean"] - r.theory) <= K * r.std_error + 1e-12, (metric, g, r.to_dict())


def values(metrics: pd.DataFrame, metric: str, generation: int) -> np.ndarray:
    sel = metrics[(metrics.metric == metric) & (metrics.generation == generation)]
    return sel.sort_values("replicate")["value"].to_numpy(dtype=float)


# -- simulation against theory, both modes in law ------------------------------------------------
@pytest.mark.parametrize("regime", ["fresh-data", "synthetic-augmentation"])
@pytest.mark.parametrize("estimator", ["unbiased", "mle"])
@pytest.mark.parametrize("weight", [0.3, 0.618])
def test_weighted_mean_and_covariance_match_theory_in_both_modes(regime, estimator, weight):
    T = 8
    runs = {
        mode: run(config(regime=regime, mode=mode, weight=weight, estimator=estimator))
        for mode in ("exact", "sample")
    }
    for res in runs.values():
        check_theory(res.summary, (2, T))
    for metric in ("mean_error_sq", "trace_ratio"):
        a, b = (last(r.summary, metric, T) for r in runs.values())
        assert abs(a["mean"] - b["mean"]) <= K * math.hypot(a.std_error, b.std_error), metric
        # the same law, not only the same mean: a two-sample KS test on the replicates
        ks = sps.ks_2samp(*(values(r.metrics, metric, T) for r in runs.values()))
        assert ks.pvalue > 1e-4, (metric, ks)


@pytest.mark.parametrize("regime", ["fresh-data", "synthetic-augmentation"])
@pytest.mark.parametrize("weight", [0.3, 0.618])
@pytest.mark.parametrize("mode", ["exact", "sample"])
def test_fit_mean_matches_theory(regime, weight, mode):
    cfg = config(regime=regime, mode=mode, weight=weight, fit="mean", generations=10, bias=0.8)
    res = run(cfg)
    check_theory(res.summary, (2, 10))
    assert np.all(values(res.metrics, "trace_ratio", 10) == pytest.approx(1.0, abs=1e-12))


def test_theory_recursion_is_the_stated_one():
    """fit = mean, fresh-data: e_t = (1-w)² (e_{t-1} + λ/n_s) + w²/n_r (units of tr Σ_0), e_1 =
    1/n_1; its limit is the stationary closed form."""
    n_r, n_s, lam, w = 6, 14, 0.7, 0.4
    regime = FreshData(real_size=n_r, synthetic_size=n_s)
    got = expected_moments(regime, 300, bias=lam, real_weight=w, fit="mean")
    e = [1.0 / (n_r + n_s)]
    for _ in range(299):
        e.append((1 - w) ** 2 * (e[-1] + lam / n_s) + w**2 / n_r)
    np.testing.assert_allclose(got.mean_error_sq_per_trace, e, rtol=1e-12)
    np.testing.assert_array_equal(got.trace_ratio, 1.0)
    assert e[-1] == pytest.approx(stationary_mean_error(w, n_r, n_s, bias=lam), rel=1e-12)


def test_weighted_covariance_recursion_at_equal_weights_is_the_unweighted_one():
    """w = n_r / (n_r + n_s) gives every row 1/n: the weighted recursion must reduce to the
    unweighted one (V1 - V2/V1 = (n-1)/n, V1 = 1)."""
    regime = FreshData(real_size=6, synthetic_size=14)
    for est in ("unbiased", "mle"):
        plain = expected_moments(regime, 30, bias=0.8, covariance_estimator=est)
        eq = expected_moments(regime, 30, bias=0.8, covariance_estimator=est, real_weight=0.3)
        np.testing.assert_allclose(eq.trace_ratio, plain.trace_ratio, rtol=1e-12)
        np.testing.assert_allclose(
            eq.mean_error_sq_per_trace, plain.mean_error_sq_per_trace, rtol=1e-12
        )


# -- the golden ratio ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 10, 1000])
def test_optimum_at_equal_sizes_is_the_inverse_golden_ratio(n):
    assert abs(optimal_real_weight(n, n) - GOLDEN) < 1e-12
    # the argmin of the theory's stationary value, found numerically
    found = minimize_scalar(
        lambda w: stationary_mean_error(w, n, n),
        bounds=(1e-9, 1 - 1e-9),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert abs(found.x - GOLDEN) < 1e-6


@pytest.mark.parametrize("n_r, n_s, lam", [(5, 50, 1.0), (50, 5, 1.0), (20, 20, 0.5), (3, 7, 0.9)])
def test_optimum_for_other_sizes_is_the_numerical_argmin(n_r, n_s, lam):
    found = minimize_scalar(
        lambda w: stationary_mean_error(w, n_r, n_s, bias=lam),
        bounds=(1e-9, 1 - 1e-9),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert abs(optimal_real_weight(n_r, n_s, bias=lam) - found.x) < 1e-6


@pytest.mark.parametrize("n_r, n_s", [(10, 10), (5, 50)])
def test_argmin_of_the_recursion_is_the_closed_form(n_r, n_s):
    """The numerical argmin of the exact recursion's E||μ_T - μ_0||² (fit = mean) is the closed
    form: 1/φ to 1e-6 at n_r = n_s."""
    regime = FreshData(real_size=n_r, synthetic_size=n_s)
    w, err = optimal_real_weight_numeric(regime, fit="mean")
    assert abs(w - optimal_real_weight(n_r, n_s)) < 1e-6
    assert err == pytest.approx(stationary_mean_error(w, n_r, n_s), rel=1e-9)
    if n_r == n_s:
        assert abs(w - GOLDEN) < 1e-6


def test_fitting_the_covariance_moves_the_optimum():
    """With the covariance fitted, the synthetic rows' covariance is itself noisy: the optimum
    moves off 1/φ (unbiased: up, to about 0.624 at n = 10) and tends to it as n grows."""
    small = optimal_real_weight_numeric(FreshData(real_size=10, synthetic_size=10))[0]
    large = optimal_real_weight_numeric(FreshData(real_size=200, synthetic_size=200))[0]
    assert 0.62 < small < 0.63
    assert abs(large - GOLDEN) < abs(small - GOLDEN)


def test_simulated_golden_weight_beats_0_3_and_0_9():
    """Per-replicate mean error over generations 21..30 (replicates are independent, so the
    standard error of their average is exact); w = 0.618 must be lower by more than K SE."""
    got = {}
    for w in (0.3, 0.618, 0.9):
        cfg = config(
            weight=w,
            fit="mean",
            generations=30,
            replicates=4000,
            seed=11,
            real_size=10,
            synthetic_size=10,
        )
        m = run(cfg).metrics
        sel = m[(m.metric == "mean_error_sq") & (m.generation > 20)]
        per = sel.groupby("replicate")["value"].mean().to_numpy()
        got[w] = (per.mean(), per.std(ddof=1) / math.sqrt(per.size))
    gold, se_gold = got[0.618]
    for w in (0.3, 0.9):
        other, se = got[w]
        assert other - gold > K * math.hypot(se, se_gold), (w, got)
        # and each sits on its stationary theory (tr Σ_0 = 1.5)
        assert abs(other - 1.5 * stationary_mean_error(w, 10, 10)) <= K * se


def test_theory_command_prints_the_optimal_weight(tmp_path):
    from _toml import to_toml

    path = tmp_path / "g.toml"
    path.write_text(to_toml(config(weight=0.3, fit="mean", real_size=10, synthetic_size=10)))
    out = CliRunner().invoke(app, ["theory", str(path)])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "optimal loop.real_weight = 0.618034" in text
    assert f"real_weight = 0.3: {stationary_mean_error(0.3, 10, 10):.6g}" in text
    path.write_text(to_toml(config(real_size=10, synthetic_size=10)))
    out = CliRunner().invoke(app, ["theory", str(path)])
    text = " ".join(out.output.split())
    assert out.exit_code == 0 and "optimal loop.real_weight ≈ 0.62" in text, out.output


# -- the statistics -------------------------------------------------------------------------------
def test_weighted_batch_statistics_are_sufficient():
    """Reweighted batch statistics merged = the weighted fit of the concatenated points."""
    rng = np.random.default_rng(0)
    real = rng.standard_normal((3, 7, 4)) + 1.0
    synth = 0.3 * rng.standard_normal((3, 11, 4)) - 2.0
    w = 0.618
    pts = [
        Points.tagged(real, source=REAL, origin=0),
        Points.tagged(synth, source=SYNTHETIC, origin=1),
    ]
    weighted = Points.concat(weigh_sources(pts, w))
    np.testing.assert_allclose(weighted.weight.sum(axis=1), 1.0)
    np.testing.assert_allclose(weighted.weight[:, 0], w / 7)
    mean, factor, v1, v2 = weighted_stats_from_points(weighted.X, weighted.weight)

    parts = [to_stats(real, {(REAL, 0): np.full(3, 7)}), to_stats(synth, {(SYNTHETIC, 1): 11})]
    merged = Stats.merge(weigh_sources(parts, w))
    np.testing.assert_allclose(merged.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(
        merged.factor @ np.swapaxes(merged.factor, 1, 2),
        factor @ np.swapaxes(factor, 1, 2),
        rtol=1e-11,
    )
    np.testing.assert_allclose(merged.weight, v1)
    np.testing.assert_allclose(merged.weight_sq, w**2 / 7 + (1 - w) ** 2 / 11)
    np.testing.assert_array_equal(merged.count, 18)


@pytest.mark.parametrize("estimator, ddof", [("unbiased", 1), ("mle", 0)])
def test_weighted_fit_is_numpys_reliability_weighted_covariance(estimator, ddof):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2, 30, 3))
    weight = rng.random((2, 30))
    model = GaussianFamily(2, covariance_estimator=estimator).fit(X, sample_weight=weight)
    for r in range(2):
        want = np.cov(X[r].T, aweights=weight[r], ddof=ddof)
        np.testing.assert_allclose(model.covariance_[r], want, rtol=1e-12)
        np.testing.assert_allclose(model.mean_[r], np.average(X[r], axis=0, weights=weight[r]))


@pytest.mark.parametrize("mode", ["exact", "sample"])
@pytest.mark.parametrize("estimator", ["unbiased", "mle"])
def test_equal_weights_reproduce_the_unweighted_run(mode, estimator):
    """real_weight = n_r / (n_r + n_s) weighs every row 1/n: the same fit to rounding."""
    base = config(mode=mode, estimator=estimator, replicates=5, generations=6)
    plain = run(base).metrics
    equal = run(config(mode=mode, estimator=estimator, replicates=5, generations=6, weight=0.3))
    pd.testing.assert_frame_equal(plain, equal.metrics, check_exact=False, rtol=1e-9)


# -- unset: bit for bit the unweighted code --------------------------------------------------------
#: computed by main's code (commit 4e7d435, before real_weight existed) with the script in this
#: test: sha256 prefix of the trace_ratio, mean_error_sq and log_det_change values of every
#: generation and replicate, and a few of those values as float.hex
UNWEIGHTED = {
    ("fresh-data", "exact", "unbiased"): "fa2e9d1646407586",
    ("fresh-data", "exact", "mle"): "4c78f80dbe746aca",
    ("fresh-data", "sample", "unbiased"): "0540ea14c4eb250b",
    ("fresh-data", "sample", "mle"): "0e1d839ab7d1531c",
    ("synthetic-augmentation", "exact", "unbiased"): "04b3c789bca539e8",
    ("synthetic-augmentation", "exact", "mle"): "a69985edb83f0846",
    ("synthetic-augmentation", "sample", "unbiased"): "571d98897d566528",
    ("synthetic-augmentation", "sample", "mle"): "e635298a6a1c082a",
}
UNWEIGHTED_VALUES = {
    ("fresh-data", "exact", "unbiased"): [
        "-0x1.8b4df432d2e88p-3",
        "0x1.175d56d47d1c8p-3",
        "-0x1.8bee1577e1680p-6",
        "0x1.e39e6f1df551cp-1",
    ],
    ("synthetic-augmentation", "sample", "mle"): [
        "-0x1.b2bd00897464ep+0",
        "-0x1.f902e36d38520p-1",
        "-0x1.774e966717b7fp+1",
        "0x1.e1eceda0dc94bp-2",
    ],
}


@bit_for_bit
@pytest.mark.parametrize("key", sorted(UNWEIGHTED))
def test_unset_real_weight_is_bit_identical_to_the_unweighted_code(key):
    regime, mode, estimator = key
    cfg = {
        "name": "x",
        "generations": 6,
        "replicates": 3,
        "seed": 7,
        "data": {"source": "gaussian", "dim": 3, "covariance": "random"},
        "model": {"family": "gaussian", "mode": mode, "covariance_estimator": estimator},
        "loop": {"regime": regime, "real_size": 8, "synthetic_size": 12},
    }
    m = run(cfg).metrics
    m = m[m.metric.isin(["mean_error_sq", "trace_ratio", "log_det_change"])]
    vals = m.sort_values(["metric", "generation", "replicate"])["value"].to_numpy(dtype=float)
    if key in UNWEIGHTED_VALUES:
        assert [v.hex() for v in vals[[0, 7, 17, -1]]] == UNWEIGHTED_VALUES[key]
    assert hashlib.sha256(vals.tobytes()).hexdigest()[:16] == UNWEIGHTED[key]


# -- resume ---------------------------------------------------------------------------------------
class Crash(Exception):
    pass


@pytest.mark.parametrize("mode", ["exact", "sample"])
def test_weighted_arm_resumes_bit_exact(tmp_path, mode):
    cfg = config(
        regime="synthetic-augmentation", mode=mode, weight=0.618, replicates=4, generations=8
    )
    reference = run(cfg).metrics

    def crash(arm: str, g: int, T: int) -> None:
        if g == 4:
            raise Crash

    with pytest.raises(Crash):
        run(cfg, out=tmp_path, progress=crash, checkpoint_every=1)  # a checkpoint at 4
    notes: list[str] = []
    res = run(cfg, out=tmp_path, resume=True, log=notes.append)
    assert any("resuming after generation 4" in n for n in notes), notes
    pd.testing.assert_frame_equal(res.metrics, reference, check_exact=True)


# -- config errors --------------------------------------------------------------------------------
def problems_of(cfg: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(cfg)
    return err.value.problems


@pytest.mark.parametrize("w", [0.0, 1.0, 1.5, -0.2, float("nan"), float("inf")])
def test_weight_outside_the_unit_interval(w):
    found = problems_of(config(weight=w))
    assert len(found) == 1 and found[0].startswith("loop.real_weight:"), found
    assert "(0, 1)" in found[0]


@pytest.mark.parametrize("regime", ["fully-synthetic", "accumulate", "accumulate-subsample"])
def test_weight_for_a_regime_without_both_sources(regime):
    cfg = config(weight=0.5, regime=regime, real_size=0)
    found = problems_of(cfg)
    assert any(p.startswith("loop.real_weight:") and regime in p for p in found), found


def test_weight_for_a_family_that_cannot_take_weights():
    cfg = {
        "data": {"source": "categorical", "symbols": 5},
        "model": {"family": "categorical"},
        "loop": {"regime": "fresh-data", "real_size": 5, "synthetic_size": 5, "real_weight": 0.5},
    }
    found = problems_of(cfg)
    assert found == [found[0]] and found[0].startswith("loop.real_weight:"), found
    assert "categorical" in found[0]


def test_weight_needs_rows_of_both_sources():
    found = problems_of(config(weight=0.5, real_size=0))
    assert found[0].startswith("loop.real_weight:") and "real_size" in found[0], found


def test_weight_in_an_arm_names_the_arm():
    cfg = config()
    cfg["arms"] = [{"name": "bad", "loop.real_weight": 2.0}]
    found = problems_of(cfg)
    assert any(p.startswith("arms[bad].loop.real_weight:") for p in found), found


def test_fit_mean_needs_a_gaussian_source():
    cfg = {
        "data": {"source": "moons"},
        "model": {"family": "gaussian", "fit": "mean"},
        "loop": {"regime": "fresh-data", "real_size": 5, "synthetic_size": 5},
    }
    found = problems_of(cfg)
    assert any("model.fit" in p for p in found), found


def test_fit_must_be_known():
    cfg = config()
    cfg["model"]["fit"] = "covariance"
    found = problems_of(cfg)
    assert any(p.startswith("model.fit:") for p in found), found
