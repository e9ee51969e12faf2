"""Wright–Fisher theory against the categorical family's simulations (fixed seeds; tolerances are
k standard errors of the replicate means)."""

from __future__ import annotations

import numpy as np
import pytest

from madloop.data.categorical import CategoricalSource, zipf_probabilities
from madloop.experiment import run
from madloop.loop import Loop
from madloop.models.categorical import CategoricalFamily
from madloop.regimes import FreshData, FullySynthetic, SyntheticAugmentation
from madloop.theory import discrete as td

K = 4.0  # standard errors allowed per comparison


def simulate(regime, p0, generations, replicates, *, alpha=0.0, seed=0, exact=True):
    """Per-generation arrays (T, R) of the categorical metrics, plus the final model."""
    model = CategoricalFamily(replicates, vocab_size=len(p0), alpha=alpha)
    loop = Loop(regime, model, CategoricalSource(p0), replicates=replicates, exact=exact, seed=seed)
    records = list(loop.run(generations))
    out = {k: np.stack([r.metrics[k] for r in records]) for k in records[0].metrics}
    return out, model


def assert_within_se(values: np.ndarray, expected: np.ndarray, k: float = K) -> None:
    """values (T, R) replicate samples; expected (T,) theory."""
    mean = values.mean(axis=1)
    se = values.std(axis=1, ddof=1) / np.sqrt(values.shape[1])
    z = np.abs(mean - expected) / np.maximum(se, 1e-12)
    assert np.all(z < k), f"max |z| = {z.max():.2f} at generation {int(np.argmax(z)) + 1}"


P0 = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])


def test_heterozygosity_decays_by_one_minus_one_over_n():
    n, T = 20, 25
    sims, _ = simulate(FullySynthetic(synthetic_size=n), P0, T, 3000, seed=1)
    theory = td.heterozygosity_decay(td.heterozygosity(P0), T, n)
    assert_within_se(sims["heterozygosity"], theory)
    # the decay is real: the last generation is far below the first
    assert theory[-1] < 0.35 * theory[0]
    regime_theory = td.expected_heterozygosity(FullySynthetic(synthetic_size=n), T, P0)
    np.testing.assert_allclose(regime_theory, theory, rtol=1e-12)


@pytest.mark.parametrize(
    "regime, alpha",
    [
        (FreshData(real_size=10, synthetic_size=15), 0.0),
        (SyntheticAugmentation(real_size=8, synthetic_size=12), 0.0),
        (FullySynthetic(synthetic_size=20), 0.5),
        (FreshData(real_size=5, synthetic_size=20), 0.3),
    ],
    ids=["fresh", "augmentation", "smoothed", "fresh-smoothed"],
)
def test_heterozygosity_recursion_with_real_data_and_smoothing(regime, alpha):
    T = 15
    sims, _ = simulate(regime, P0, T, 3000, alpha=alpha, seed=2)
    assert_within_se(sims["heterozygosity"], td.expected_heterozygosity(regime, T, P0, alpha=alpha))
    expected_mass = td.expected_probabilities(regime, T, P0, alpha=alpha)
    tail = CategoricalSource(P0).tail
    assert_within_se(sims["tail_mass"], expected_mass[:, tail].sum(axis=1) / P0[tail].sum())


def test_fixation_on_symbol_i_with_probability_p_i():
    p0 = np.array([0.5, 0.3, 0.2])
    R, n = 6000, 8
    model = CategoricalFamily(R, vocab_size=3)
    loop = Loop(
        FullySynthetic(synthetic_size=n),
        model,
        CategoricalSource(p0),
        replicates=R,
        exact=True,
        seed=3,
    )
    alive_before = None
    for rec in loop.run(150):
        alive = model.counts_ > 0
        if alive_before is not None:  # a lost symbol never returns
            assert not np.any(alive & ~alive_before)
        alive_before = alive
        if rec.generation > 1 and alive.sum(axis=1).max() == 1:
            break
    fixed = alive.sum(axis=1) == 1
    assert fixed.mean() > 0.999  # the chain ends in a point mass
    winner = np.argmax(model.counts_[fixed], axis=1)
    freq = np.bincount(winner, minlength=3) / fixed.sum()
    se = np.sqrt(p0 * (1 - p0) / fixed.sum())
    expected = td.fixation_probabilities(p0)
    assert np.all(np.abs(freq - expected) < K * se), (freq, expected)


def test_expected_support_and_tail_coverage_match_simulation():
    p0 = zipf_probabilities(200, 1.0)
    n, T = 100, 30
    regime = FullySynthetic(synthetic_size=n)
    sims, _ = simulate(regime, p0, T, 600, seed=4)
    src = CategoricalSource(p0)
    preds = td.predictions(regime, T, p0, tail=src.tail)
    assert_within_se(sims["support_size"], preds["support_size"])
    assert_within_se(sims["tail_coverage"], preds["tail_coverage"])
    assert preds["support_size"][-1] < 0.3 * preds["support_size"][0]


def test_survival_exact_and_branching_agree_for_large_n():
    p = np.array([1e-4, 1e-3, 5e-3, 2e-2])
    exact = td.survival_probability(p, 50, 1000, method="exact")
    branching = td.survival_probability(p, 50, 1000, method="branching")
    assert np.max(np.abs(exact - branching)) < 0.01
    # survival falls with t, and faster for rarer symbols
    assert np.all(np.diff(exact, axis=1) <= 1e-12)
    assert np.all(np.diff(exact[:, -1]) > 0)
    # a different first-generation size n_1 is handled exactly
    e2 = td.survival_probability(p, 5, 200, n_initial=400, method="exact")
    b2 = td.survival_probability(p, 5, 200, n_initial=400, method="branching")
    np.testing.assert_allclose(e2[:, 0], 1 - (1 - p) ** 400)
    assert np.max(np.abs(e2 - b2)) < 0.01


def test_smoothing_keeps_every_symbol_alive():
    V = 500
    sims, model = simulate(
        FullySynthetic(synthetic_size=100), zipf_probabilities(V, 1.1), 40, 20, alpha=0.05, seed=5
    )
    assert np.all(sims["support_size"] == V)
    assert np.all(model.probabilities_ > 0)
    mle, _ = simulate(
        FullySynthetic(synthetic_size=100), zipf_probabilities(V, 1.1), 40, 20, seed=5
    )
    assert mle["support_size"][-1].max() < 0.2 * V  # without smoothing most symbols are lost


def test_fresh_data_keeps_the_tail_bounded_away_from_zero():
    p0 = zipf_probabilities(1000, 1.1)
    src = CategoricalSource(p0)
    n_r, n_s, T = 300, 700, 60
    fresh, _ = simulate(FreshData(real_size=n_r, synthetic_size=n_s), p0, T, 100, seed=6)
    synth, _ = simulate(FullySynthetic(synthetic_size=n_r + n_s), p0, T, 100, seed=6)
    # each tail symbol is back in the training set whenever the fresh real draws contain it
    tail_p = p0[src.tail]
    floor = float(tail_p @ (1 - (1 - tail_p) ** n_r) / tail_p.sum())
    cov = fresh["tail_coverage"]
    se = cov.std(axis=1, ddof=1) / np.sqrt(cov.shape[1])
    assert np.all(cov.mean(axis=1) > floor - K * se)
    assert np.median(fresh["tail_mass"][-10:]) > 0.5
    # while the fully synthetic chain loses it
    assert synth["tail_coverage"][-1].mean() < 0.5 * floor


def test_run_writes_theory_for_the_categorical_family(tmp_path):
    cfg = {
        "name": "wf",
        "seed": 0,
        "generations": 5,
        "replicates": 50,
        "data": {"source": "categorical", "symbols": 50, "distribution": "zipf"},
        "model": {"family": "categorical", "mode": "exact"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 40},
        "arms": [{"name": "hot", "sampling.bias": 0.5}],
    }
    result = run(cfg, out=tmp_path / "run")
    s = result.summary
    s = s[s.generation >= 1]  # generation 0 is the real-data floor (no theory)
    base = s[(s.arm == "base") & (s.metric == "heterozygosity") & (s.generation >= 1)]
    base = base.sort_values("generation")
    expected = td.expected_heterozygosity(
        FullySynthetic(synthetic_size=40), 5, zipf_probabilities(50, 1.0)
    )
    np.testing.assert_allclose(base["theory"].to_numpy(), expected)
    assert s[(s.arm == "base") & (s.metric == "support_size")]["theory"].notna().all()
    hot = s[s.arm == "hot"]
    # a temperature has no closed form here, except generation 1's missing mass (real data)
    assert hot[hot.metric != "missing_mass"]["theory"].isna().all()
    assert hot[hot.metric == "missing_mass"]["theory"].notna().sum() == 1
    written = (tmp_path / "run" / "summary.csv").read_text()
    assert "theory" in written.splitlines()[0]


@pytest.mark.slow
def test_large_population_support_follows_the_branching_limit():
    """Benchmark scale (V = 10^4, n = 10^5): the survival theory uses the Poisson branching limit
    there; the simulated support and heterozygosity must follow it."""
    p0 = zipf_probabilities(10_000, 1.0)
    n, T = 100_000, 40
    regime = FullySynthetic(synthetic_size=n)
    sims, _ = simulate(regime, p0, T, 60, seed=7)
    preds = td.predictions(regime, T, p0, tail=CategoricalSource(p0).tail)
    assert_within_se(sims["support_size"], preds["support_size"])
    assert_within_se(sims["heterozygosity"], preds["heterozygosity"])
    assert preds["support_size"][-1] < 0.5 * preds["support_size"][0]
