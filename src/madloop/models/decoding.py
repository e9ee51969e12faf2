"""Decoding for token models: temperature, top-k and top-p (nucleus) filters, and one draw per row.

Shared by the n-gram and transformer families so that "bias" means the same for both. All on
numpy arrays of next-token probabilities (B, V), drawn with a numpy Generator (no global RNG).
"""

from __future__ import annotations

import numpy as np


def filter_probabilities(
    p: np.ndarray, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> np.ndarray:
    """Rows of next-token probabilities (B, V) -> the distributions actually sampled.

    Order as in common decoders: q ∝ p^(1/temperature); then keep the ``top_k`` most likely
    tokens (0 = all); then the smallest set of most likely tokens whose mass reaches ``top_p``.
    """
    p = np.asarray(p, dtype=float)
    if temperature != 1.0:
        with np.errstate(divide="ignore"):
            logq = np.log(p) / temperature
        logq -= logq.max(axis=1, keepdims=True)
        p = np.exp(logq)
    if 0 < top_k < p.shape[1]:
        kth = -np.partition(-p, top_k - 1, axis=1)[:, top_k - 1 : top_k]
        p = np.where(p >= kth, p, 0.0)
    p = p / p.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of the more likely tokens
        keep_sorted = before < top_p  # the first token is always kept
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        p = np.where(keep, p, 0.0)
        p = p / p.sum(axis=1, keepdims=True)
    return p


def draw(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of (B, V) probabilities, by the inverse CDF: (B,) int."""
    cdf = np.cumsum(p, axis=1)
    u = rng.random((p.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), p.shape[1] - 1)
