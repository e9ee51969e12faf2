"""Metrics of a text model (n-gram, transformer) against real held-out text.

- ``perplexity``: exp of the mean negative log-likelihood per token of the fixed held-out
  documents (the same ones every generation), under the model itself (no sampling bias);
- of a fixed number of the model's own samples (drawn from the metric stream, bias-free):
  ``unigram_entropy`` and ``bigram_entropy`` (plug-in, nats), ``support_size`` (distinct symbols),
  ``distinct_2`` / ``distinct_3`` (distinct n-grams / n-grams, within documents), and
  ``tail_mass``: the samples' share of real tail symbols divided by the held-out text's share (the
  real tail: the rarest symbols by training frequency carrying at most 10% of held-out tokens).
  It is an unbiased ratio estimate whatever the sample size: about 1 while the tail survives, 0
  once the model no longer produces it;
- ``ngram_support`` (n-gram family): distinct top-order n-grams in the last training set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.counts import counts_from_tokens
from madloop.metrics.base import MetricSuite, register_suite
from madloop.metrics.discrete import entropy

HELDOUT_DOCS = 128  # held-out documents scored per generation (fixed across generations)
SAMPLE_DOCS = 64  # model samples per replicate for the sample statistics

TEXT_METRICS = (
    "perplexity",
    "unigram_entropy",
    "bigram_entropy",
    "support_size",
    "distinct_2",
    "distinct_3",
    "tail_mass",
)


def ngram_codes(docs: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """(R, m, L) tokens -> (R, m * (L - n + 1)) integer codes of the n-grams inside documents."""
    R, m, L = docs.shape
    codes = np.zeros((R, m, L - n + 1), dtype=np.int64)
    for j in range(n):
        codes = codes * vocab_size + docs[:, :, j : L - n + 1 + j]
    return codes.reshape(R, -1)


def sample_statistics(
    docs: np.ndarray, vocab_size: int, tail: np.ndarray, heldout_unigram: np.ndarray
) -> dict[str, np.ndarray]:
    """Statistics of sampled documents (R, m, L) per replicate."""
    R = docs.shape[0]
    counts = counts_from_tokens(docs, vocab_size)
    freq = counts / counts.sum(axis=1, keepdims=True)
    out = {
        "unigram_entropy": entropy(freq),
        "support_size": (counts > 0).sum(axis=1).astype(float),
        "tail_mass": freq[:, tail].sum(axis=1) / heldout_unigram[tail].sum(),
    }
    bigram_h, d2, d3 = np.empty(R), np.empty(R), np.empty(R)
    for n, target in ((2, d2), (3, d3)):
        if docs.shape[2] < n:
            target[:] = np.nan
            if n == 2:
                bigram_h[:] = np.nan
            continue
        codes = ngram_codes(docs, n, vocab_size)
        for r in range(R):
            _, c = np.unique(codes[r], return_counts=True)
            target[r] = c.size / codes.shape[1]
            if n == 2:
                bigram_h[r] = float(entropy(c / c.sum()))
    out.update({"bigram_entropy": bigram_h, "distinct_2": d2, "distinct_3": d3})
    return out


def _applies(model: Any, real: Any) -> bool:
    return hasattr(model, "mean_nll") and hasattr(real, "heldout_docs")


def _compute(model: Any, real: Any, *, rng: np.random.Generator, generation: int):
    nll = np.asarray(model.mean_nll(real.heldout_docs(HELDOUT_DOCS)), dtype=float)
    docs = np.asarray(model.sample_points(SAMPLE_DOCS, bias=1.0, rng=rng).X)
    out = {"perplexity": np.exp(nll)}
    out.update(sample_statistics(docs, real.vocab_size, real.tail, real.heldout_unigram))
    if hasattr(model, "ngram_support"):  # n-gram models: distinct n-grams they were fitted on
        out["ngram_support"] = np.asarray(model.ngram_support(), dtype=float)
    return out


register_suite(MetricSuite("text", _applies, _compute))
