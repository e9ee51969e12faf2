"""Curation: rewards (scorers) and the two ways of keeping what they rate highest.

One home for what the single-chain loop and the web pool share (both import it; it imports
nothing above the data layer):

- **scorers** (``SCORERS``, by name): ``score(model, real, points, params) -> (R, m)``, higher is
  better. ``linear`` r(x) = a·x, ``quadratic`` r(x) = -||x - target||², ``likelihood`` (the
  log-density of the current model: the web pool's default) and ``classifier`` (the real data's
  classifier: the largest class probability of the network the image metrics use);
- **selection**: :func:`top_k` keeps the k best of all candidates (the web pool's filter), and
  :func:`luce_choice` picks one of each group of K candidates with probability ∝ exp(β r)
  (Bradley–Terry / Luce; Ferbach et al. 2024, "Self-consuming generative models with curated
  data provably optimize human preferences"). K = 1 is no curation; β → ∞ is the hard argmax.

:class:`Curation` is what the loop calls for a synthetic batch: it draws K·n candidates from the
previous model (with the bias λ) and keeps n by the Luce choice. It needs points, so an arm with
curation runs in ``sample`` mode. It holds no state beyond its config (resume needs nothing).

Why Gumbel-max: argmax_k (β r_k + G_k) with G_k iid standard Gumbel picks k with probability
exp(β r_k) / Σ_j exp(β r_j) exactly, vectorised over all groups and never overflowing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from madloop.types import Points

#: points per replicate in the evaluation sample of ``mean_reward`` (a source's ``eval_size``
#: where smaller), as for the sample-based metric suite
EVAL_POINTS = 500


@dataclass(frozen=True)
class Scorer:
    """``problem(model, real)`` says why the scorer cannot rate this pair (None when it can);
    ``score(model, real, points, params)`` returns (R, m) scores, higher is better. ``params``
    names the config fields the scorer reads (``direction``, ``target``): a scorer with params
    cannot serve the web pool, whose curation table has none."""

    name: str
    problem: Callable[[Any, Any], str | None]
    score: Callable[..., np.ndarray]
    params: tuple[str, ...] = ()


SCORERS: dict[str, Scorer] = {}


def register_scorer(scorer: Scorer) -> Scorer:
    SCORERS[scorer.name] = scorer
    return scorer


def flat(points: Points) -> np.ndarray:
    """(R, m, D): each point's numbers in data coordinates, an image as one row."""
    X = points.global_X()
    return X.reshape(X.shape[0], X.shape[1], -1).astype(float, copy=False)


# -- the scorers ----------------------------------------------------------------------------------
def _any(model: Any, real: Any) -> str | None:
    return None


def _linear(model: Any, real: Any, points: Points, params: Mapping[str, Any]) -> np.ndarray:
    return flat(points) @ np.asarray(params["direction"], dtype=float)


def _quadratic(model: Any, real: Any, points: Points, params: Mapping[str, Any]) -> np.ndarray:
    diff = flat(points) - np.asarray(params["target"], dtype=float)
    return -np.einsum("rmd,rmd->rm", diff, diff)


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


def _likelihood(model: Any, real: Any, points: Points, params: Any = None) -> np.ndarray:
    if hasattr(model, "score_points"):
        return np.asarray(model.score_points(points), dtype=float)
    mean, factor = model.moments()
    return gaussian_log_likelihood(mean, factor, points.global_X())


def _classifier_problem(model: Any, real: Any) -> str | None:
    if hasattr(real, "classifier_confidence"):
        return None
    needed = ("heldout_X", "train_X", "checksum", "n_classes", "eval_size")
    if all(hasattr(real, a) for a in needed):  # an image set: the image metrics' network
        return None
    return (
        f"data source {type(real).__name__} has no real-data classifier "
        "(classifier_confidence(points) -> (R, m)); use another reward / score"
    )


def _classifier(model: Any, real: Any, points: Points, params: Any = None) -> np.ndarray:
    if hasattr(real, "classifier_confidence"):
        return np.asarray(real.classifier_confidence(points), dtype=float)
    from madloop.metrics.images import feature_net  # the network the image metrics train

    net = feature_net(real)
    X = flat(points)
    R, m, _ = X.shape
    h = net.features(X.reshape(R * m, -1))
    logits = h @ net.coefs[-1] + net.intercepts[-1]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p.max(axis=1) / p.sum(axis=1)).reshape(R, m)


register_scorer(Scorer("linear", _any, _linear, ("direction",)))
register_scorer(Scorer("quadratic", _any, _quadratic, ("target",)))
register_scorer(Scorer("likelihood", _likelihood_problem, _likelihood))
register_scorer(Scorer("classifier", _classifier_problem, _classifier))


# -- selection ------------------------------------------------------------------------------------
def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (R, k) of the k highest scores per replicate. Ties (e.g. -inf under a collapsed
    model) are broken in a random order, never by the order the items were drawn in."""
    R, m = scores.shape
    perm = rng.permuted(np.broadcast_to(np.arange(m), (R, m)), axis=1)
    shuffled = np.take_along_axis(scores, perm, axis=1)
    best = np.argsort(-shuffled, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(perm, best, axis=1)


def luce_choice(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For scores (R, n, K): the chosen candidate (R, n) of each group, k with probability
    exp(s_k) / Σ_j exp(s_j) (Gumbel-max). A NaN score counts as -inf; a group of only -inf
    picks uniformly."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    g = rng.gumbel(size=s.shape)
    dead = np.isneginf(s).all(axis=-1, keepdims=True)
    return np.argmax(np.where(dead, g, s + g), axis=-1)


@dataclass(frozen=True)
class Curation:
    """Each synthetic point is the Luce choice among ``choices`` candidates of the previous
    model, with probability ∝ exp(``scale`` · r(x)), r the scorer ``reward`` with its params."""

    reward: str
    choices: int
    scale: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scorer(self) -> Scorer:
        return SCORERS[self.reward]

    def rewards(self, model: Any, real: Any, points: Points) -> np.ndarray:
        """r(x), (R, m), unscaled."""
        return np.asarray(self.scorer.score(model, real, points, self.params), dtype=float)

    def draw(
        self, model: Any, real: Any, n: int, *, bias: float, rng: np.random.Generator
    ) -> Points:
        """n curated samples per replicate: K·n candidates, grouped in K consecutive ones."""
        K = self.choices
        candidates = model.sample_points(n * K, bias=bias, rng=rng)
        if K == 1:
            return candidates
        scores = self.scale * self.rewards(model, real, candidates)
        R = scores.shape[0]
        pick = luce_choice(scores.reshape(R, n, K), rng)
        return candidates.take(np.arange(n) * K + pick)

    def metrics(
        self, model: Any, real: Any, *, bias: float, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """``mean_reward``: r's mean over an evaluation sample of the model (with the bias)."""
        n = min(int(getattr(real, "eval_size", EVAL_POINTS)), EVAL_POINTS)
        points = model.sample_points(n, bias=bias, rng=rng)
        return {"mean_reward": self.rewards(model, real, points).mean(axis=1)}


def curation_problems(table: Any, dimension: int | None, where: str = "loop.curation") -> list:
    """Why a ``[loop.curation]`` table cannot run on data rows of ``dimension`` numbers (None:
    unknown): the reward must be registered and its params given with one number per
    coordinate."""
    if table is None:
        return []
    if table.reward not in SCORERS:
        known = ", ".join(sorted(SCORERS))
        return [f"{where}.reward: unknown reward {table.reward!r} (available: {known})"]
    problems = []
    for name in SCORERS[table.reward].params:
        value = getattr(table, name, None)
        if value is None:
            problems.append(
                f"{where}.{name}: reward {table.reward!r} needs it (a list of {dimension or 'd'} "
                "numbers, one per data coordinate)"
            )
        elif dimension is not None and len(value) != dimension:
            problems.append(
                f"{where}.{name}: has {len(value)} numbers but the data rows have {dimension}; "
                f"give {dimension} numbers"
            )
    return problems


def build_curation(table: Any) -> Curation | None:
    """The loop's :class:`Curation` from a validated ``loop.curation`` table (None: none)."""
    if table is None:
        return None
    params = {name: getattr(table, name) for name in SCORERS[table.reward].params}
    return Curation(table.reward, int(table.choices), float(table.scale), params)
