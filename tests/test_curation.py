"""Reward-curated loops (Ferbach et al. 2024): the Luce choice, its Gaussian theory against
simulation, the K -> ∞ limit, monotone reward, the bound that real data sets, config errors,
sample mode, resume, and the web pool's curation on the shared registry.

Tolerances: k = 4 standard errors of the replicate mean (each chain is independent), fixed
seeds; where the theory is the n -> ∞ recursion, plus its stated O(1/n) slack."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from madloop.config import ConfigError, parse
from madloop.curation import SCORERS, Curation, luce_choice
from madloop.experiment import run
from madloop.regimes import FreshData, FullySynthetic
from madloop.theory.curation import (
    fresh_data_limit_shift,
    limit_mean_reward,
    luce_normal_moments,
    population_recursion,
)

K_SE = 4.0


def config(curation: dict | None = None, **loop) -> dict:
    cfg = {
        "name": "cur",
        "seed": 7,
        "generations": 5,
        "replicates": 100,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "gaussian", "mode": "sample"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 200, **loop},
    }
    if curation is not None:
        cfg["loop"]["curation"] = {"reward": "linear", "direction": [1.0, 0.5], **curation}
    return cfg


def metric(result, name: str, arm: str = "base") -> pd.DataFrame:
    s = result.summary
    return s[(s.arm == arm) & (s.metric == name)].sort_values("generation")


# -- the choice ------------------------------------------------------------------------------------
def test_luce_choice_picks_in_proportion_to_exp_score():
    rng = np.random.default_rng(0)
    scores = np.broadcast_to(np.log([1.0, 2.0, 3.0]), (4, 20_000, 3))
    pick = luce_choice(scores, rng)
    freq = np.bincount(pick.ravel(), minlength=3) / pick.size
    p = np.array([1, 2, 3]) / 6
    assert np.all(np.abs(freq - p) < K_SE * np.sqrt(p * (1 - p) / pick.size))


def test_luce_choice_ignores_nan_and_survives_all_minus_inf():
    rng = np.random.default_rng(1)
    scores = np.array([[[np.nan, 0.0], [-np.inf, -np.inf]]])
    pick = np.stack([luce_choice(scores, rng) for _ in range(200)])
    assert (pick[:, 0, 0] == 1).all()  # NaN counts as -inf
    assert set(pick[:, 0, 1]) == {0, 1}  # no information: uniform


@pytest.mark.parametrize(("K", "c"), [(2, 1.0), (8, 0.7), (64, 2.0)])
def test_luce_normal_moments_against_monte_carlo(K, c):
    m, v = luce_normal_moments(K, c)
    rng = np.random.default_rng(K)
    z = rng.standard_normal((200_000, K))
    chosen = z[np.arange(len(z)), luce_choice(c * z, rng)]
    se = chosen.std() / np.sqrt(len(z))
    assert abs(chosen.mean() - m) < K_SE * se
    assert abs(chosen.var() - v) < K_SE * chosen.var() * np.sqrt(2 / len(z))


def test_luce_normal_moments_limits():
    assert luce_normal_moments(1, 2.0) == (0.0, 1.0)  # K = 1: no curation
    assert luce_normal_moments(None, 1.5) == (1.5, 1.0)  # K -> ∞: the tilted N(c, 1)
    means = [luce_normal_moments(K, 1.0)[0] for K in (2, 8, 64, 4096)]
    assert all(a < b for a, b in zip(means, means[1:], strict=False)) and means[-1] < 1.0
    m, v = luce_normal_moments(2, 1e6)  # the hard choice: the better of two normals
    assert m == pytest.approx(1 / np.sqrt(np.pi), rel=1e-6) and v == pytest.approx(1 - 1 / np.pi)


# -- simulation against theory ---------------------------------------------------------------------
def test_mean_reward_and_trace_follow_the_population_recursion():
    """n = 1000 per generation: the recursion's O(1/n) error is far below 4 SE here."""
    res = run(config({"choices": 8}, synthetic_size=1000), generations=4)
    for name in ("mean_reward", "trace_ratio"):
        d = metric(res, name)
        assert np.isfinite(d.theory).all()
        assert (np.abs(d["mean"] - d.theory) < K_SE * d.std_error + 2e-3).all(), d


def test_finite_choices_approach_the_limit_as_k_grows():
    """In the K -> ∞ limit E[a·μ_t] is exact at finite n (limit_mean_reward); the gap of the
    simulated mean_reward at T to it shrinks K = 2 -> 8 -> 64, each step by more than 4 SE."""
    a = np.array([1.0, 0.5])
    limit = limit_mean_reward(5, mean0=np.zeros(2), cov0=np.eye(2), direction=a)[-1]
    gaps, ses = [], []
    for K in (2, 8, 64):
        d = metric(run(config({"choices": K})), "mean_reward").iloc[-1]
        gaps.append(limit - d["mean"])
        ses.append(d.std_error)
        theory = population_recursion(
            FullySynthetic(synthetic_size=200), 5, mean0=np.zeros(2), cov0=np.eye(2),
            direction=a, choices=K,
        ).mean_reward[-1]  # fmt: skip
        assert theory < limit
    for i in range(2):
        assert gaps[i] - gaps[i + 1] > K_SE * np.hypot(ses[i], ses[i + 1])
    assert gaps[-1] > 0


def test_limit_is_exact_for_large_k_at_finite_n():
    """K = 256 at β = 0.3 (c ≈ 0.34): the Luce mean is within 0.5 % of the limit's c, so the
    simulated reward at n = 20 matches the limit's exact E[a·μ_t] within 4 SE + 0.01."""
    m, _ = luce_normal_moments(256, 0.3 * np.sqrt(1.25))
    assert m == pytest.approx(0.3 * np.sqrt(1.25), rel=5e-3)
    res = run(config({"choices": 256, "scale": 0.3}, synthetic_size=20), replicates=200)
    d = metric(res, "mean_reward")
    a = np.array([1.0, 0.5])
    limit = limit_mean_reward(5, mean0=np.zeros(2), cov0=np.eye(2), direction=a, scale=0.3)
    assert (np.abs(d["mean"].to_numpy() - limit) < K_SE * d.std_error.to_numpy() + 0.01).all()


def test_expected_reward_never_decreases():
    """Ferbach et al.: retraining on curated samples raises the expected reward every generation.
    Simulated: each step's rise exceeds -4 SE (and the total is far above 0); in theory: strict."""
    res = run(config({"choices": 2}), generations=8)
    d = metric(res, "mean_reward")
    values, se = d["mean"].to_numpy(), d.std_error.to_numpy()
    assert (np.diff(values) > -K_SE * np.hypot(se[1:], se[:-1])).all()
    assert values[-1] - values[0] > K_SE * se[-1]
    assert (np.diff(d.theory.to_numpy()) > 0).all()


def test_fresh_real_data_bounds_the_shift():
    """Half of every training set new real data, β = 0.25: the shift a·(μ_t - μ_0) stays below
    the K -> ∞ fixed point D* (fresh_data_limit_shift, 0.293 for a = e_1) at every generation,
    while the fully-synthetic loop passes it."""
    bound = fresh_data_limit_shift(0.5, q0=1.0, scale=0.25)
    assert bound == pytest.approx(0.25 * (0.5 - np.sqrt(0.125)) / 0.125)
    cur = {"choices": 8, "scale": 0.25, "direction": [1.0, 0.0]}
    fresh = run(config(cur, regime="fresh-data", real_size=200), generations=20, replicates=50)
    d = metric(fresh, "mean_reward")
    assert (d["mean"] < bound + K_SE * d.std_error).all()
    theory = population_recursion(
        FreshData(real_size=200, synthetic_size=200), 60, mean0=np.zeros(2), cov0=np.eye(2),
        direction=np.array([1.0, 0.0]), choices=8, scale=0.25,
    ).mean_reward  # fmt: skip
    assert (theory <= bound).all() and abs(theory[-1] - theory[-2]) < 1e-4  # it settles
    alone = metric(run(config(cur), generations=20, replicates=50), "mean_reward").iloc[-1]
    assert alone["mean"] > bound + K_SE * alone.std_error
    assert fresh_data_limit_shift(0.5, q0=1.0, scale=1.0) == np.inf  # too strong: no bound


def test_quadratic_reward_pulls_the_mean_to_the_target():
    res = run(config({"reward": "quadratic", "target": [2.0, 0.0], "choices": 8}), generations=6)
    d = metric(res, "mean_reward")
    assert d["mean"].iloc[-1] - d["mean"].iloc[0] > K_SE * np.hypot(*d.std_error.iloc[[0, -1]])


def test_one_choice_is_no_curation():
    plain = run(config())
    one = run(config({"choices": 1}))
    m = one.metrics[one.metrics.metric != "mean_reward"].reset_index(drop=True)
    pd.testing.assert_frame_equal(m, plain.metrics, check_exact=True)


def test_curation_runs_in_sample_mode_and_resumes_bit_exact(tmp_path):
    cfg = config({"choices": 3})
    cfg["model"]["mode"] = "exact"
    cfg["replicates"] = 4
    first = run(cfg, generations=2, out=tmp_path)
    assert first.manifest["modes"]["base"] == "sample"
    longer = run(cfg, generations=5, out=tmp_path, resume=True)
    pd.testing.assert_frame_equal(longer.metrics, run(cfg).metrics, check_exact=True)


def test_exact_request_notes_sample_mode():
    from madloop.cli import note_exact_fallback

    cfg = config({"choices": 3})
    cfg["model"]["mode"] = "exact"
    _, arms = parse(cfg)
    from madloop.cli import err

    with err.capture() as cap:
        note_exact_fallback(arms)
    assert "curation / correction act on points" in cap.get() and "sample mode" in cap.get()


# -- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("curation", "field"),
    [
        ({"choices": 0}, "loop.curation.choices"),
        ({"direction": [1.0, 2.0, 3.0]}, "loop.curation.direction"),
        ({"direction": None}, "loop.curation.direction"),
        ({"reward": "vibes"}, "loop.curation.reward"),
        ({"reward": "quadratic"}, "loop.curation.target"),
        ({"reward": "quadratic", "target": [1.0]}, "loop.curation.target"),
        ({"reward": "classifier"}, "loop.curation.reward"),
        ({"scale": 0.0}, "loop.curation.scale"),
        ({"direction": [float("nan"), 1.0]}, "loop.curation.direction"),
        ({"colour": 1}, "loop.curation"),
    ],
)
def test_config_errors_name_the_field(curation, field):
    cfg = config(curation)
    if curation.get("direction", 0) is None:
        del cfg["loop"]["curation"]["direction"]
    with pytest.raises(ConfigError) as err:
        parse(cfg)
    assert any(line.startswith(field) for line in err.value.problems), err.value.problems


def test_curation_of_tokens_is_a_config_error():
    cfg = {
        "data": {"source": "categorical", "symbols": 5},
        "model": {"family": "categorical"},
        "loop": {"curation": {"direction": [1.0]}},
    }
    with pytest.raises(ConfigError, match="loop.curation"):
        parse(cfg)


def test_every_regime_takes_curation():
    for regime, extra in [
        ("synthetic-augmentation", {"real_size": 50}),
        ("fresh-data", {"real_size": 50}),
        ("accumulate", {}),
        ("accumulate-subsample", {"real_size": 50}),
    ]:
        res = run(config({"choices": 2}, regime=regime, **extra), generations=3, replicates=3)
        assert np.isfinite(metric(res, "mean_reward")["mean"]).all()


# -- the one registry ------------------------------------------------------------------------------
def test_pool_and_loop_share_the_scorers():
    from madloop.pool import curation as pool_curation

    assert pool_curation.SCORERS is SCORERS
    assert {"linear", "quadratic", "likelihood", "classifier"} <= set(SCORERS)
    web = copy.deepcopy(config())
    web["loop"] = {"regime": "web-pool", "curation": {"score": "linear", "keep": 0.5}}
    with pytest.raises(ConfigError, match="loop.curation.score"):
        parse(web)  # a reward with params (a direction) is the loop's, not the pool's


def test_curation_draws_k_candidates_per_point():
    calls = []

    class Model:
        def sample_points(self, n, *, bias, rng):
            from madloop.types import SYNTHETIC, Points

            calls.append(n)
            return Points.tagged(rng.standard_normal((2, n, 2)), source=SYNTHETIC, origin=1)

    cur = Curation("linear", choices=5, params={"direction": [1.0, 0.0]})
    out = cur.draw(Model(), None, 30, bias=1.0, rng=np.random.default_rng(0))
    assert calls == [150] and out.X.shape == (2, 30, 2)


def test_classifier_reward_is_the_image_metrics_network_confidence():
    """Real digits score higher than uniform noise under the image metrics' classifier (its
    largest class probability; it is overconfident on noise: measured 0.98 vs 0.83)."""
    from madloop.data import build_source
    from madloop.types import REAL, Points

    base, _ = parse({"data": {"source": "digits"}, "model": {"family": "vae"}})
    real = build_source(base.data, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    digits = real.sample_points(50, replicates=1, rng=rng)
    noise = Points.tagged(rng.random(digits.X.shape), source=REAL, origin=0)
    score = SCORERS["classifier"]
    assert score.problem(None, real) is None and score.problem(None, object()) is not None
    good, bad = score.score(None, real, digits), score.score(None, real, noise)
    assert ((good > 0) & (good <= 1)).all() and good.mean() > bad.mean() + 0.05
