"""Sample-based distances between a real and a generated set of feature vectors.

- Precision and recall (Kynkäänniemi et al., 2019): the real (generated) manifold is the union of
  balls around each real (generated) point reaching its k-th nearest neighbour. Precision is the
  share of generated points inside the real manifold (quality), recall the share of real points
  inside the generated manifold (diversity).
- Density and coverage (Naeem et al., 2020): density counts, per generated point, the real balls
  it falls in (/ k, averaged; 1 for matching laws, above 1 when samples crowd dense regions);
  coverage is the share of real balls that hold at least one generated point.
- The Fréchet distance (Heusel et al., 2017) between Gaussians fitted to the two sets' features,
  with ``scipy.linalg.sqrtm`` for the cross term.

``prdc`` (Naeem et al.'s own package) computes the first four when it is installed; otherwise the
same formulas run here (``tests/test_metrics_neural.py`` checks the two agree).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np


def cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``scipy.spatial.distance.cdist`` (scipy imported when first needed: the Gaussian loop
    imports this module through the metric registry but never measures feature sets)."""
    from scipy.spatial.distance import cdist as scipy_cdist

    return scipy_cdist(a, b)


def _kth_neighbour_radius(X: np.ndarray, k: int) -> np.ndarray:
    d = cdist(X, X)
    # index k in the sorted row skips the point itself (distance 0 at index 0)
    return np.partition(d, k, axis=1)[:, k]


def prdc_numpy(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage with the formulas of ``prdc.compute_prdc``."""
    r_real = _kth_neighbour_radius(real, k)  # (N,)
    r_fake = _kth_neighbour_radius(fake, k)  # (M,)
    d = cdist(real, fake)  # (N, M)
    inside_real = d < r_real[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d < r_fake[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) < r_real).mean()),
    }


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision/recall/density/coverage of ``fake`` against ``real`` (rows are feature vectors);
    the ``prdc`` package where installed, else :func:`prdc_numpy`."""
    real = np.asarray(real, dtype=np.float64).reshape(len(real), -1)
    fake = np.asarray(fake, dtype=np.float64).reshape(len(fake), -1)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k = {k} need more than {k} points per set")
    try:
        from prdc import compute_prdc
    except ImportError:
        return prdc_numpy(real, fake, k)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the set sizes on every call
        out = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {key: float(v) for key, v in out.items()}


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||μ1 - μ2||² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½): the squared W2 distance of the two Gaussians."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # features with dead units give singular covariances; sqrtm warns, the trace is still fine
        from scipy import linalg

        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():  # regularise as pytorch-fid does
            eps = 1e-6 * np.eye(len(mu1))
            covmean = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = np.real(covmean)
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean), 0.0))


def feature_stats(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    F = np.asarray(F, dtype=np.float64)
    return F.mean(axis=0), np.atleast_2d(np.cov(F, rowvar=False))


def frechet_between(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between two feature sets (rows)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))
