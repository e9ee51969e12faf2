"""Self-correction: synthetic points move towards the real law before training (Gillman et al.
2024, "Self-correcting self-consuming loops for generative model training").

The correction needs a map towards the real law, which only the real source can provide, so the
corrections are registered by data source (``CORRECTIONS``); the loop calls the one its source
has, through :class:`Correction`, and knows nothing of either.

**The ideal correction of their Gaussian toy** (``exp_scripts/gaussian_toy_example.py``,
``WhiteningSelfCorrection.self_correction``): for a batch X of n synthetic points, draw n points Y
of the real law, match them by an optimal assignment (``scipy.optimize.linear_sum_assignment`` on
the Euclidean distances, as theirs), and replace each point by t·y_σ(i) + (1 - t)·x_i with
t = γ / (1 + γ), γ = ``loop.correction.strength``. So γ = 0 leaves the points as they are (and
draws nothing: identical to no correction), γ = 1 moves them halfway, γ → ∞ replaces them by a
real sample. It is sample-based, so one function serves every vector source that can draw
points: the Gaussian and the 2-D mixtures (ring, grid, moons) register it.

Where it differs from their script: their real draws come from ``rng.multivariate_normal`` of
the known N(0, I); here from the source's own ``sample_points`` (the same law, any source). Their
loop is "50 real points + accumulated corrected synthetic points, of which generation i keeps a
share (i+1)/t"; with ``regime = "accumulate"`` every synthetic batch is kept whole (see
``examples/self-correction.toml``). Their paper's figure uses the rejection-sampling variant
(a mixture (1-t)·histogram + t·real density), which needs the real density; it is not
implemented. A labelled point keeps its own label when it moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.types import Points


def assignment_correction(
    points: Points, real: Any, strength: float, rng: np.random.Generator
) -> Points:
    """Each point moves a share t = γ/(1+γ) of the way to its partner in an optimal assignment
    to as many fresh real draws (per replicate)."""
    if strength == 0.0:
        return points
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    t = strength / (1.0 + strength)
    X = points.global_X()
    R, n = X.shape[:2]
    Y = real.sample_points(n, replicates=R, rng=rng).global_X()
    moved = np.empty_like(X, dtype=float)
    for r in range(R):
        rows, cols = linear_sum_assignment(cdist(X[r].reshape(n, -1), Y[r].reshape(n, -1)))
        moved[r, rows] = t * Y[r, cols] + (1.0 - t) * X[r, rows]
    return Points(moved, points.source, points.origin, points.y)


Corrector = Callable[[Points, Any, float, np.random.Generator], Points]
#: data source name -> its correction towards the real law
CORRECTIONS: dict[str, Corrector] = {
    name: assignment_correction for name in ("gaussian", "ring", "grid", "moons")
}


def register_correction(source: str, corrector: Corrector) -> None:
    CORRECTIONS[source] = corrector


@dataclass(frozen=True)
class Correction:
    """The loop's correction: the source's corrector with the strength γ of the config."""

    source: str
    strength: float

    def apply(self, points: Points, real: Any, rng: np.random.Generator) -> Points:
        return CORRECTIONS[self.source](points, real, self.strength, rng)


def build_correction(table: Any, source: str) -> Correction | None:
    """From a validated ``loop.correction`` table and the arm's ``data.source`` (None: none)."""
    return None if table is None else Correction(source, float(table.strength))
