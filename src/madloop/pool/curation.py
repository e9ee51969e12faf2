"""Curation in the web pool: keep the scraped items that a scoring function rates highest.

A lab filters its scrape for quality: each candidate gets a score and only the best are kept. For
the Gaussian the score is the likelihood under the lab's current model, so curation keeps the
points near the model's mode: a sampling bias (truncation) applied to *everything* scraped, real
content included. A score looks at the content, so curation runs in ``sample`` mode.

The scorers and the selection live in :mod:`madloop.curation`, shared with the single-chain
loop's reward curation (``loop.curation.reward``): one registry (``register_scorer``), where a
data source or family that knows a better score adds its own. The pool keeps the top-scoring
items (:func:`top_k`); the loop picks by a Luce choice among K.
"""

from __future__ import annotations

from madloop.curation import SCORERS, Scorer, gaussian_log_likelihood, register_scorer, top_k

__all__ = ["SCORERS", "Scorer", "gaussian_log_likelihood", "register_scorer", "top_k"]
