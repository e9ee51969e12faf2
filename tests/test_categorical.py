"""The categorical family: counting fits, temperature bias, both modes, checkpoints, configs."""

from __future__ import annotations

import numpy as np
import pytest

from madloop.config import ConfigError, validate
from madloop.counts import Counts, counts_from_tokens, tokens_from_counts
from madloop.data.categorical import CategoricalSource, zipf_probabilities
from madloop.experiment import run
from madloop.loop import Loop
from madloop.models.categorical import CategoricalFamily, tempered
from madloop.regimes import (
    Accumulate,
    AccumulateSubsample,
    FreshData,
    SyntheticAugmentation,
)


def test_fit_by_counting_with_add_alpha():
    X = np.array([[0, 0, 1, 3], [2, 2, 2, 2]])
    m = CategoricalFamily(2, vocab_size=4, alpha=1.0).fit(X)
    np.testing.assert_allclose(m.probabilities_[0], np.array([3, 2, 1, 2]) / 8)
    np.testing.assert_allclose(m.probabilities_[1], np.array([1, 1, 5, 1]) / 8)
    np.testing.assert_array_equal(m.counts_, counts_from_tokens(X, 4))


def test_counts_and_tokens_round_trip():
    counts = np.array([[3, 0, 2], [1, 1, 3]])
    tokens = tokens_from_counts(counts)
    assert tokens.shape == (2, 5)
    np.testing.assert_array_equal(counts_from_tokens(tokens, 3), counts)
    merged = Counts.merge([Counts(counts, {(0, 0): np.array([5, 5])}), Counts(counts)])
    np.testing.assert_array_equal(merged.counts, 2 * counts)
    np.testing.assert_array_equal(merged.count, [10, 10])


def test_temperature_bias_samples_from_p_to_the_one_over_t():
    p = np.array([[0.6, 0.3, 0.1, 0.0]])
    m = CategoricalFamily(1, vocab_size=4)
    m._set(np.array([[6, 3, 1, 0]]))
    n, T = 200_000, 0.5
    counts = m.sample_stats(n, bias=T, rng=np.random.default_rng(0)).counts[0]
    q = p[0] ** (1 / T) / (p[0] ** (1 / T)).sum()
    np.testing.assert_allclose(tempered(p, T)[0], q)
    se = np.sqrt(q * (1 - q) / n)
    assert np.all(np.abs(counts / n - q) <= 4 * se + 1e-12)
    assert counts[3] == 0  # a lost symbol stays lost at any temperature


@pytest.mark.parametrize(
    "regime",
    [
        FreshData(real_size=30, synthetic_size=50),
        SyntheticAugmentation(real_size=20, synthetic_size=40),
        Accumulate(synthetic_size=30),
    ],
    ids=lambda r: r.name,
)
def test_exact_and_sample_modes_give_the_same_chain(regime):
    """Both modes draw the same multinomial counts; sample mode expands them to tokens."""
    p0 = zipf_probabilities(40, 1.0)
    out = []
    for exact in (True, False):
        model = CategoricalFamily(5, vocab_size=40)
        loop = Loop(regime, model, CategoricalSource(p0), replicates=5, exact=exact, seed=9)
        assert loop.exact == exact
        recs = list(loop.run(6))
        out.append((model.counts_.copy(), recs[-1].metrics["entropy"], recs[-1].provenance))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_allclose(out[0][1], out[1][1])
    assert set(out[0][2]) == set(out[1][2])


def test_subsample_regime_falls_back_to_tokens():
    model = CategoricalFamily(3, vocab_size=10)
    loop = Loop(
        AccumulateSubsample(real_size=0, synthetic_size=20),
        model,
        CategoricalSource(np.full(10, 0.1)),
        replicates=3,
        exact=True,
    )
    assert not loop.exact
    list(loop.run(4))
    assert np.all(model.counts_.sum(axis=1) == 20)


def test_state_round_trip_continues_identically():
    p0 = zipf_probabilities(30, 1.0)
    a = CategoricalFamily(4, vocab_size=30, alpha=0.1)
    a.fit_stats(CategoricalSource(p0).sample_stats(50, replicates=4, rng=np.random.default_rng(1)))
    b = CategoricalFamily(4, vocab_size=30, alpha=0.1)
    b.set_state({k: v.copy() for k, v in a.get_state().items()})
    assert all(isinstance(v, np.ndarray) for v in a.get_state().values())
    x = a.sample_points(100, bias=0.7, rng=np.random.default_rng(2)).X
    y = b.sample_points(100, bias=0.7, rng=np.random.default_rng(2)).X
    np.testing.assert_array_equal(x, y)
    assert CategoricalFamily(1, vocab_size=3).get_state() == {}


def base_config(**model):
    return {
        "data": {"source": "categorical", "symbols": 20},
        "model": {"family": "categorical", **model},
        "loop": {"synthetic_size": 10},
    }


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.alpha"):
        validate(base_config(alpha=-1))
    with pytest.raises(ConfigError, match=r"sampling.bias: must be in \(0, 1\]"):
        validate({**base_config(), "sampling": {"bias": 0}})
    bad = base_config()
    bad["data"] = {"source": "gaussian"}
    with pytest.raises(ConfigError, match="data.source: family 'categorical' needs"):
        validate(bad)
    with pytest.raises(ConfigError, match="exponent"):
        validate({**base_config(), "data": {"source": "categorical", "exponent": -2}})


def test_corpus_distribution_from_shakespeare_words():
    cfg = validate(
        {
            "data": {"source": "categorical", "distribution": "corpus", "symbols": 300},
            "model": {"family": "categorical"},
        }
    )
    result = run({**cfg.to_dict(), "generations": 2, "replicates": 2})
    support = result.metrics.query("metric == 'support_size'")["value"]
    assert support.max() <= 300 and support.min() > 10
