"""Shared helpers for the Gaussian-loop tests: build a Loop directly, run it, stack its metrics."""

from __future__ import annotations

import numpy as np

from madloop.data.gaussian import GaussianSource, random_covariance
from madloop.loop import GenerationRecord, Loop
from madloop.models.gaussian import GaussianFamily
from madloop.regimes import REGIMES


def make_loop(
    regime: str,
    *,
    dim: int,
    replicates: int,
    exact: bool,
    bias: float = 1.0,
    estimator: str = "unbiased",
    covariance: str = "identity",
    seed: int = 0,
    stream: int = 0,
    **sizes,
) -> Loop:
    """A Gaussian loop; ``covariance='random'`` uses a fixed random Σ_0 with condition number 10
    and mean 1, so nothing relies on μ_0 = 0 or Σ_0 = I."""
    if covariance == "identity":
        mean, cov = np.zeros(dim), np.eye(dim)
    else:
        rng = np.random.default_rng(12345)
        mean, cov = np.ones(dim), random_covariance(dim, 10.0, rng)
    real = GaussianSource(mean, cov)
    model = GaussianFamily(replicates, covariance_estimator=estimator)
    return Loop(
        REGIMES[regime](**sizes),
        model,
        real,
        bias=bias,
        replicates=replicates,
        exact=exact,
        seed=seed,
        stream=stream,
    )


def run_metrics(loop: Loop, generations: int) -> tuple[dict[str, np.ndarray], list]:
    """{metric: array (T, R)} and the list of GenerationRecords."""
    records: list[GenerationRecord] = list(loop.run(generations))
    names = records[0].metrics
    return {k: np.stack([r.metrics[k] for r in records]) for k in names}, records


def assert_mean_matches(values: np.ndarray, expected: float, *, k: float = 4.0, what: str = ""):
    """The sample mean of ``values`` lies within k standard errors of ``expected``."""
    values = np.asarray(values, dtype=float)
    assert np.all(np.isfinite(values)), f"{what}: non-finite values"
    se = values.std(ddof=1) / np.sqrt(values.size)
    err = abs(values.mean() - expected)
    assert err <= k * se, (
        f"{what}: mean {values.mean():.6g} vs theory {expected:.6g} "
        f"({err / se:.2f} standard errors, se={se:.3g})"
    )


def assert_var_matches(values: np.ndarray, expected: float, *, k: float = 4.0, what: str = ""):
    """The sample variance lies within k standard errors of ``expected``; the standard error of a
    sample variance is sqrt((m4 - s^4) / R), with m4 the fourth central moment."""
    x = np.asarray(values, dtype=float)
    s2 = x.var(ddof=1)
    m4 = np.mean((x - x.mean()) ** 4)
    se = np.sqrt(max(m4 - s2**2, 0.0) / x.size)
    assert abs(s2 - expected) <= k * se, (
        f"{what}: variance {s2:.6g} vs theory {expected:.6g} (se {se:.3g})"
    )
