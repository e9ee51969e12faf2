"""A categorical distribution over V symbols as the real law: uniform, Zipf, or corpus counts.

The discrete case of model collapse (the Wright–Fisher model of population genetics): a point is
one symbol id, a batch for R replicates is ``Points.X`` of shape (R, m). The source also draws
batches as :class:`madloop.counts.Counts` (its sufficient statistic), which the categorical family
uses in ``exact`` mode.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from madloop.config import DataConfig
from madloop.counts import Counts, points_from_counts, sample_counts
from madloop.data.base import DataSpec, register_source
from madloop.data.text import CorpusError, TextDataConfig, source_for
from madloop.types import REAL, Points


class CategoricalDataConfig(DataConfig):
    source: Literal["categorical"] = "categorical"
    kind: ClassVar[str] = "tokens"
    symbols: int = Field(100, ge=2, le=10_000_000)  # V (for "corpus": keep the V most frequent)
    distribution: Literal["uniform", "zipf", "corpus"] = "zipf"
    exponent: float = Field(1.0, gt=0.0, le=10.0)  # Zipf: p_i ∝ i^(-exponent), i = 1..V
    corpus: Literal["shakespeare"] = "shakespeare"  # distribution = "corpus": symbol counts of
    level: Literal["char", "word"] = "word"  # its training part, at this level

    @model_validator(mode="after")
    def _corpus_ok(self) -> CategoricalDataConfig:
        if self.distribution == "corpus":
            try:
                corpus_probabilities(self.level, self.symbols)
            except (CorpusError, ValueError) as e:
                raise ValueError(f"distribution: {e}") from None
        return self


def zipf_probabilities(symbols: int, exponent: float) -> np.ndarray:
    p = np.arange(1, symbols + 1, dtype=float) ** (-exponent)
    return p / p.sum()


def corpus_probabilities(level: str, symbols: int) -> np.ndarray:
    """Frequencies of the ``symbols`` most frequent tokens of the Shakespeare training text,
    renormalised, in decreasing order."""
    src = source_for(TextDataConfig(level=level, max_vocab=min(symbols + 1, 1_000_000)))
    counts = np.bincount(src.train, minlength=src.vocab_size)
    if src.vocab[-1] == "<unk>":
        counts = counts[:-1]  # the rare words lumped together are not a symbol
    counts = np.sort(counts)[::-1]
    counts = counts[counts > 0][:symbols]
    if counts.size < symbols:
        raise ValueError(
            f"the {level}-level corpus has only {counts.size} distinct symbols; set "
            f"data.symbols <= {counts.size}"
        )
    return counts / counts.sum()


class CategoricalSource:
    """The real law p_0 over V symbols.

    Attributes
    ----------
    p0 : ndarray (V,)
    tail : ndarray of bool (V,)
        The real tail: the rarest symbols that together carry at most 10% of the mass.
    """

    def __init__(self, p0: np.ndarray) -> None:
        from madloop.data.text import real_tail

        self.p0 = np.asarray(p0, dtype=float)
        self.p0 = self.p0 / self.p0.sum()
        self.tail = real_tail(self.p0, self.p0)

    @property
    def vocab_size(self) -> int:
        return self.p0.size

    def probabilities(self) -> np.ndarray:
        return self.p0

    def sample_counts(self, n: int, *, replicates: int, rng: np.random.Generator) -> np.ndarray:
        return sample_counts(np.broadcast_to(self.p0, (replicates, self.p0.size)), n, rng=rng)

    def sample_points(self, n: int, *, replicates: int, rng: np.random.Generator) -> Points:
        return points_from_counts(
            self.sample_counts(n, replicates=replicates, rng=rng), source=REAL, origin=0
        )

    def sample_stats(self, n: int, *, replicates: int, rng: np.random.Generator) -> Counts:
        return Counts(self.sample_counts(n, replicates=replicates, rng=rng))


def _build(config: CategoricalDataConfig, *, rng: np.random.Generator) -> CategoricalSource:
    if config.distribution == "uniform":
        return CategoricalSource(np.full(config.symbols, 1.0 / config.symbols))
    if config.distribution == "zipf":
        return CategoricalSource(zipf_probabilities(config.symbols, config.exponent))
    return CategoricalSource(corpus_probabilities(config.level, config.symbols))


register_source(DataSpec("categorical", CategoricalDataConfig, _build))
