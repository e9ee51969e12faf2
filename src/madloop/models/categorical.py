"""The categorical family: a distribution over V symbols refit by counting (Wright–Fisher).

Fit: p_i = (c_i + α) / (n + α V), the MLE when α = 0 (add-α smoothing otherwise). Sampling bias is
a temperature T: draws from q ∝ p^(1/T) (T < 1 sharpens, like truncation; T = 1 is the model).
``sampling.top_k = k`` then keeps only the k most likely symbols, renormalised (tail truncation,
Dohmatob et al. 2024); exactly k, ties broken by symbol id.
Without smoothing and bias this is the neutral Wright–Fisher model: a lost symbol never returns,
heterozygosity 1 - Σ p² decays by (1 - 1/n) per generation and the chain fixes on symbol i with
probability p_i(0); see :mod:`madloop.theory.discrete`.

All R replicate chains are one (R, V) array; there is no Python loop over chains. Two modes, one
law: ``exact`` carries counts only (a generation is one multinomial draw per chain, O(R V)),
``sample`` draws the tokens (R, n) and counts them.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Self

import numpy as np
from pydantic import Field

from madloop.config import TEMPERATURE, BiasKnob, DataConfig, ModelConfig
from madloop.counts import Counts, counts_from_tokens, points_from_counts, sample_counts
from madloop.models.base import FamilySpec, check_is_fitted, register_family
from madloop.types import Points

MAX_TEMPERATURE = TEMPERATURE.max_lambda  # sampling.temperature above 1 flattens


def bias_knob(lam: float) -> dict[str, float]:
    """The sampling temperature for the paper's bias λ: ``{"temperature": λ}``."""
    return CategoricalConfig.bias_knob.knob(lam)


class CategoricalConfig(ModelConfig):
    family: Literal["categorical"] = "categorical"
    bias_knob: ClassVar[BiasKnob] = TEMPERATURE  # T = λ; sampling.temperature > 1 flattens
    #: the family samples from its top-k symbols when ``sampling.top_k`` is set
    sampling_top_k: ClassVar[bool] = True
    mode: Literal["exact", "sample"] = "exact"  # exact: counts only (same law, O(R V) a step)
    alpha: float = Field(0.0, ge=0.0, le=1e6)  # add-α smoothing; 0 = MLE (Wright–Fisher)
    variable_train_size: ClassVar[bool] = False  # R chains fit one (R, m) batch

    def data_problem(self, data: DataConfig) -> str | None:
        if data.source != "categorical":
            return (
                f"family 'categorical' needs data.source = 'categorical' (symbol draws), got "
                f"'{data.source}'; for text use family 'ngram' or 'char-transformer'"
            )
        return None


def tempered(p: np.ndarray, temperature: float) -> np.ndarray:
    """q ∝ p^(1/T), row-wise, computed in logs so small p and small T neither under- nor
    overflow; zeros stay zero."""
    if temperature == 1.0:
        return p
    with np.errstate(divide="ignore"):
        logq = np.log(p) / temperature
    logq -= logq.max(axis=-1, keepdims=True)
    q = np.exp(logq)
    return q / q.sum(axis=-1, keepdims=True)


def truncate_top_k(p: np.ndarray, k: int) -> np.ndarray:
    """Rows (R, V) -> the top-k truncation of each: the k most likely symbols (ties broken by
    symbol id, so exactly k are kept), renormalised; k = 0 or k >= V is no truncation."""
    p = np.asarray(p, dtype=float)
    if k <= 0 or k >= p.shape[-1]:
        return p
    order = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    keep = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=-1)
    q = np.where(keep, p, 0.0)
    return q / q.sum(axis=-1, keepdims=True)


class CategoricalFamily:
    """R replicate categorical distributions over V symbols.

    Parameters
    ----------
    replicates : int, default=1
    vocab_size : int
        V, the number of symbols.
    alpha : float, default=0.0
        Add-α smoothing (pseudo-count per symbol).
    top_k : int, default=0
        Sample only the k most likely symbols of each chain, renormalised (0 = all); applied
        after the temperature (which keeps the order, so only ties could differ).

    Attributes
    ----------
    counts_ : ndarray of shape (R, V)
        Counts of the last training set.
    probabilities_ : ndarray of shape (R, V)

    Examples
    --------
    >>> import numpy as np
    >>> m = CategoricalFamily(2, vocab_size=3).fit(np.array([[0, 0, 1, 2], [1, 1, 1, 1]]))
    >>> m.probabilities_
    array([[0.5 , 0.25, 0.25],
           [0.  , 1.  , 0.  ]])
    """

    def __init__(
        self, replicates: int = 1, *, vocab_size: int, alpha: float = 0.0, top_k: int = 0
    ) -> None:
        self.replicates = replicates
        self.vocab_size = vocab_size
        self.alpha = alpha
        self.top_k = top_k
        self.counts_: np.ndarray | None = None
        self.probabilities_: np.ndarray | None = None

    # -- scikit-learn style ---------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: None = None) -> Self:
        """Fit on token ids of shape (R, n)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] < 1:
            raise ValueError(f"X must have shape (R, n >= 1) of symbol ids, got {X.shape}")
        if X.min() < 0 or X.max() >= self.vocab_size:
            raise ValueError(
                f"symbol ids must be in [0, {self.vocab_size}), got {X.min()}..{X.max()}"
            )
        return self._set(counts_from_tokens(X, self.vocab_size))

    def sample(self, n: int, *, bias: float = 1.0, rng: np.random.Generator) -> np.ndarray:
        return self.sample_points(n, bias=bias, rng=rng).X

    def probabilities(self) -> np.ndarray:
        check_is_fitted(self, "probabilities_")
        return self.probabilities_

    # -- the loop's interface -------------------------------------------------------------------
    def fit_points(self, points: Points, *, rng: np.random.Generator | None = None) -> Self:
        return self.fit(points.X)

    def sample_points(self, n: int, *, bias: float, rng: np.random.Generator) -> Points:
        return points_from_counts(self._draw(n, bias, rng))

    def fit_stats(self, stats: Counts) -> Self:
        return self._set(stats.counts)

    def sample_stats(self, n: int, *, bias: float, rng: np.random.Generator) -> Counts:
        return Counts(self._draw(n, bias, rng))

    # -- checkpoints ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.counts_ is None:
            return {}
        return {"counts": self.counts_, "probabilities": self.probabilities_}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            self.counts_ = np.asarray(state["counts"])
            self.probabilities_ = np.asarray(state["probabilities"])

    def _draw(self, n: int, bias: float, rng: np.random.Generator) -> np.ndarray:
        check_is_fitted(self, "probabilities_")
        q = truncate_top_k(tempered(self.probabilities_, bias), self.top_k)
        return sample_counts(q, n, rng=rng)

    def _set(self, counts: np.ndarray) -> Self:
        counts = np.asarray(counts, dtype=np.int64)
        smoothed = counts + self.alpha
        self.counts_ = counts
        self.probabilities_ = smoothed / smoothed.sum(axis=1, keepdims=True)
        return self


def _build(
    config: CategoricalConfig, *, replicates: int, real: object, top_k: int = 0
) -> CategoricalFamily:
    """``top_k``: ``sampling.top_k`` (0 = all), handed over by :func:`build_model`."""
    return CategoricalFamily(
        replicates, vocab_size=int(real.vocab_size), alpha=config.alpha, top_k=top_k
    )


register_family(FamilySpec("categorical", CategoricalConfig, _build))
