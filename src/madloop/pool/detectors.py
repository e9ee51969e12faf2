"""Detectors between a scrape and training: content-blind classifiers and watermarks.

A content-blind detector flags a generated item with probability ``tpr`` (true positive rate) and a
real one with probability ``fpr`` (false positive rate), whatever the item looks like; content from
a lineage that embeds a watermark is flagged always (the watermark is detected perfectly). Flagged
items are dropped. Since a flag never depends on the item, flagging the drawn items and thinning
each cohort's *count* before its items are drawn have the same law: the pool engine thins counts
(binomially, or by drawing the kept counts directly when the lab scrapes until it has enough), so
the Gaussian ``exact`` mode stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from madloop.types import REAL


@dataclass(frozen=True)
class Detector:
    """Keep probabilities per source code (``REAL`` = 0, lineage k = 1 + k).

    Parameters
    ----------
    tpr : float
        Probability that a generated item without a watermark is flagged (and dropped).
    fpr : float
        Probability that a real item is flagged.
    watermarked : frozenset of int
        Indices k of the lineages whose content carries a watermark (always flagged).
    """

    tpr: float = 0.0
    fpr: float = 0.0
    watermarked: frozenset[int] = frozenset()

    def keep_probability(self, source: int) -> float:
        if source == REAL:
            return 1.0 - self.fpr
        if source - 1 in self.watermarked:
            return 0.0
        return 1.0 - self.tpr

    def keep_probabilities(self, sources: Sequence[int]) -> np.ndarray:
        return np.array([self.keep_probability(int(s)) for s in sources], dtype=float)

    def thin(
        self, counts: np.ndarray, sources: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray:
        """Binomial thinning: ``counts`` (R, C) scraped items per replicate and cohort -> the
        numbers the detector lets through."""
        return rng.binomial(counts, self.keep_probabilities(sources)[None, :])


def watermarked_lineages(explicit: Sequence[bool | None], share: float) -> frozenset[int]:
    """Which lineages embed a watermark: a lineage's own ``watermark`` setting wins; the others
    embed it when they are among the first round(share · K) lineages in listed order."""
    first = int(round(share * len(explicit)))
    return frozenset(k for k, own in enumerate(explicit) if (own if own is not None else k < first))
