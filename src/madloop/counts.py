"""Symbol counts: the sufficient statistic of a batch of categorical draws.

A batch of m draws over V symbols is summarised, exactly, by its count vector. Fitting a
categorical distribution by counting (MLE or add-α) needs nothing else, so the categorical family
can run a loop on counts alone: a generation costs one multinomial draw per replicate, O(R V),
whatever the number of draws. This is the discrete twin of the Gaussian ``exact`` mode: the loop
merges batches with :meth:`Counts.merge` just as it merges :class:`madloop.types.Stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from madloop.types import SYNTHETIC, Points


@dataclass(eq=False)
class Counts:
    """Counts of R replicate batches: ``counts`` (R, V) integers; ``provenance`` as in Stats."""

    counts: np.ndarray
    provenance: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @property
    def count(self) -> np.ndarray:
        """Draws per replicate (R,)."""
        return self.counts.sum(axis=1)

    @property
    def size(self) -> int:
        return int(self.count.max(initial=0))

    @staticmethod
    def merge(parts: list[Counts]) -> Counts:
        """The union of batches: counts add."""
        if len(parts) == 1:
            return parts[0]
        total = np.zeros_like(parts[0].counts)
        prov: dict[tuple[int, int], np.ndarray] = {}
        for p in parts:
            total = total + p.counts
            for k, v in p.provenance.items():
                prov[k] = prov.get(k, 0) + v
        return Counts(total, prov)


def counts_from_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(R, m) or (R, m, L) integer tokens -> counts (R, V), without a Python loop over R."""
    R = tokens.shape[0]
    flat = tokens.reshape(R, -1).astype(np.int64)
    offset = (np.arange(R, dtype=np.int64) * vocab_size)[:, None]
    return np.bincount((flat + offset).ravel(), minlength=R * vocab_size).reshape(R, vocab_size)


def tokens_from_counts(counts: np.ndarray) -> np.ndarray:
    """Counts (R, V) with equal row sums m -> tokens (R, m), grouped by symbol.

    The draws are exchangeable, so their order carries no information; a uniform subsample of
    the rows (``accumulate-subsample``) is still uniform."""
    R, V = counts.shape
    m = int(counts[0].sum())
    if not np.all(counts.sum(axis=1) == m):
        raise ValueError("every replicate must hold the same number of draws")
    symbols = np.tile(np.arange(V, dtype=np.int32), R)
    return np.repeat(symbols, counts.ravel()).reshape(R, m)


def sample_counts(probabilities: np.ndarray, n: int, *, rng: np.random.Generator) -> np.ndarray:
    """n categorical draws per replicate as counts (R, V): one multinomial per row, in C."""
    p = np.asarray(probabilities, dtype=float)
    # numpy checks sum(p[:-1]) <= 1 + 1e-12; renormalise against rounding drift
    p = p / p.sum(axis=1, keepdims=True)
    return rng.multinomial(n, p)


def points_from_counts(counts: np.ndarray, *, source: int = SYNTHETIC, origin: int = -1) -> Points:
    return Points.tagged(tokens_from_counts(counts), source=source, origin=origin)
