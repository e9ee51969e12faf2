"""The pool's schedule: which cohorts exist and which a scrape reaches. Deterministic, and
shared by the engine and the theory."""

from __future__ import annotations

import numpy as np

from madloop.pool.config import WebPoolConfig, adoption_at
from madloop.theory.pool import REAL_SOURCE, Cohort


class PoolSchedule:
    """Which cohorts exist and which a scrape reaches; no randomness, shared with the theory."""

    def __init__(self, cfg: WebPoolConfig, weights: list[float]) -> None:
        self.cfg = cfg
        self.weights = np.asarray(weights, dtype=float)
        self._published: dict[int, list[Cohort]] = {}

    def adoption(self, generation: int) -> float:
        return adoption_at(self.cfg.adoption, generation)

    def published(self, generation: int) -> list[Cohort]:
        """The cohorts that enter the pool at ``generation``."""
        t = generation
        if t not in self._published:
            if t <= 1:
                out = [Cohort(REAL_SOURCE, 1, self.cfg.initial_real)] if t == 1 else []
            else:
                a = self.adoption(t)
                new = self.cfg.new_content
                out = [Cohort(REAL_SOURCE, t, new * (1 - a))]
                total = self.weights.sum()
                if total > 0:
                    out += [
                        Cohort(1 + k, t, new * a * w / total) for k, w in enumerate(self.weights)
                    ]
            self._published[t] = [c for c in out if c.amount > 0]
        return self._published[t]

    def as_of(self, generation: int, lag: int) -> int:
        return max(1, generation - lag)

    def reachable(self, generation: int, lag: int = 0) -> list[Cohort]:
        """Cohorts a scrape at ``generation`` with knowledge cutoff ``lag`` can reach: published
        no later than u = generation - lag and not aged out by then."""
        u = self.as_of(generation, lag)
        first = 1 if self.cfg.max_age is None else max(1, u - self.cfg.max_age + 1)
        return [c for s in range(first, u + 1) for c in self.published(s)]
