"""2-D toy distributions with known modes: a ring of 8 Gaussians, a 5x5 grid of 25 Gaussians (the
toy of Alemohammad et al. 2024 and of VEEGAN / PacGAN before it), and two moons.

Each source draws fresh points from its law every time (an infinite real data set), labels each
point with its mode (so class-conditional models and guidance work), and knows how far any point
lies from each mode in units of the mode's σ: the mixture metrics (modes covered, high-quality
share) need only that. Labels travel in ``Points.y``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from madloop.config import DataConfig
from madloop.data.base import DataSpec, register_source
from madloop.linalg import lower_factor
from madloop.storage import atomic_path
from madloop.types import REAL, Points


class Toy2DConfig(DataConfig):
    labelled: ClassVar[bool] = True  # each point's label is its mode
    #: σ of each mode (for moons: of the noise around each arc)
    std: float = Field(0.1, gt=0.0, le=10.0)
    #: evaluation sample drawn from each model per generation by the metrics
    eval_size: int = Field(1000, ge=10, le=1_000_000)
    #: a mode counts as covered when it holds at least this share of its fair share (n / K) of the
    #: evaluation samples within 3σ
    mode_share: float = Field(0.25, gt=0.0, le=1.0)


class RingConfig(Toy2DConfig):
    source: Literal["ring"] = "ring"
    modes: int = Field(8, ge=2, le=1000)
    radius: float = Field(2.0, gt=0.0)


class GridConfig(Toy2DConfig):
    source: Literal["grid"] = "grid"
    side: int = Field(5, ge=2, le=100)
    spacing: float = Field(2.0, gt=0.0)


class MoonsConfig(Toy2DConfig):
    source: Literal["moons"] = "moons"
    std: float = Field(0.05, gt=0.0, le=10.0)


class Toy2DSource:
    """Base: subclasses implement ``_draw(n, rng) -> (X (n, 2), y (n,))`` and
    ``mode_distance(X) -> (n, K)`` (distance to each mode in units of σ)."""

    n_modes: int
    std: float

    def __init__(self, *, std: float, eval_size: int, mode_share: float) -> None:
        self.std = std
        self.eval_size = eval_size
        self.mode_share = mode_share

    def _draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def mode_distance(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample_points(self, n: int, *, replicates: int, rng: np.random.Generator) -> Points:
        xs, ys = zip(*(self._draw(n, rng) for _ in range(replicates)), strict=True)
        return Points.tagged(np.stack(xs), source=REAL, origin=0, y=np.stack(ys))

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (2,), lower covariance factor (2, 2)) of the real law, for the moment metrics."""
        mean, cov = self._moments()
        return mean, lower_factor(cov)

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- galleries: samples over the real density -------------------------------------------------
    def render_samples(self, points: Points, path_stem: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # the backdrop is a histogram of a large real sample; its generator is local to the
        # picture, so drawing it never touches any stream of the run
        ref, _ = self._draw(20_000, np.random.default_rng(0))
        lo, hi = ref.min(axis=0) - 4 * self.std, ref.max(axis=0) + 4 * self.std
        R = min(points.replicates, 4)
        fig, axes = plt.subplots(1, R, figsize=(3.2 * R, 3.2), dpi=110, squeeze=False)
        X = points.global_X()
        for r, ax in enumerate(axes[0]):
            ax.hist2d(
                ref[:, 0],
                ref[:, 1],
                bins=120,
                range=[[lo[0], hi[0]], [lo[1], hi[1]]],
                cmap="Greys",
                cmin=1,
            )
            ax.scatter(X[r, :, 0], X[r, :, 1], s=3, c="C3", alpha=0.7, lw=0)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"replicate {r}", fontsize=8)
        gen = int(points.origin.max()) if points.origin.size else 0
        fig.suptitle(f"{path_stem.name}: generation {gen} samples (red) over real data", fontsize=9)
        fig.tight_layout()
        path = path_stem.with_suffix(".png")
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        return [path]


class GaussianMixture2D(Toy2DSource):
    """Equal-weight isotropic Gaussians N(μ_k, σ² I)."""

    def __init__(self, centers: np.ndarray, **kw: float) -> None:
        super().__init__(**kw)
        self.centers = np.asarray(centers, dtype=float)  # (K, 2)
        self.n_modes = len(self.centers)

    def _draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, self.n_modes, size=n)
        return self.centers[y] + self.std * rng.standard_normal((n, 2)), y

    def mode_distance(self, X: np.ndarray) -> np.ndarray:
        diff = X[:, None, :] - self.centers[None]  # (n, K, 2)
        return np.sqrt(np.einsum("nkd,nkd->nk", diff, diff)) / self.std

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.centers.mean(axis=0)
        c = self.centers - mean
        return mean, c.T @ c / self.n_modes + self.std**2 * np.eye(2)


class TwoMoons(Toy2DSource):
    """Two interleaved half circles of radius 1 (scikit-learn's ``make_moons`` layout) with
    N(0, σ² I) noise; a point's distance to a moon is its distance to the arc, in units of σ."""

    n_modes = 2
    _ARC = np.linspace(0.0, np.pi, 2001)

    def _arcs(self) -> np.ndarray:
        t = self._ARC
        upper = np.stack([np.cos(t), np.sin(t)], axis=1)
        lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
        return np.stack([upper, lower])  # (2, A, 2)

    def _draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, size=n)
        t = rng.uniform(0.0, np.pi, size=n)
        upper = np.stack([np.cos(t), np.sin(t)], axis=1)
        lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
        X = np.where(y[:, None] == 0, upper, lower)
        return X + self.std * rng.standard_normal((n, 2)), y

    def mode_distance(self, X: np.ndarray) -> np.ndarray:
        arcs = self._arcs()
        out = np.empty((X.shape[0], 2))
        for k in range(2):
            diff = X[:, None, :] - arcs[k][None]  # (n, A, 2)
            out[:, k] = np.sqrt(np.einsum("nad,nad->na", diff, diff).min(axis=1))
        return out / self.std

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        # E over t ~ U(0, π) of the arc points, mixed half-half, plus the noise
        ref = self._arcs().reshape(-1, 2)
        mean = ref.mean(axis=0)
        c = ref - mean
        return mean, c.T @ c / len(ref) + self.std**2 * np.eye(2)


def _common(cfg: Toy2DConfig) -> dict[str, float]:
    return {"std": cfg.std, "eval_size": cfg.eval_size, "mode_share": cfg.mode_share}


def _ring(cfg: RingConfig, *, rng: np.random.Generator) -> GaussianMixture2D:
    angle = 2 * np.pi * np.arange(cfg.modes) / cfg.modes
    centers = cfg.radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return GaussianMixture2D(centers, **_common(cfg))


def _grid(cfg: GridConfig, *, rng: np.random.Generator) -> GaussianMixture2D:
    ticks = (np.arange(cfg.side) - (cfg.side - 1) / 2) * cfg.spacing
    gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
    return GaussianMixture2D(np.stack([gx.ravel(), gy.ravel()], axis=1), **_common(cfg))


def _moons(cfg: MoonsConfig, *, rng: np.random.Generator) -> TwoMoons:
    return TwoMoons(**_common(cfg))


register_source(DataSpec("ring", RingConfig, _ring))
register_source(DataSpec("grid", GridConfig, _grid))
register_source(DataSpec("moons", MoonsConfig, _moons))
