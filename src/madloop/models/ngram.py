"""The n-gram family: a word- or character-level n-gram language model of fixed-length documents.

A document (L token ids) is read after n-1 beginning-of-document symbols (id V), so the model is
a law over whole documents: p(x_1..x_L) = Π_i p(x_i | x_{i-n+1..i-1}). Counts are kept sparse:
each n-gram is one int64 key in base V+1, sorted, so lookups are binary searches and a batch of
contexts becomes a dense (B, V) block at once.

Smoothing:
- ``add-alpha``: p(w | h) = (c(h w) + α) / (c(h) + α V) on the top order;
- ``kneser-ney`` (interpolated, Chen & Goodman 1998): p(w | h) = max(c(h w) - D, 0) / c(h)
  + D N1+(h •) / c(h) · p(w | h'), recursively down to the unigram, interpolated with the uniform
  law; lower orders count continuations N1+(• h w) instead of occurrences (for every context,
  including those that start at the beginning of a document: a small simplification).

Sampling bias: a temperature (``sampling.bias``) plus ``top_k`` / ``top_p`` from the model table;
see :mod:`madloop.models.decoding`. ``sampling.top_k`` is the same per-context truncation given in
the ``[sampling]`` table (Dohmatob et al. 2024's tail cut); give one of the two.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Self

import numpy as np
from pydantic import Field

from madloop.config import TEMPERATURE, BiasKnob, DataConfig, ModelConfig
from madloop.models.base import FamilySpec, PerReplicate, check_is_fitted, register_family
from madloop.models.decoding import draw, filter_probabilities

MAX_TEMPERATURE = TEMPERATURE.max_lambda  # sampling.temperature above 1 flattens


def bias_knob(lam: float) -> dict[str, float]:
    """The sampling temperature for the paper's bias λ: ``{"temperature": λ}``."""
    return NGramConfig.bias_knob.knob(lam)


class NGramConfig(ModelConfig):
    family: Literal["ngram"] = "ngram"
    bias_knob: ClassVar[BiasKnob] = TEMPERATURE  # T = λ; sampling.temperature > 1 flattens
    #: ``sampling.top_k`` keeps the k most likely next tokens of each context (as model.top_k)
    sampling_top_k: ClassVar[bool] = True
    order: int = Field(3, ge=1, le=8)  # n: the context is the previous n-1 tokens
    smoothing: Literal["kneser-ney", "add-alpha"] = "kneser-ney"
    alpha: float = Field(0.01, gt=0.0, le=1e3)  # add-alpha pseudo-count
    discount: float = Field(0.75, gt=0.0, lt=1.0)  # Kneser–Ney absolute discount D
    top_k: int = Field(0, ge=0)  # sampling: keep the k most likely next tokens (0 = all)
    top_p: float = Field(1.0, gt=0.0, le=1.0)  # sampling: nucleus mass (1 = all)

    def data_problem(self, data: DataConfig) -> str | None:
        if data.source != "text":
            return f"family 'ngram' needs data.source = 'text', got '{data.source}'"
        return None


class _Table:
    """The counts of one order k: sorted keys (context code · base + w) and per-context sums."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray, base: int) -> None:
        self.keys = keys
        self.counts = counts.astype(float)
        ctx = keys // base
        self.ctx, self.start = np.unique(ctx, return_index=True)
        self.end = np.append(self.start[1:], keys.size)
        self.total = np.add.reduceat(self.counts, self.start) if keys.size else np.zeros(0)
        self.types = (self.end - self.start).astype(float)  # N1+(h •)

    def context_stats(self, ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found, c(h), N1+(h •)) for context codes (B,); unseen contexts give zeros."""
        if not self.ctx.size:
            zero = np.zeros(ctx.shape)
            return zero.astype(bool), zero, zero
        pos = np.minimum(np.searchsorted(self.ctx, ctx), self.ctx.size - 1)
        found = self.ctx[pos] == ctx
        return found, np.where(found, self.total[pos], 0.0), np.where(found, self.types[pos], 0.0)

    def point(self, keys: np.ndarray) -> np.ndarray:
        """c(h w) for full keys (B,)."""
        if not self.keys.size:
            return np.zeros(keys.shape)
        pos = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return np.where(self.keys[pos] == keys, self.counts[pos], 0.0)

    def dense(self, ctx: np.ndarray, vocab_size: int, base: int) -> np.ndarray:
        """c(h w) for every w: (B, V), built from the contexts' key ranges at once."""
        out = np.zeros((ctx.size, vocab_size))
        if not self.ctx.size:
            return out
        pos = np.minimum(np.searchsorted(self.ctx, ctx), self.ctx.size - 1)
        found = self.ctx[pos] == ctx
        rows = np.flatnonzero(found)
        start, stop = self.start[pos[rows]], self.end[pos[rows]]
        lengths = stop - start
        row_of = np.repeat(rows, lengths)
        idx = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        out[row_of, self.keys[idx] % base] = self.counts[idx]
        return out


class NGramLM:
    """An n-gram language model of documents of ``doc_length`` tokens over ``vocab_size`` ids.

    Parameters
    ----------
    vocab_size : int
    doc_length : int
    order : int, default=3
    smoothing : {"kneser-ney", "add-alpha"}, default="kneser-ney"
    alpha, discount : float
    top_k : int, default=0
    top_p : float, default=1.0

    Attributes
    ----------
    tables_ : list of _Table
        Counts per order 1..n (continuation counts below n for Kneser–Ney).

    Examples
    --------
    >>> import numpy as np
    >>> lm = NGramLM(3, doc_length=4, order=2).fit(np.array([[0, 1, 2, 0], [0, 1, 2, 1]]))
    >>> lm.sample(2, rng=np.random.default_rng(0)).shape
    (2, 4)
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        doc_length: int,
        order: int = 3,
        smoothing: str = "kneser-ney",
        alpha: float = 0.01,
        discount: float = 0.75,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> None:
        self.vocab_size = vocab_size
        self.doc_length = doc_length
        self.order = order
        self.smoothing = smoothing
        self.alpha = alpha
        self.discount = discount
        self.top_k = top_k
        self.top_p = top_p
        self.tables_: list[_Table] | None = None

    @property
    def base(self) -> int:
        return self.vocab_size + 1  # ids 0..V-1 and the beginning-of-document symbol V

    # -- fitting --------------------------------------------------------------------------------
    def _padded(self, X: np.ndarray) -> np.ndarray:
        bos = np.full((X.shape[0], self.order - 1), self.vocab_size, dtype=np.int64)
        return np.concatenate([bos, X.astype(np.int64)], axis=1)

    def _keys(self, padded: np.ndarray, k: int) -> np.ndarray:
        """Keys of the k-grams ending at each document position: (m, L)."""
        L = padded.shape[1] - (self.order - 1)
        first = self.order - k  # the k-gram ending at position i starts at i + first
        key = np.zeros((padded.shape[0], L), dtype=np.int64)
        for j in range(k):
            key = key * self.base + padded[:, first + j : first + j + L]
        return key

    def fit(self, X: np.ndarray, y: None = None, *, rng: np.random.Generator | None = None) -> Self:
        """Count the n-grams of documents X (m, L). Deterministic: ``rng`` is unused."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must have shape (m, L) of token ids, got {X.shape}")
        padded = self._padded(X)
        top_keys, top_counts = np.unique(self._keys(padded, self.order).ravel(), return_counts=True)
        tables = [_Table(top_keys, top_counts, self.base)]
        if self.smoothing == "kneser-ney":
            keys = top_keys
            for k in range(self.order - 1, 0, -1):
                # N1+(• h w): each distinct (k+1)-gram counts once for its k-token suffix
                lower, cont = np.unique(keys % self.base**k, return_counts=True)
                tables.append(_Table(lower, cont, self.base))
                keys = lower
        self.tables_ = tables[::-1]  # index k-1 holds order k
        return self

    # -- probabilities ----------------------------------------------------------------------------
    def _context_codes(self, ctx: np.ndarray, k: int) -> np.ndarray:
        """Codes of the last k-1 tokens of contexts (B, n-1)."""
        code = np.zeros(ctx.shape[0], dtype=np.int64)
        for j in range(self.order - k, self.order - 1):
            code = code * self.base + ctx[:, j]
        return code

    def next_probabilities(self, ctx: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
        """p(w | context) for contexts (B, n-1): dense (B, V), or (B,) at ``target`` ids."""
        check_is_fitted(self, "tables_")
        V, base, D = self.vocab_size, self.base, self.discount
        B = ctx.shape[0]
        if self.smoothing == "add-alpha":
            table = self.tables_[-1]
            code = self._context_codes(ctx, self.order)
            _, total, _ = table.context_stats(code)
            if target is None:
                c = table.dense(code, V, base)
                return (c + self.alpha) / (total + self.alpha * V)[:, None]
            c = table.point(code * base + target)
            return (c + self.alpha) / (total + self.alpha * V)
        p = np.full((B, V) if target is None else B, 1.0 / V)  # order 0: uniform
        for k in range(1, self.order + 1):
            table = self.tables_[k - 1]
            code = self._context_codes(ctx, k)
            found, total, types = table.context_stats(code)
            safe = np.where(found, total, 1.0)
            if target is None:
                c = table.dense(code, V, base)
                here = np.maximum(c - D, 0.0) / safe[:, None] + (D * types / safe)[:, None] * p
                p = np.where(found[:, None], here, p)
            else:
                c = table.point(code * base + target)
                here = np.maximum(c - D, 0.0) / safe + D * types / safe * p
                p = np.where(found, here, p)
        return p

    def log_prob(self, X: np.ndarray) -> np.ndarray:
        """log p(x_i | context) for every token of documents X (m, L): (m, L)."""
        X = np.asarray(X, dtype=np.int64)
        padded = self._padded(X)
        m, L = X.shape
        n1 = self.order - 1
        idx = np.arange(L)[:, None] + np.arange(n1)[None, :]  # (L, n-1) context positions
        ctx = padded[:, idx].reshape(m * L, n1)
        p = self.next_probabilities(ctx, X.reshape(-1))
        with np.errstate(divide="ignore"):
            return np.log(p).reshape(m, L)

    def mean_nll(self, X: np.ndarray) -> float:
        return float(-self.log_prob(X).mean())

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, n: int, *, bias: float = 1.0, rng: np.random.Generator) -> np.ndarray:
        """n documents (n, L), each token drawn from the filtered next-token law."""
        check_is_fitted(self, "tables_")
        out = np.empty((n, self.doc_length), dtype=np.int32)
        ctx = np.full((n, self.order - 1), self.vocab_size, dtype=np.int64)
        for i in range(self.doc_length):
            p = self.next_probabilities(ctx)
            p = filter_probabilities(p, temperature=bias, top_k=self.top_k, top_p=self.top_p)
            out[:, i] = draw(p, rng)
            if self.order > 1:
                ctx = np.concatenate([ctx[:, 1:], out[:, i : i + 1]], axis=1)
        return out

    # -- checkpoints ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.tables_ is None:
            return {}
        out = {}
        for k, t in enumerate(self.tables_, start=1):
            out[f"order{k}/keys"] = t.keys
            out[f"order{k}/counts"] = t.counts
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        orders = sorted({int(k.split("/")[0].removeprefix("order")) for k in state})
        self.tables_ = [
            _Table(
                np.asarray(state[f"order{k}/keys"]),
                np.asarray(state[f"order{k}/counts"]),
                self.base,
            )
            for k in orders
        ]


class NGramChains(PerReplicate):
    """R independent n-gram chains; adds the held-out score the text metrics need."""

    def mean_nll(self, docs: np.ndarray) -> np.ndarray:
        """Mean negative log-likelihood per token of held-out documents (m, L), per chain."""
        return np.array([m.mean_nll(docs) for m in self.models])

    def ngram_support(self) -> np.ndarray:
        """Distinct n-grams (top order) seen in each chain's last training set."""
        return np.array([float(m.tables_[-1].keys.size) for m in self.models])


def _build(config: NGramConfig, *, replicates: int, real: object, top_k: int = 0) -> NGramChains:
    """``top_k``: ``sampling.top_k`` (0 = ``model.top_k``), handed over by :func:`build_model`."""
    V = int(real.vocab_size)
    if float(V + 1) ** config.order >= 2.0**62:
        raise ValueError(
            f"model.order = {config.order} is too high for a vocabulary of {V} symbols (keys "
            "overflow int64); lower model.order or data.max_vocab"
        )
    return NGramChains(
        lambda: NGramLM(
            V,
            doc_length=int(real.doc_length),
            order=config.order,
            smoothing=config.smoothing,
            alpha=config.alpha,
            discount=config.discount,
            top_k=top_k or config.top_k,
            top_p=config.top_p,
        ),
        replicates,
    )


register_family(FamilySpec("ngram", NGramConfig, _build))
