"""Curation: keep the scraped items that a scoring function rates highest.

A lab filters its scrape for quality: each candidate gets a score and only the best are kept. For
the Gaussian the score is the likelihood under the lab's current model, so curation keeps the
points near the model's mode: a sampling bias (truncation) applied to *everything* scraped, real
content included. A score looks at the content, so curation runs in ``sample`` mode.

Scorers are registered by name (``register_scorer``); a data source or family that knows a better
score (e.g. a real-data classifier's confidence for images) adds its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.types import Points


@dataclass(frozen=True)
class Scorer:
    """``problem(model, real)`` says why the scorer cannot rate this pair (None when it can);
    ``score(model, real, points)`` returns (R, m) scores, higher is better."""

    name: str
    problem: Callable[[Any, Any], str | None]
    score: Callable[[Any, Any, Points], np.ndarray]


SCORERS: dict[str, Scorer] = {}


def register_scorer(scorer: Scorer) -> Scorer:
    SCORERS[scorer.name] = scorer
    return scorer


def gaussian_log_likelihood(mean: np.ndarray, factor: np.ndarray, X: np.ndarray) -> np.ndarray:
    """-1/2 squared Mahalanobis distance of X (R, m, d) under N(mean (R, d), L L^T) (the log
    density up to a per-replicate constant, which does not change a ranking). Under a singular
    factor, points off its support score -inf."""
    diff = np.swapaxes(X - mean[:, None, :], 1, 2)  # (R, d, m)
    diag = np.abs(np.diagonal(factor, axis1=1, axis2=2))
    ok = diag.min(axis=1) > 1e-300 * np.maximum(diag.max(axis=1), 1e-300)
    out = np.full(X.shape[:2], -np.inf)
    if ok.any():
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.linalg.solve(factor[ok], diff[ok])  # one batched call, no per-chain loop
            out[ok] = -0.5 * np.einsum("rdm,rdm->rm", z, z)
    for r in np.flatnonzero(~ok):  # collapsed chains: distance within the support, -inf off it
        z, *_ = np.linalg.lstsq(factor[r], diff[r], rcond=None)
        resid = np.linalg.norm(factor[r] @ z - diff[r], axis=0)
        scale = np.linalg.norm(diff[r], axis=0) + 1e-300
        out[r] = np.where(resid <= 1e-9 * scale, -0.5 * np.einsum("dm,dm->m", z, z), -np.inf)
    return np.where(np.isfinite(out), out, -np.inf)


def _likelihood_problem(model: Any, real: Any) -> str | None:
    if hasattr(model, "moments") or hasattr(model, "score_points"):
        return None
    return (
        f"family {type(model).__name__} has no likelihood (needs moments() or score_points()); "
        "use a Gaussian lineage or another loop.curation.score"
    )


def _likelihood(model: Any, real: Any, points: Points) -> np.ndarray:
    if hasattr(model, "score_points"):
        return np.asarray(model.score_points(points), dtype=float)
    mean, factor = model.moments()
    return gaussian_log_likelihood(mean, factor, points.global_X())


def _classifier_problem(model: Any, real: Any) -> str | None:
    if hasattr(real, "classifier_confidence"):
        return None
    return (
        f"data source {type(real).__name__} has no real-data classifier "
        "(classifier_confidence(points) -> (R, m)); use loop.curation.score = 'likelihood'"
    )


def _classifier(model: Any, real: Any, points: Points) -> np.ndarray:
    return np.asarray(real.classifier_confidence(points), dtype=float)


register_scorer(Scorer("likelihood", _likelihood_problem, _likelihood))
register_scorer(Scorer("classifier", _classifier_problem, _classifier))


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (R, k) of the k highest scores per replicate. Ties (e.g. -inf under a collapsed
    model) are broken in a random order, never by the order the items were drawn in."""
    R, m = scores.shape
    perm = rng.permuted(np.broadcast_to(np.arange(m), (R, m)), axis=1)
    shuffled = np.take_along_axis(scores, perm, axis=1)
    best = np.argsort(-shuffled, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(perm, best, axis=1)
