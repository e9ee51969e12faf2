"""The linear-regression loop: simulation against theory, exact vs sample, config errors, resume.

Statistical tests compare the mean over R replicate chains (each with its own w* and design) with
the closed form, within K = 4 standard errors, the SE from the chains' own spread; fixed seeds.
The near-singular case is d = 10, T = 20 rather than T = 14: the excess risk is a multiple of
tr (XᵀX)⁻¹, whose variance is finite only for T > d + 3 and whose fourth moment (what makes the
sample SE itself reliable) only for T > d + 7; T = 20 keeps both while E tr (XᵀX)⁻¹ = d/(T-d-1)
= 10/9 is still 8x the T = 100 value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.stats import ks_2samp

from madloop.config import ConfigError, parse
from madloop.data.regression import RegressionSource, RegressionStats, draw_label_stats
from madloop.engines import build_loop
from madloop.theory.regression import excess_risk_fixed, excess_risk_ridge

K = 4.0  # standard errors


def config(**over: Any) -> dict:
    """A raw config; ``over`` maps dotted keys to values."""
    raw: dict = {
        "name": "lr",
        "seed": 3,
        "generations": 6,
        "replicates": 400,
        "data": {"source": "linear-regression", "dim": 10, "design_size": 100},
        "model": {"family": "linear-regression", "mode": "exact"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 100},
    }
    for key, value in over.items():
        *path, last = key.split(".")
        table = raw
        for p in path:
            table = table.setdefault(p, {})
        table[last] = value
    return raw


def run_arm(raw: dict) -> tuple[dict[str, np.ndarray], Any]:
    """{metric: (T, R)} of the config's first arm, and its predictions."""
    _, arms = parse(raw)
    arm = arms[0]
    loop = build_loop(arm)
    records = list(loop.run(arm.config.generations))
    metrics = {k: np.stack([r.metrics[k] for r in records]) for k in records[0].metrics}
    from madloop.theory.regression import predictions

    return metrics, predictions(arm.config, loop.real, loop.regime)


def assert_within(values: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Each generation's mean over chains within K standard errors of the theory."""
    mean = values.mean(axis=1)
    se = values.std(axis=1, ddof=1) / np.sqrt(values.shape[1])
    z = (mean - expected) / se
    assert np.all(np.abs(z) <= K), f"{what}: z = {np.round(z, 2)}, mean {mean}, theory {expected}"


# -- theory -------------------------------------------------------------------------------------
def test_closed_forms_by_hand() -> None:
    """Replace: t σ² d/(T-d-1); accumulate: σ² d/(T-d-1) Σ 1/i² (< π²/6 times generation 1)."""
    ones = np.ones(5)
    replace = excess_risk_fixed(ones, ones, sigma2=2.0, dim=10, design_size=100, accumulate=False)
    np.testing.assert_allclose(replace, 2.0 * 10 / 89 * np.arange(1, 6))
    acc = excess_risk_fixed(ones, ones, sigma2=2.0, dim=10, design_size=100, accumulate=True)
    np.testing.assert_allclose(acc, 2.0 * 10 / 89 * np.cumsum(1 / np.arange(1, 6) ** 2))
    long = excess_risk_fixed(np.ones(10_000), np.ones(10_000), sigma2=1, dim=3, design_size=9,
                             accumulate=True)  # fmt: skip
    assert long[-1] < np.pi**2 / 6 * long[0] and long[-1] > 1.64 * long[0]


@pytest.mark.parametrize("accumulate", [False, True])
def test_ridge_recursion_at_zero_ridge_is_least_squares(accumulate: bool) -> None:
    """α = 0 in the ridge recursion gives Σ k_i v_i/K_i² · tr G⁻¹, given the design."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 30, 4))
    eig = np.linalg.eigvalsh(np.einsum("rti,rtj->rij", X, X))
    copies, scale = np.array([1.0, 2, 2, 1]), np.array([1.0, 0.7, 0.7, 0.7])
    got = excess_risk_ridge(eig, copies, scale, sigma2=1.5, ridge=0.0, accumulate=accumulate)
    pool = np.cumsum(copies) if accumulate else copies
    want = 1.5 * (1 / eig).sum(axis=1).mean() * np.cumsum(copies * scale / pool**2)
    np.testing.assert_allclose(got, want, rtol=1e-10)


CASES = [  # (dim, design_size, regime, mode)
    (10, 100, "fully-synthetic", "exact"),
    (10, 100, "accumulate", "exact"),
    (10, 20, "fully-synthetic", "exact"),
    (10, 20, "accumulate", "exact"),
    (10, 100, "fully-synthetic", "sample"),
    (10, 20, "accumulate", "sample"),
]


@pytest.mark.parametrize(("dim", "T", "regime", "mode"), CASES)
def test_excess_risk_matches_theory(dim: int, T: int, regime: str, mode: str) -> None:
    R = 4000 if mode == "exact" else 1500
    raw = config(**{"data.dim": dim, "data.design_size": T, "loop.regime": regime,
                    "loop.synthetic_size": T, "model.mode": mode, "replicates": R})  # fmt: skip
    metrics, theory = run_arm(raw)
    assert_within(metrics["excess_risk"], theory["excess_risk"], f"{regime} T={T} {mode}")
    gen1 = dim / (T - dim - 1)
    assert theory["excess_risk"][0] == pytest.approx(gen1)
    if regime == "fully-synthetic":
        assert_within(metrics["residual_variance"], theory["residual_variance"], "s²")


@pytest.mark.parametrize(
    "over",
    [
        {"sampling.bias": 0.5},  # λ: synthetic noise λσ²
        {"model.noise": "estimated", "sampling.bias": 0.8},  # E V_t = λ^(t-1) σ²
        {"data.design": "fresh", "loop.synthetic_size": 30, "model.noise": "estimated"},
        {"loop.synthetic_size": 200, "loop.initial_real_size": 100, "data.noise_variance": 3.0},
        {"model.ridge": 20.0, "data.design_size": 12, "loop.synthetic_size": 12},  # T near d
        {"model.ridge": 5.0, "loop.regime": "accumulate", "model.mode": "sample"},
    ],
)
def test_variants_match_theory(over: dict) -> None:
    R = 1500 if over.get("model.mode") == "sample" else 3000
    metrics, theory = run_arm(config(replicates=R, **over))
    assert "excess_risk" in theory
    assert_within(metrics["excess_risk"], theory["excess_risk"], str(over))
    if "residual_variance" in theory:
        assert_within(metrics["residual_variance"], theory["residual_variance"], str(over))


def test_no_theory_where_none_is_derived() -> None:
    _, theory = run_arm(config(replicates=2, **{"loop.regime": "accumulate",
                                                "model.noise": "estimated"}))  # fmt: skip
    assert "excess_risk" not in theory


# -- exact vs sample ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "over",
    [
        {"loop.regime": "fully-synthetic", "model.noise": "estimated", "sampling.bias": 0.9},
        {"loop.regime": "accumulate", "data.design_size": 20, "loop.synthetic_size": 40},
        {"data.design": "fresh", "loop.synthetic_size": 25, "model.ridge": 1.0},
    ],
)
def test_exact_and_sample_agree_in_law(over: dict) -> None:
    """Two-sample KS on every metric at the last generation (α = 1e-3 per test, fixed seeds)."""
    late = {}
    for mode, seed in (("exact", 1), ("sample", 2)):
        metrics, _ = run_arm(config(replicates=1500, seed=seed, **{"model.mode": mode}, **over))
        late[mode] = {k: v[-1] for k, v in metrics.items()}
    for name in late["exact"]:
        p = ks_2samp(late["exact"][name], late["sample"][name]).pvalue
        assert p > 1e-3, f"{name}: KS p = {p:.2g} ({over})"


def test_label_stats_match_drawn_labels() -> None:
    """draw_label_stats has the moments of the statistics of drawn labels (E yᵀy, Cov Xᵀy)."""
    rng = np.random.default_rng(5)
    design = rng.standard_normal((1, 15, 3))
    w = rng.standard_normal((1, 3))
    src = RegressionSource(dim=3, design_size=15, design="fixed", noise_variance=1.0, key=0)
    gram = np.einsum("rti,rtj->rij", design, design)
    n = 20_000
    stats = draw_label_stats(np.repeat(gram, n, 0), np.repeat(w, n, 0), np.full(n, 2.0), 15, rng)
    x = np.repeat(design, n, 0)
    y = np.einsum("rti,ri->rt", x, np.repeat(w, n, 0)) + np.sqrt(2.0) * rng.standard_normal((n, 15))
    drawn = RegressionStats.from_rows(np.concatenate([x, y[..., None]], axis=2))
    assert stats.yty.mean() == pytest.approx(drawn.yty.mean(), rel=0.02)
    assert stats.yty.std() == pytest.approx(drawn.yty.std(), rel=0.05)
    np.testing.assert_allclose(np.cov(stats.xty.T), np.cov(drawn.xty.T), rtol=0.1, atol=0.5)
    assert src.design_for(2).shape == (2, 15, 3)


# -- config errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"data.design_size": 10}, "data.design_size", "model.ridge"),
        ({"loop.synthetic_size": 150}, "loop.synthetic_size", "multiple of data.design_size"),
        ({"loop.initial_real_size": 50}, "loop.initial_real_size", "multiple"),
        ({"data.dim": 0}, "data.dim", ""),
        ({"data.noise_variance": 0.0}, "data.noise_variance", ""),
        ({"model.ridge": -1.0}, "model.ridge", ""),
        ({"model.family": "gaussian"}, "model.family", "linear-regression"),
        ({"data": {"source": "gaussian"}}, "data.source", "linear-regression"),
        ({"data.design": "fresh", "loop.synthetic_size": 8}, "loop.synthetic_size", "data.dim"),
        ({"model.noise": "estimated", "model.ridge": 1.0, "data.design_size": 5},
         "data.design_size", "estimated"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(over: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(config(**over))
    text = str(err.value)
    assert field in text and words in text, text


def test_ridge_allows_a_short_design() -> None:
    parse(config(**{"data.design_size": 5, "loop.synthetic_size": 5, "model.ridge": 0.1}))


# -- resume -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "sample"])
def test_resume_is_bit_identical(mode: str) -> None:
    raw = config(replicates=5, generations=6, **{"loop.regime": "accumulate", "model.mode": mode})
    _, arms = parse(raw)
    whole = build_loop(arms[0])
    straight = [r.metrics for r in whole.run(6)]
    first = build_loop(arms[0])
    list(first.run(3))
    state = {k: np.array(v) for k, v in first.get_state().items()}
    again = build_loop(arms[0])
    again.set_state(state)
    resumed = [r.metrics for r in again.run(6)]
    for a, b in zip(straight[3:], resumed, strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_resume_from_checkpoint_files_extends_bit_for_bit(tmp_path) -> None:
    """Through the experiment's npz checkpoints (kept RegressionStats pools included)."""
    import pandas as pd

    from madloop.experiment import run

    raw = config(replicates=4, generations=3, **{"loop.regime": "accumulate"})
    raw["arms"] = [{"name": "sample", "model": {"mode": "sample"}}]
    run(raw, out=tmp_path)
    longer = run({**raw, "generations": 6}, out=tmp_path, resume=True)
    fresh = run({**raw, "generations": 6})
    pd.testing.assert_frame_equal(longer.metrics, fresh.metrics, check_exact=True)
    summary = fresh.summary
    assert set(summary["arm"]) == {"base", "sample"}
    assert summary.loc[summary["metric"] == "excess_risk", "theory"].notna().all()
