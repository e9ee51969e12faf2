"""Small models the tests plug in as families (one copy each)."""

from __future__ import annotations

import numpy as np


class ToyDiagonal:
    """A diagonal Gaussian fitted one data set at a time (scikit-learn style), for the pool's
    family-agnostic path: snapshots via get_state/set_state, sample-mode mixing of families."""

    def __init__(self) -> None:
        self.loc_ = None
        self.scale_ = None

    def fit(self, X, y=None, *, rng):
        self.loc_, self.scale_ = X.mean(axis=0), X.std(axis=0, ddof=1)
        return self

    def sample(self, n, *, bias, rng):
        return self.loc_ + np.sqrt(bias) * self.scale_ * rng.standard_normal((n, self.loc_.size))

    def get_state(self):
        return {} if self.loc_ is None else {"loc": self.loc_, "scale": self.scale_}

    def set_state(self, state):
        if state:
            self.loc_, self.scale_ = np.asarray(state["loc"]), np.asarray(state["scale"])
