"""Metrics of a categorical model q over V symbols against the real law p_0 (all exact, no
sampling): entropy, heterozygosity and homozygosity, support, missing mass, the real tail, TV
and KL.

``homozygosity`` = Σ q² = 1 - heterozygosity (Seddik et al. 2024's S_t). ``missing_mass`` =
Σ p_0,i over the symbols absent from the generation's training set: the test error of a
memoriser trained on it (Dohmatob et al. 2024). The training set's support is read from the
model's fitted counts (``counts_``) when it has them, so add-α smoothing does not hide it;
otherwise it is q > 0 (the MLE's zero-probability symbols are exactly the unseen ones).

The real tail is the set of rarest symbols that together carry at most 10% of the real mass
(``real.tail``). ``tail_mass`` = q(tail) / p_0(tail): 1 while the model keeps the tail's mass, 0
once it is lost. ``tail_coverage`` = the share of real tail tokens whose symbol the model still
produces (q_i > 0), weighted by p_0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from madloop.metrics.base import MetricSuite, register_suite

CATEGORICAL_METRICS = (
    "entropy",
    "heterozygosity",
    "homozygosity",
    "support_size",
    "missing_mass",
    "tail_mass",
    "tail_coverage",
    "tv_distance",
    "kl_to_real",
)


def entropy(q: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row of q (0 log 0 = 0)."""
    q = np.asarray(q, dtype=float)
    logq = np.log(np.maximum(q, 1e-300))  # q = 0 contributes 0 * finite = 0
    return -np.einsum("...v,...v->...", q, logq)


def categorical_metrics(
    q: np.ndarray, p0: np.ndarray, tail: np.ndarray, *, seen: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """q (R, V) model probabilities, p0 (V,) the real law, tail (V,) bool mask; ``seen`` (R, V)
    bool: the symbols of each chain's training set (default q > 0)."""
    q = np.asarray(q, dtype=float)
    alive = q > 0
    seen = alive if seen is None else np.asarray(seen, dtype=bool)
    tail_p0 = p0[tail]
    h = entropy(q)
    homozygosity = np.einsum("rv,rv->r", q, q)
    return {
        "entropy": h,
        "heterozygosity": 1.0 - homozygosity,
        "homozygosity": homozygosity,
        "support_size": np.count_nonzero(alive, axis=1).astype(float),
        "missing_mass": (~seen) @ p0,
        "tail_mass": q[:, tail].sum(axis=1) / tail_p0.sum(),
        "tail_coverage": (alive[:, tail] @ tail_p0) / tail_p0.sum(),
        "tv_distance": 0.5 * np.abs(q - p0).sum(axis=1),
        "kl_to_real": -h - q @ np.log(p0),  # Σ q log(q / p0); p0 > 0 everywhere
    }


def _applies(model: Any, real: Any) -> bool:
    return (
        hasattr(model, "probabilities") and hasattr(real, "probabilities") and hasattr(real, "tail")
    )


def _compute(model: Any, real: Any, *, rng: np.random.Generator, generation: int):
    counts = getattr(model, "counts_", None)
    seen = None if counts is None else np.asarray(counts) > 0
    return categorical_metrics(model.probabilities(), real.probabilities(), real.tail, seen=seen)


register_suite(MetricSuite("categorical", _applies, _compute, draws=False))
