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
    """

    X: np.ndarray
    source: np.ndarray
    origin: np.ndarray
    y: np.ndarray | None = None
    frame: Frame | None = None

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

        return Points(pick(self.X), pick(self.source), pick(self.origin), pick(self.y), self.frame)

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
        return Points(
            X,
            np.concatenate([p.source for p in parts], axis=1),
            np.concatenate([p.origin for p in parts], axis=1),
            y,
            frame if shared else None,
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
    """

    count: np.ndarray
    mean: np.ndarray
    factor: np.ndarray
    provenance: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.count.max(initial=0))

    @staticmethod
    def merge(parts: list[Stats]) -> Stats:
        """Exact union (Chan et al.'s pairwise update, kept in factored form).

        S = S_A + S_B + (m_A m_B / m) d d^T with d = mean_A - mean_B: stack the factors'
        transposes and the scaled d^T, take a QR; R^T R is the sum, so R^T is the new factor.
        """
        parts = [p for p in parts if p.size > 0] or parts[:1]
        out = parts[0]
        for nxt in parts[1:]:
            m_a, m_b = out.count.astype(float), nxt.count.astype(float)
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
            out = Stats(out.count + nxt.count, mean, np.swapaxes(r, 1, 2), prov)
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
