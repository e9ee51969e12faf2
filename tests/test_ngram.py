"""The n-gram family: normalised smoothing, decoding filters, checkpoints, and collapse on text."""

from __future__ import annotations

import numpy as np
import pytest

from madloop.config import ConfigError, validate
from madloop.data.text import TextDataConfig, source_for
from madloop.experiment import run
from madloop.models.decoding import draw, filter_probabilities
from madloop.models.ngram import NGramChains, NGramLM

PLAYS = ["hamlet"]


@pytest.fixture(scope="module")
def src():
    return source_for(TextDataConfig(plays=PLAYS, doc_length=32))


@pytest.mark.parametrize("smoothing", ["kneser-ney", "add-alpha"])
@pytest.mark.parametrize("order", [1, 2, 4])
def test_next_token_laws_are_normalised_and_consistent(src, smoothing, order):
    rng = np.random.default_rng(0)
    X = src.sample_points(300, replicates=1, rng=rng).X[0]
    lm = NGramLM(src.vocab_size, doc_length=32, order=order, smoothing=smoothing).fit(X)
    ctx = np.concatenate(
        [np.full((5, order - 1), src.vocab_size), X[:3, : order - 1], X[:5, 3 : 2 + order]]
    )[:, : order - 1]
    ctx[-1] = 0  # an unseen context backs off
    p = lm.next_probabilities(ctx)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(p > 0)  # both smoothings give every symbol some mass
    target = np.arange(ctx.shape[0]) % src.vocab_size
    np.testing.assert_allclose(lm.next_probabilities(ctx, target), p[np.arange(len(p)), target])
    # the held-out log-likelihood is the sum of those next-token laws
    lp = lm.log_prob(X[:2])
    assert lp.shape == (2, 32) and np.all(np.isfinite(lp))


def test_kneser_ney_beats_add_alpha_and_unigram_on_heldout(src):
    X = src.sample_points(2000, replicates=1, rng=np.random.default_rng(1)).X[0]
    held = src.heldout_docs(64)
    nll = {
        (o, s): NGramLM(src.vocab_size, doc_length=32, order=o, smoothing=s).fit(X).mean_nll(held)
        for o, s in [(1, "kneser-ney"), (4, "kneser-ney"), (4, "add-alpha")]
    }
    assert nll[(4, "kneser-ney")] < nll[(4, "add-alpha")] < nll[(1, "kneser-ney")]


def test_decoding_filters():
    p = np.array([[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(filter_probabilities(p, top_k=2), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(filter_probabilities(p, top_p=0.7), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(filter_probabilities(p, top_p=0.5), [[1, 0, 0, 0]])
    hot = filter_probabilities(p, temperature=0.5)
    np.testing.assert_allclose(hot, p**2 / (p**2).sum())
    rng = np.random.default_rng(0)
    draws = draw(np.repeat(p, 100_000, axis=0), rng)
    freq = np.bincount(draws, minlength=4) / draws.size
    assert np.all(np.abs(freq - p[0]) < 4 * np.sqrt(p[0] * (1 - p[0]) / draws.size))


def test_top_k_one_is_greedy_and_temperature_sharpens(src):
    X = src.sample_points(500, replicates=1, rng=np.random.default_rng(2)).X[0]
    greedy = NGramLM(src.vocab_size, doc_length=32, order=3, top_k=1).fit(X)
    a = greedy.sample(4, rng=np.random.default_rng(3))
    assert np.all(a == a[0])  # every document is the same greedy path
    lm = NGramLM(src.vocab_size, doc_length=32, order=3).fit(X)
    rng = np.random.default_rng(4)
    hot, cold = lm.sample(200, bias=1.0, rng=rng), lm.sample(200, bias=0.5, rng=rng)
    assert len(np.unique(cold)) < len(np.unique(hot))
    assert lm.mean_nll(cold) < lm.mean_nll(hot)  # sharper samples are likelier under the model


def test_state_round_trip(src):
    make = lambda: NGramLM(src.vocab_size, doc_length=32, order=3)  # noqa: E731
    a = NGramChains(make, 2).fit_points(
        src.sample_points(100, replicates=2, rng=np.random.default_rng(5)),
        rng=np.random.default_rng(6),
    )
    state = a.get_state()
    assert all(k.startswith(("r0/", "r1/")) and isinstance(v, np.ndarray) for k, v in state.items())
    b = NGramChains(make, 2)
    b.set_state(state)
    x = a.sample_points(10, bias=0.9, rng=np.random.default_rng(7)).X
    y = b.sample_points(10, bias=0.9, rng=np.random.default_rng(7)).X
    np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(a.mean_nll(src.heldout_docs(8)), b.mean_nll(src.heldout_docs(8)))


def test_perplexity_rises_when_fully_synthetic_and_not_with_fresh_data(tmp_path):
    cfg = {
        "name": "ngram-collapse",
        "seed": 3,
        "generations": 6,
        "replicates": 3,
        "data": {"source": "text", "plays": PLAYS, "doc_length": 32},
        "model": {"family": "ngram", "order": 3},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 150},
        "arms": [
            {
                "name": "fresh",
                "loop.regime": "fresh-data",
                "loop.real_size": 1000,
                "loop.synthetic_size": 150,
            }
        ],
    }
    result = run(cfg, out=tmp_path / "run")
    ppl = result.metrics.query("metric == 'perplexity'").pivot_table(
        index=["arm", "replicate"], columns="generation", values="value"
    )
    base, fresh = ppl.loc["base"], ppl.loc["fresh"]
    rise = base[6] - base[1]
    se = rise.std(ddof=1) / np.sqrt(len(rise))
    assert rise.mean() > 4 * se and (base[6] / base[1]).min() > 1.25
    drift = (fresh[6] - fresh[1]) / fresh[1]
    assert np.abs(drift).max() < 0.05  # stays near generation 1
    samples = tmp_path / "run" / "plots" / "samples"
    text = (samples / "base_gen006.txt").read_text()
    assert "replicate 0, sample 0" in text and len(text) > 200
    assert (samples / "fresh_gen001.txt").exists()
    assert {"tail_mass", "distinct_2", "bigram_entropy", "support_size"} <= set(
        result.metrics["metric"]
    )
    support = result.metrics.query("metric == 'ngram_support'")["value"]
    assert support.min() > 100 and support.max() <= 2500 * 32  # distinct trigrams <= tokens


def test_config_errors():
    with pytest.raises(ConfigError, match="model.top_p"):
        validate(
            {"data": {"source": "text", "plays": PLAYS}, "model": {"family": "ngram", "top_p": 0}}
        )
    with pytest.raises(ConfigError, match="model.ordr: unknown key; did you mean 'order'"):
        validate(
            {"data": {"source": "text", "plays": PLAYS}, "model": {"family": "ngram", "ordr": 3}}
        )
    with pytest.raises(ConfigError, match="data.source: family 'ngram' needs"):
        validate({"data": {"source": "gaussian"}, "model": {"family": "ngram"}})
