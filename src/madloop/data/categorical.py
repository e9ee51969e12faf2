"""A categorical distribution over V symbols as the real law: uniform, Zipf, corpus counts, or
an explicit list of probabilities (``distribution = "explicit"``, ``probabilities = [...]``).

The discrete case of model collapse (the Wright–Fisher model of population genetics): a point is
one symbol id, a batch for R replicates is ``Points.X`` of shape (R, m). The source also draws
batches as :class:`madloop.counts.Counts` (its sufficient statistic), which the categorical family
uses in ``exact`` mode.
"""

from __future__ import annotations

import math
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
    # V (for "corpus": keep the V most frequent; for "explicit": len(probabilities))
    symbols: int = Field(100, ge=2, le=10_000_000)
    distribution: Literal["uniform", "zipf", "corpus", "explicit"] = "zipf"
    exponent: float = Field(1.0, gt=0.0, le=10.0)  # Zipf: p_i ∝ i^(-exponent), i = 1..V
    corpus: Literal["shakespeare"] = "shakespeare"  # distribution = "corpus": symbol counts of
    level: Literal["char", "word"] = "word"  # its training part, at this level
    probabilities: list[float] | None = None  # distribution = "explicit": p_1..p_V, as given

    @model_validator(mode="before")
    @classmethod
    def _explicit_symbols(cls, data: object) -> object:
        """An explicit law sets V from its list; a ``symbols`` that disagrees is an error."""
        if not isinstance(data, dict) or data.get("distribution") != "explicit":
            return data
        probs = data.get("probabilities")
        if not isinstance(probs, list):
            return data  # the after-validator names the missing list
        given = data.get("symbols")
        if given is not None and given != len(probs):
            raise ValueError(
                f"probabilities: lists {len(probs)} symbols but data.symbols = {given}; drop "
                "data.symbols (an explicit law's symbol count is the length of its list)"
            )
        return {**data, "symbols": len(probs)}

    @model_validator(mode="after")
    def _corpus_ok(self) -> CategoricalDataConfig:
        if self.distribution == "explicit":
            if self.probabilities is None:
                raise ValueError(
                    "probabilities: required for distribution = 'explicit' (a list of positive "
                    "numbers summing to 1, e.g. probabilities = [0.5, 0.3, 0.2])"
                )
            explicit_problem(self.probabilities)
        elif self.probabilities is not None:
            raise ValueError(
                f"probabilities: only for distribution = 'explicit', got distribution = "
                f"'{self.distribution}'; set distribution = 'explicit' or drop probabilities"
            )
        if self.distribution == "corpus":
            try:
                corpus_probabilities(self.level, self.symbols)
            except (CorpusError, ValueError) as e:
                raise ValueError(f"distribution: {e}") from None
        return self


EXPLICIT_TOLERANCE = 1e-9  # |Σ p - 1| allowed for an explicit law (rounding of the list)


def explicit_problem(probabilities: list[float]) -> None:
    """Raise ValueError naming ``probabilities`` unless the list is a probability vector: every
    entry finite and > 0 (a zero would be a symbol that never exists; drop it), sum 1 within
    ``EXPLICIT_TOLERANCE`` (the law is used as written, never silently renormalised)."""
    bad = [i for i, p in enumerate(probabilities) if not (math.isfinite(p) and p > 0.0)]
    if bad:
        i = bad[0]
        raise ValueError(
            f"probabilities: every entry must be a finite number > 0, got {probabilities[i]} at "
            f"position {i}"
        )
    total = math.fsum(probabilities)
    if abs(total - 1.0) > EXPLICIT_TOLERANCE:
        raise ValueError(
            f"probabilities: must sum to 1 (within {EXPLICIT_TOLERANCE:g}), got {total!r}; "
            "rescale the list"
        )


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
    if config.distribution == "explicit":
        return CategoricalSource(np.asarray(config.probabilities, dtype=float))
    return CategoricalSource(corpus_probabilities(config.level, config.symbols))


register_source(DataSpec("categorical", CategoricalDataConfig, _build))
