"""Small shared types: training batches with provenance, Gaussian sufficient statistics, protocols.

Everything here is data; nothing fits or samples. A batch always carries a leading replicate axis R:
madloop runs R independent chains of the same loop together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Self, runtime_checkable

import numpy as np

REAL = 0
SYNTHETIC = 1
SOURCE_NAMES = {REAL: "real", SYNTHETIC: "synthetic"}


@dataclass(eq=False)
class Frame:
    """Affine coordinates of a batch: a point is ``offset + factor @ local``.

    Samples of a Gaussian model are kept in the model's own frame (whitened deviations from its
    mean) so that a fit on them stays exact to rounding however far the covariance has collapsed;
    see ``shared/design/gaussian-exact.md``. Frames compare by identity: two batches share a frame
    only when they come from the same model.
    """

    offset: np.ndarray  # (R, d)
    factor: np.ndarray  # (R, d, d), lower triangular

    def to_global(self, local: np.ndarray) -> np.ndarray:
        return self.offset[:, None, :] + np.einsum("rij,rmj->rmi", self.factor, local)


@dataclass(eq=False)
class Points:
    """A batch of points for R replicate chains, each row tagged with its provenance.

    ``X`` has shape (R, m, *event_shape); ``source`` (R, m) holds REAL or SYNTHETIC and ``origin``
    (R, m) the generation whose model made the row (0 for real data). ``y`` holds class labels where
    the data has them. ``frame`` is set when ``X`` holds local coordinates (see :class:`Frame`).
    ``weight`` (R, m), when set, is each row's weight in the fit (``loop.real_weight``, see
    :func:`weigh_sources`); None means every row counts the same.
    """

    X: np.ndarray
    source: np.ndarray
    origin: np.ndarray
    y: np.ndarray | None = None
    frame: Frame | None = None
    weight: np.ndarray | None = None

    @property
    def replicates(self) -> int:
        return self.X.shape[0]

    @property
    def size(self) -> int:
        return self.X.shape[1]

    @classmethod
    def tagged(
        cls,
        X: np.ndarray,
        *,
        source: int,
        origin: int,
        y: np.ndarray | None = None,
        frame: Frame | None = None,
    ) -> Points:
        shape = X.shape[:2]
        return cls(
            X,
            np.full(shape, source, dtype=np.int8),
            np.full(shape, origin, dtype=np.int32),
            y,
            frame,
        )

    def global_X(self) -> np.ndarray:
        """Points in data coordinates (materialises a frame)."""
        return self.X if self.frame is None else self.frame.to_global(self.X)

    def take(self, index: np.ndarray) -> Points:
        """Rows ``index`` (R, k) of every replicate."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            idx = index.reshape(index.shape + (1,) * (a.ndim - 2))
            return np.take_along_axis(a, idx, axis=1)

        return Points(
            pick(self.X),
            pick(self.source),
            pick(self.origin),
            pick(self.y),
            self.frame,
            pick(self.weight),
        )

    @staticmethod
    def concat(parts: list[Points]) -> Points:
        """Union of batches; frames survive only when every part shares the same one."""
        parts = [p for p in parts if p.size > 0] or parts[:1]
        if len(parts) == 1:
            return parts[0]
        frame = parts[0].frame
        shared = all(p.frame is frame for p in parts)
        X = np.concatenate([p.X if shared else p.global_X() for p in parts], axis=1)
        ys = [p.y for p in parts]
        y = None if any(v is None for v in ys) else np.concatenate(ys, axis=1)
        weights = [p.weight for p in parts]
        if any(v is not None for v in weights) and any(v is None for v in weights):
            raise ValueError("cannot unite weighted and unweighted batches")
        weight = None if weights[0] is None else np.concatenate(weights, axis=1)
        return Points(
            X,
            np.concatenate([p.source for p in parts], axis=1),
            np.concatenate([p.origin for p in parts], axis=1),
            y,
            frame if shared else None,
            weight,
        )

    def provenance_counts(self) -> dict[tuple[int, int], np.ndarray]:
        """{(source, origin generation): count per replicate (R,)}."""
        out: dict[tuple[int, int], np.ndarray] = {}
        R, m = self.source.shape[:2]
        if m == 0:
            return out
        origin_min, origin_max = int(self.origin.min()), int(self.origin.max())
        source_min, source_max = int(self.source.min()), int(self.source.max())
        if origin_min == origin_max and source_min == source_max:  # one batch: no counting
            return {(source_min, origin_min): np.full(R, m)}
        if min(origin_min, source_min) >= 0:
            # one bincount over (replicate, source, origin) cells instead of a pass per key
            width = origin_max + 1
            cells = (source_max + 1) * width
            key = self.source.astype(np.int64) * width + self.origin
            key += np.arange(R)[:, None] * cells
            counts = np.bincount(key.ravel(), minlength=R * cells).reshape(R, cells)
            for c in np.flatnonzero(counts.any(axis=0)):
                out[(int(c // width), int(c % width))] = counts[:, c]
            return out
        key = self.source.astype(np.int64) * 1_000_000 + self.origin
        for k in np.unique(key):
            out[(int(k // 1_000_000), int(k % 1_000_000))] = (key == k).sum(axis=1)
        return out


@dataclass(eq=False)
class Stats:
    """Sufficient statistics of a Gaussian batch for R replicates.

    ``count`` (R,), ``mean`` (R, d) and a lower-triangular ``factor`` (R, d, d) of the scatter
    matrix S = sum (x - mean)(x - mean)^T = factor @ factor^T. ``provenance`` maps (source,
    origin generation) to counts (R,), so exact mode reports the same training-set make-up as
    ``sample`` mode.

    Weighted statistics (``loop.real_weight``): ``weight`` (R,) is the batch's total weight
    V1 = sum w_i and ``weight_sq`` (R,) V2 = sum w_i^2; then ``mean`` is the weighted mean and
    the factor's square the weighted scatter sum w_i (x - mean)(x - mean)^T. None: unit weights
    (V1 = V2 = count), the unweighted statistics.
    """

    count: np.ndarray
    mean: np.ndarray
    factor: np.ndarray
    provenance: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    weight: np.ndarray | None = None
    weight_sq: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.count.max(initial=0))

    @staticmethod
    def merge(parts: list[Stats]) -> Stats:
        """Exact union (Chan et al.'s pairwise update, kept in factored form).

        S = S_A + S_B + (m_A m_B / m) d d^T with d = mean_A - mean_B: stack the factors'
        transposes and the scaled d^T, take a QR; R^T R is the sum, so R^T is the new factor.
        Weighted batches merge by the same rule with the total weights V1 in place of the counts
        (the weighted scatter of a union is S^w_A + S^w_B + (V1_A V1_B / V1) d d^T).
        """
        if len(parts) == 1:  # nothing to unite (every exact generation of some regimes)
            return parts[0]
        parts = [p for p in parts if p.size > 0] or parts[:1]
        out = parts[0]
        for nxt in parts[1:]:
            m_a, m_b = out.total_weight(), nxt.total_weight()
            m = m_a + m_b
            delta = out.mean - nxt.mean
            mean = (m_a[:, None] * out.mean + m_b[:, None] * nxt.mean) / m[:, None]
            w = np.sqrt(m_a * m_b / m)[:, None, None] * delta[:, None, :]
            stacked = np.concatenate(
                [np.swapaxes(out.factor, 1, 2), np.swapaxes(nxt.factor, 1, 2), w], axis=1
            )
            r = np.linalg.qr(stacked, mode="r")
            prov = dict(out.provenance)
            for k, v in nxt.provenance.items():
                prov[k] = prov.get(k, 0) + v
            weighted = out.weight is not None or nxt.weight is not None
            out = Stats(
                out.count + nxt.count,
                mean,
                np.swapaxes(r, 1, 2),
                prov,
                m if weighted else None,
                out.total_weight_sq() + nxt.total_weight_sq() if weighted else None,
            )
        return out

    def total_weight(self) -> np.ndarray:
        """V1 = sum of the weights (R,): the count for unweighted statistics."""
        return self.count.astype(float) if self.weight is None else self.weight

    def total_weight_sq(self) -> np.ndarray:
        """V2 = sum of the squared weights (R,): the count for unweighted statistics."""
        return self.count.astype(float) if self.weight_sq is None else self.weight_sq

    def reweighted(self, per_point: np.ndarray) -> Stats:
        """These statistics with every point weighted ``per_point`` (R,) (an unweighted batch):
        the weighted scatter is per_point * S, V1 = per_point m, V2 = per_point^2 m."""
        if self.weight is not None:
            raise ValueError("these statistics are weighted already")
        m = self.count.astype(float)
        factor = self.factor * np.sqrt(per_point)[:, None, None]
        prov = dict(self.provenance)
        return Stats(self.count, self.mean, factor, prov, per_point * m, per_point**2 * m)


def batch_source(batch: Points | Stats) -> np.ndarray | int:
    """REAL or SYNTHETIC: per row (R, m) for points, one code for statistics (whose provenance
    must name one source)."""
    if isinstance(batch, Points):
        return batch.source
    sources = {key[0] for key in batch.provenance}
    if len(sources) != 1:
        raise ValueError(f"statistics of one source expected, got provenance {batch.provenance}")
    return sources.pop()


def weigh_sources(batches: list[Points | Stats], real_weight: float) -> list[Points | Stats]:
    """The batches of one training set with real rows weighted w / n_r and synthetic rows
    (1 - w) / n_s (w = ``real_weight``, n_r and n_s the training set's rows of each source, per
    replicate), so the weights sum to 1 (He, Xu, Cheng 2025). A source with no rows passes its
    share to the other. New objects: the batches given (also kept for later) are not changed.
    """
    share = {REAL: real_weight, SYNTHETIC: 1.0 - real_weight}
    counts: dict[int, np.ndarray] = {}
    for batch in batches:
        src = batch_source(batch)
        for code in share:
            rows = (
                (src == code).sum(axis=1)
                if isinstance(batch, Points)
                else (batch.count * (src == code))
            )
            counts[code] = counts.get(code, 0) + np.asarray(rows, dtype=float)
    present = sum(share[c] * (counts[c] > 0) for c in share)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_point = {c: np.where(counts[c] > 0, share[c] / present / counts[c], 0.0) for c in share}
    out: list[Points | Stats] = []
    for batch in batches:
        src = batch_source(batch)
        if isinstance(batch, Stats):
            out.append(batch.reweighted(per_point[src]))
            continue
        weight = np.where(src == REAL, per_point[REAL][:, None], per_point[SYNTHETIC][:, None])
        out.append(
            Points(batch.X, batch.source, batch.origin, batch.y, batch.frame, weight.astype(float))
        )
    return out


@runtime_checkable
class ChainModel(Protocol):
    """R replicate chains of one model family, as the loop sees them.

    The loop only fits and samples; how a family learns is its own business. A family whose
    models fit one data set at a time is wrapped by :class:`madloop.models.base.PerReplicate`.
    """

    def fit_points(self, points: Points, *, rng: np.random.Generator) -> Self: ...

    def sample_points(self, n: int, *, bias: float, rng: np.random.Generator) -> Points: ...

    def get_state(self) -> dict[str, np.ndarray]:
        """Learned state as named arrays (checkpoints are .npz / safetensors, never pickle)."""
        ...

    def set_state(self, state: dict[str, np.ndarray]) -> None: ...


@runtime_checkable
class RealSource(Protocol):
    """Generation 0: the real distribution (or a finite real data set) that the loop starts from."""

    def sample_points(self, n: int, *, replicates: int, rng: np.random.Generator) -> Points: ...
