"""The character transformer: it learns, it is deterministic on CPU, and its state round-trips."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from madloop.config import ConfigError, validate  # noqa: E402
from madloop.data.text import TextDataConfig, source_for  # noqa: E402
from madloop.experiment import run  # noqa: E402
from madloop.models.char_transformer import CharTransformerLM, GPTConfig  # noqa: E402

L = 16


@pytest.fixture(scope="module")
def src():
    return source_for(TextDataConfig(plays=["macbeth"], doc_length=L))


def make(src, **kw) -> CharTransformerLM:
    gpt = GPTConfig(vocab_size=src.vocab_size, block_size=L, n_layer=1, n_head=2, n_embd=32)
    return CharTransformerLM(gpt, device="cpu", **{"steps": 60, "batch_size": 32, **kw})


def test_training_lowers_heldout_nll_below_uniform(src):
    X = src.sample_points(400, replicates=1, rng=np.random.default_rng(0)).X[0]
    lm = make(src).fit(X, rng=np.random.default_rng(1))
    held = src.heldout_docs(32)
    uniform = np.log(src.vocab_size)
    unigram = -np.sum(src.unigram[src.unigram > 0] * np.log(src.unigram[src.unigram > 0]))
    nll = lm.mean_nll(held)
    assert nll < unigram + 0.1 < uniform  # it learned at least the symbol frequencies
    out = lm.sample(5, bias=0.8, rng=np.random.default_rng(2))
    assert out.shape == (5, L) and out.min() >= 0 and out.max() < src.vocab_size


def test_deterministic_on_cpu_and_state_round_trip(src):
    X = src.sample_points(200, replicates=1, rng=np.random.default_rng(3)).X[0]
    a = make(src, warm_start=True).fit(X, rng=np.random.default_rng(4))
    b = make(src, warm_start=True).fit(X, rng=np.random.default_rng(4))
    sa = a.sample(4, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(sa, b.sample(4, rng=np.random.default_rng(5)))
    state = a.get_state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert any(k.startswith("optim/") for k in state)  # warm start keeps AdamW's moments
    c = make(src, warm_start=True)
    c.set_state(state)
    np.testing.assert_array_equal(sa, c.sample(4, rng=np.random.default_rng(5)))
    # training on continues exactly as if uninterrupted
    a.fit(X, rng=np.random.default_rng(6))
    c.fit(X, rng=np.random.default_rng(6))
    for (k, va), vc in zip(a.get_state().items(), c.get_state().values(), strict=True):
        np.testing.assert_allclose(va, vc, rtol=1e-6, atol=1e-7, err_msg=k)


def test_loop_writes_text_excerpts(tmp_path):
    cfg = {
        "name": "tiny-transformer",
        "seed": 2,
        "generations": 2,
        "replicates": 2,
        "data": {"source": "text", "plays": ["macbeth"], "doc_length": L},
        "model": {
            "family": "char-transformer",
            "n_layer": 1,
            "n_embd": 16,
            "steps": 20,
            "device": "cpu",
            "top_k": 20,
        },
        "loop": {"regime": "fully-synthetic", "synthetic_size": 64},
    }
    result = run(cfg, out=tmp_path / "run")
    assert {"perplexity", "tail_mass", "distinct_2"} <= set(result.metrics["metric"])
    assert np.isfinite(result.metrics["value"]).all()
    assert (tmp_path / "run" / "plots" / "samples" / "base_gen002.txt").read_text().strip()


def test_config_validation():
    base = {"data": {"source": "text", "plays": ["macbeth"]}}
    with pytest.raises(ConfigError, match="model.n_embd: must be a multiple of n_head"):
        validate({**base, "model": {"family": "char-transformer", "n_embd": 30, "n_head": 4}})
    with pytest.raises(ConfigError, match="sampling.bias"):
        validate({**base, "model": {"family": "char-transformer"}, "sampling": {"bias": -1}})
