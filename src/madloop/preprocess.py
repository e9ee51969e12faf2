"""Processing a training set before the fit: outlier clipping, deduplication, standardisation,
alignment (``loop.preprocess``), with the provenance of what each step removed.

Why: the MAD analysis names a cause of lost diversity that acts before any model. People process
training data (denoise, normalise, align, filter); each step trims the distribution's edges, and a
self-consuming loop repeats the trimming every generation. Here the loop hands each generation's
composed training set to :class:`Preprocessor` between composing and fitting.

Variable sizes, honestly: a step that removes points leaves each of the R replicate chains its own
number of points, while :class:`~madloop.types.Points` holds one (R, m) block. So the steps never
shrink the block: they narrow a per-replicate boolean mask ``keep`` (R, m), and the fit respects
it (:func:`fit_masked`): the Gaussian family fits the masked sufficient statistics (count, mean,
scatter of the kept rows, exactly those of fitting them alone), a per-replicate family
(:class:`~madloop.models.base.PerReplicate`) fits each chain on its own kept rows. A family that
fits one batch for all chains at once declares ``variable_train_size = False`` and is refused at
validation. A chain left with fewer points than its family's ``min_train_size`` stops with
:class:`~madloop.models.base.FitFailed` naming the step; the others go on.

Exact mode: ``standardise`` of all rows is an affine map of the mean and scatter, so a Gaussian
arm whose steps are all of that kind keeps its sufficient-statistics simulation
(:meth:`Preprocessor.stats`); any other step looks at each point and the arm runs in ``sample``
mode (:func:`madloop.config.preprocess.exact_steps`, applied by ``make_regime``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.config.preprocess import PreprocessStep
from madloop.models.base import FitFailed
from madloop.types import REAL, SYNTHETIC, Points, Stats

#: the provenance column that says which step removed a row (0: kept, i: loop.preprocess[i-1])
REMOVED_BY = "removed_by"


@dataclass(eq=False)
class Masked:
    """A composed training set and the rows that survived the steps: ``keep`` (R, m)."""

    points: Points
    keep: np.ndarray

    @property
    def replicates(self) -> int:
        return self.points.replicates

    @property
    def counts(self) -> np.ndarray:
        """Kept rows per replicate (R,)."""
        return self.keep.sum(axis=1)


# -- the steps: each narrows the mask or maps the kept rows ---------------------------------------
def applicable(points: Points, applies_to: str) -> np.ndarray:
    """(R, m) rows of the source a step applies to."""
    if applies_to == "all":
        return np.ones(points.source.shape, dtype=bool)
    return points.source == (REAL if applies_to == "real" else SYNTHETIC)


def masked_stats(X: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count (R,), mean (R, d), lower scatter factor (R, d, d)) of the rows of X (R, m, d) that
    ``mask`` (R, m) keeps, as if they had been fitted alone (an empty set gives NaN)."""
    R, m, d = X.shape
    w = mask.astype(float)
    count = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w[:, None, :] @ X)[:, 0, :] / count[:, None]
    centred = np.where(mask[..., None], X - mean[:, None, :], 0.0)
    if m < d:  # QR needs at least d rows: zero rows add nothing to the scatter
        centred = np.concatenate([centred, np.zeros((R, d - m, d))], axis=1)
    r = np.linalg.qr(np.nan_to_num(centred), mode="r")[:, :d, :]
    sign = np.where(np.diagonal(r, axis1=1, axis2=2) < 0, -1.0, 1.0)
    factor = np.swapaxes(r * sign[:, :, None], 1, 2)  # S = R^T R = L L^T, diag L >= 0
    return count, mean, factor


def mahalanobis_sq(
    X: np.ndarray, mask: np.ndarray, mean: np.ndarray | None = None, cov: np.ndarray | None = None
) -> np.ndarray:
    """(R, m) squared Mahalanobis distances of every row of X (R, m, d) from ``mean`` in the metric
    of ``cov``; both default to the kept rows' own sample mean and unbiased covariance (the
    plug-in clip). A singular covariance uses its pseudo-inverse."""
    if mean is None or cov is None:
        count, mean, factor = masked_stats(X, mask)
        cov = factor @ np.swapaxes(factor, 1, 2) / np.maximum(count - 1.0, 1.0)[:, None, None]
    dev = X - np.asarray(mean)[:, None, :]
    precision = np.linalg.pinv(np.broadcast_to(cov, (X.shape[0],) + np.shape(cov)[-2:]))
    return np.sum((dev @ precision) * dev, axis=-1)


def clip_mask(
    X: np.ndarray, mask: np.ndarray, *, radius: float | None = None, keep: float | None = None
) -> np.ndarray:
    """The rows of ``mask`` within ``radius`` of their own mean in their own Mahalanobis metric
    (strictly inside), or the ``ceil(keep * n)`` closest of the n rows of ``mask``."""
    dist = np.where(mask, mahalanobis_sq(X, mask), np.inf)
    if radius is not None:
        return mask & (dist < radius * radius)
    n = mask.sum(axis=1)
    quota = np.ceil(keep * n - 1e-9).astype(int)
    rank = np.argsort(np.argsort(dist, axis=1, kind="stable"), axis=1, kind="stable")
    return mask & (rank < quota[:, None])


def dedup_mask(X: np.ndarray, mask: np.ndarray, *, tolerance: float) -> np.ndarray:
    """The rows of ``mask`` that survive a greedy pass in row order: a row within ``tolerance``
    (Euclidean, on the flattened point) of an earlier kept row is dropped; 0: exact copies."""
    out = mask.copy()
    flat = X.reshape(X.shape[0], X.shape[1], -1)
    for r in range(X.shape[0]):
        rows = np.flatnonzero(mask[r])
        if rows.size < 2:
            continue
        pts = flat[r, rows]
        if tolerance == 0.0:
            _, first = np.unique(pts, axis=0, return_index=True)
            drop = np.setdiff1d(np.arange(rows.size), first)
        else:
            from scipy.spatial import cKDTree

            pairs = cKDTree(pts).query_pairs(tolerance, p=2.0, output_type="ndarray")
            dropped = np.zeros(rows.size, dtype=bool)
            for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:  # i < j, in row order
                if not dropped[i]:
                    dropped[j] = True
            drop = np.flatnonzero(dropped)
        out[r, rows[drop]] = False
    return out


def real_scale(real: Any) -> tuple[np.ndarray, np.ndarray]:
    """The real law's mean (d,) and per-coordinate standard deviation (d,), from ``moments()``."""
    if not hasattr(real, "moments"):
        raise ValueError(
            f"loop.preprocess step 'standardise' needs a real source that knows its law "
            f"(moments()); {type(real).__name__} does not"
        )
    mean, factor = real.moments()
    return np.asarray(mean, dtype=float), np.sqrt(np.sum(np.asarray(factor) ** 2, axis=-1))


def standardised(
    X: np.ndarray, rows: np.ndarray, mean: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """X with the ``rows`` (R, m) mapped coordinate-wise to the real ``mean`` and ``scale``:
    x' = mean + (x - x̄) · scale / ŝ, x̄ and ŝ (unbiased) those rows' own; and the chains whose
    rows have a coordinate of zero spread (they cannot be rescaled)."""
    count, own_mean, factor = masked_stats(X, rows)
    spread = np.sqrt(np.sum(factor**2, axis=-1) / np.maximum(count - 1.0, 1.0)[:, None])
    flat = ~(spread > 0).all(axis=1)
    ratio = np.where(spread > 0, scale / np.where(spread > 0, spread, 1.0), 1.0)
    mapped = mean + (X - own_mean[:, None, :]) * ratio[:, None, :]
    return np.where(rows[..., None], mapped, X), flat


def aligned(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """X with the ``rows`` rotated about their own mean onto their own principal axes
    (descending variance; each axis signed so its largest entry is positive)."""
    count, mean, factor = masked_stats(X, rows)
    _, vectors = np.linalg.eigh(factor @ np.swapaxes(factor, 1, 2))
    vectors = vectors[:, :, ::-1]
    top = np.take_along_axis(vectors, np.abs(vectors).argmax(axis=1)[:, None, :], axis=1)
    vectors = vectors * np.where(top < 0, -1.0, 1.0)
    dev = X - mean[:, None, :]
    mapped = mean[:, None, :] + dev @ vectors
    return np.where(rows[..., None], mapped, X)


def centred_images(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """X (R, m, H, W) with the ``rows`` shifted by whole pixels so that each image's mass (its
    non-negative intensity) has its centre at the image's centre; pixels shifted in are 0."""
    R, m, H, W = X.shape
    flat = X.reshape(R * m, H, W)
    mass = np.clip(flat, 0.0, None)
    total = mass.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    cy = (mass.sum(axis=2) @ np.arange(H)) / safe
    cx = (mass.sum(axis=1) @ np.arange(W)) / safe
    dy = np.where(total > 0, np.rint((H - 1) / 2 - cy), 0).astype(int)
    dx = np.where(total > 0, np.rint((W - 1) / 2 - cx), 0).astype(int)
    dy, dx = np.where(rows.ravel(), dy, 0), np.where(rows.ravel(), dx, 0)
    yy = np.arange(H)[None, :, None] - dy[:, None, None]
    xx = np.arange(W)[None, None, :] - dx[:, None, None]
    inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    n = np.arange(R * m)[:, None, None]
    out = np.where(inside, flat[n, np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)], 0.0)
    return out.astype(X.dtype).reshape(X.shape)


# -- the chain -------------------------------------------------------------------------------------
class Preprocessor:
    """The ``loop.preprocess`` steps of one arm, applied to each generation's training set.

    Parameters
    ----------
    steps : tuple of PreprocessStep
    real : RealSource
        The real source (``standardise`` maps to its law).
    min_train_size : int
        The family's fewest points; a chain left with fewer stops with FitFailed.
    family : str
        For the messages.
    """

    def __init__(
        self,
        steps: tuple[PreprocessStep, ...],
        real: Any,
        *,
        min_train_size: int = 1,
        family: str = "",
    ) -> None:
        self.steps = tuple(steps)
        self.real = real
        self.min_train_size = min_train_size
        self.family = family
        self._scale = real_scale(real) if any(s.step == "standardise" for s in steps) else None

    def __call__(self, train: Points | Stats) -> tuple[Any, dict[tuple[int, int], np.ndarray]]:
        """(the processed training set, {(step index 1.., source): removed counts (R,)})."""
        self.too_small: dict[int, str] = {}
        if isinstance(train, Stats):
            return self.stats(train), {}
        X = train.X if self._pointwise_in_frame() else train.global_X()
        frame = train.frame if X is train.X else None
        keep = np.ones(train.source.shape, dtype=bool)
        removed: dict[tuple[int, int], np.ndarray] = {}
        flat = np.zeros(train.replicates, dtype=bool)
        present = [c for c in (REAL, SYNTHETIC) if (train.source == c).any()]
        for i, s in enumerate(self.steps, start=1):
            rows = keep & applicable(train, s.applies_to)
            if s.step == "clip":
                new = clip_mask(X, rows, radius=s.radius, keep=s.keep) | (keep & ~rows)
            elif s.step == "dedup":
                new = dedup_mask(X, rows, tolerance=s.tolerance) | (keep & ~rows)
            elif s.step == "standardise":
                X, bad = standardised(X, rows, *self._scale)
                flat |= bad
                new = keep
            else:  # align: vectors onto their principal axes, images centred on their mass
                X = aligned(X, rows) if X.ndim == 3 else centred_images(X, rows)
                new = keep
            if s.removes:
                for code in present:
                    removed[(i, code)] = (keep & ~new & (train.source == code)).sum(axis=1)
            keep = new
        points = Points(X, train.source, train.origin, train.y, frame)
        self.check_sizes(keep, flat)
        return Masked(points, keep), removed

    def _pointwise_in_frame(self) -> bool:
        """Clip and dedup at tolerance 0 are affine-invariant, so they run in a model's frame
        (exact however far it collapsed); dedup with a tolerance and the maps need data
        coordinates."""
        return all(s.step == "clip" or (s.step == "dedup" and s.tolerance == 0) for s in self.steps)

    def check_sizes(self, keep: np.ndarray, flat: np.ndarray) -> None:
        """Chains left with too few points (or a coordinate of zero spread) fail after the fit
        of the others: :func:`fit_masked` raises what this records."""
        counts = keep.sum(axis=1)
        self.too_small = {
            int(r): (
                f"loop.preprocess left {int(counts[r])} training points, fewer than the "
                f"{self.min_train_size} family '{self.family}' needs (steps: "
                f"{'; '.join(s.describe for s in self.steps)})"
            )
            for r in np.flatnonzero(counts < self.min_train_size)
        }
        for r in np.flatnonzero(flat):
            self.too_small.setdefault(
                int(r), "loop.preprocess 'standardise': a coordinate has zero spread"
            )

    def stats(self, stats: Stats) -> Stats:
        """Exact mode: ``standardise`` of all rows as the affine map of the statistics."""
        mean, scale = self._scale
        spread = np.sqrt(np.sum(stats.factor**2, axis=-1) / (stats.count - 1.0)[:, None])
        ratio = scale / spread
        factor = ratio[:, :, None] * stats.factor  # D L stays lower triangular
        return Stats(
            stats.count,
            np.broadcast_to(mean, stats.mean.shape).copy(),
            factor,
            dict(stats.provenance),
        )

    def fit(self, model: Any, train: Any, *, rng: np.random.Generator) -> None:
        """Fit the chains on what the steps kept; FitFailed for those left too few points."""
        fit_masked(model, train, rng=rng, failed=self.too_small)

    def provenance(
        self, train: Any, removed: dict[tuple[int, int], np.ndarray]
    ) -> tuple[dict[tuple[int, ...], np.ndarray], np.ndarray]:
        """(provenance with the ``removed_by`` column, training points per replicate)."""
        return kept_provenance(train, removed), kept_sizes(train)

    def metrics(self, train: Any, removed: dict[tuple[int, int], np.ndarray]) -> dict:
        """``removed_share``: the share of the composed training set the steps removed (by
        step and source: provenance.csv's ``removed_by`` rows). Exact mode removes nothing."""
        if isinstance(train, Stats):
            return {"removed_share": np.zeros(train.count.shape[0])}
        lost = sum(removed.values(), np.zeros(train.replicates))
        return {"removed_share": lost / train.points.source.shape[1]}


def fit_masked(model: Any, train: Any, *, rng: np.random.Generator, failed: dict) -> None:
    """Fit R chains on the kept rows of ``train`` (a :class:`Masked` or plain Points), then raise
    FitFailed for the chains in ``failed`` (replicate -> why) and those whose own fit failed."""
    if not isinstance(train, Masked):
        model.fit_points(train, rng=rng)
    elif train.keep.all():
        model.fit_points(train.points, rng=rng)
    elif hasattr(model, "models"):  # PerReplicate: each chain on its own rows
        model.fit_points(train.points, rng=rng, keep=train.keep)
    elif hasattr(model, "fit_stats") and train.points.X.ndim == 3:  # the Gaussian family
        points = train.points
        keep = train.keep.copy()
        keep[sorted(failed)] = True  # a chain that stops here is fitted on all rows: its state
        count, mean, factor = masked_stats(points.X, keep)  # stays finite, its reason stands
        if points.frame is not None:
            factor = points.frame.factor @ factor
            mean = points.frame.to_global(np.nan_to_num(mean)[:, None, :])[:, 0, :]
        model.fit_stats(Stats(count, mean, factor))
    else:
        raise TypeError(f"{type(model).__name__} cannot fit training sets of different sizes")
    if failed:
        raise FitFailed(dict(failed))


def kept_sizes(train: Any) -> np.ndarray:
    """Training points per replicate (R,) after the steps."""
    if isinstance(train, Masked):
        return train.counts
    if isinstance(train, Stats):
        return train.count
    return np.full(train.replicates, train.size)


def kept_provenance(
    train: Any, removed: dict[tuple[int, int], np.ndarray]
) -> dict[tuple[int, ...], np.ndarray]:
    """(source, origin, removed_by) -> counts: the kept rows under 0, each step's removed rows
    under its 1-based index (the origin generation of removed rows is not kept: -1 when the
    step took rows of several origins, else that origin)."""
    if isinstance(train, Stats):
        return {(*k, 0): v for k, v in train.provenance.items()}
    points = train.points
    gone = int(points.source.max()) + 1  # removed rows counted under a code of their own
    tagged = Points(points.X, np.where(train.keep, points.source, gone), points.origin)
    out = {
        (source, origin, 0): counts
        for (source, origin), counts in tagged.provenance_counts().items()
        if source != gone
    }
    origins = {s: np.unique(points.origin[points.source == s]) for s in (REAL, SYNTHETIC)}
    for (step, source), counts in removed.items():
        o = origins[source]
        out[(source, int(o[0]) if o.size == 1 else -1, step)] = counts
    return out
