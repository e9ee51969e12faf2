"""Self-correcting loops (Gillman et al. 2024): the correction map, the ordering of W2 over the
strength γ on their Gaussian toy, γ = 0 as no correction, config errors and resume.

Tolerances: k = 4 standard errors of paired per-replicate differences (runs with the same seed
share their real data, so the γ arms are compared chain by chain), fixed seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from madloop.config import ConfigError, parse
from madloop.correction import CORRECTIONS, assignment_correction
from madloop.data.gaussian import GaussianSource
from madloop.experiment import run
from madloop.types import SYNTHETIC, Points

K_SE = 4.0


def toy(strength: float | None, **top) -> dict:
    """Their toy: 2-D N(0, I), 50 real points, 25 (0.5 x real) synthetic ones accumulated."""
    cfg = {
        "name": "corr",
        "seed": 3,
        "generations": 40,
        "replicates": 50,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "gaussian", "mode": "sample", "covariance_estimator": "mle"},
        "loop": {"regime": "accumulate", "initial_real_size": 50, "synthetic_size": 25},
        **top,
    }
    if strength is not None:
        cfg["loop"]["correction"] = {"strength": strength}
    return cfg


def last_w2(result) -> np.ndarray:
    m = result.metrics
    last = m[(m.metric == "wasserstein2") & (m.generation == m.generation.max())]
    return last.sort_values("replicate")["value"].to_numpy()


def test_w2_at_the_last_generation_falls_as_the_strength_grows():
    """γ = 0, 0.1, 1: each step lowers W2 at generation 40 by more than 4 paired SE (measured:
    0.336, 0.265, 0.125 with gaps of 13 SE), and the corrected loops stay bounded: W2 at 40 is
    no larger than at generation 10 (+ 4 SE)."""
    w2 = {g: last_w2(run(toy(g))) for g in (0.0, 0.1, 1.0)}
    for a, b in [(0.0, 0.1), (0.1, 1.0)]:
        diff = w2[a] - w2[b]
        assert diff.mean() > K_SE * diff.std(ddof=1) / np.sqrt(diff.size), (a, b)
    early = last_w2(run(toy(1.0, generations=10)))
    diff = w2[1.0] - early
    assert diff.mean() < K_SE * diff.std(ddof=1) / np.sqrt(diff.size)


def test_zero_strength_is_no_correction():
    plain = run(toy(None, generations=6, replicates=4))
    zero = run(toy(0.0, generations=6, replicates=4))
    pd.testing.assert_frame_equal(zero.metrics, plain.metrics, check_exact=True)


def test_correction_moves_each_point_towards_its_matched_real_draw():
    real = GaussianSource(np.array([3.0, -1.0]), np.eye(2))
    X = np.random.default_rng(0).standard_normal((2, 30, 2))
    points = Points.tagged(X, source=SYNTHETIC, origin=1)
    Y = real.sample_points(30, replicates=2, rng=np.random.default_rng(5)).global_X()
    half = assignment_correction(points, real, 1.0, np.random.default_rng(5)).X  # t = 1/2
    partner = 2 * half - X  # each point's matched real draw
    for r in range(2):  # a permutation of the real draws: sorted rows agree
        np.testing.assert_allclose(np.sort(partner[r], axis=0), np.sort(Y[r], axis=0))
    far = assignment_correction(points, real, 1e12, np.random.default_rng(5)).X  # t -> 1
    np.testing.assert_allclose(far, partner, atol=1e-9)
    # optimal: the matching's total distance is no more than the identity's
    cost = np.linalg.norm(partner - X, axis=2).sum(axis=1)
    assert (cost <= np.linalg.norm(Y - X, axis=2).sum(axis=1)).all()
    assert assignment_correction(points, real, 0.0, np.random.default_rng(5)) is points


def test_correction_of_a_2d_mixture_runs_and_resumes_bit_exact(tmp_path):
    cfg = {
        "name": "ring",
        "seed": 1,
        "generations": 4,
        "replicates": 3,
        "data": {"source": "ring", "eval_size": 200},
        "model": {"family": "gaussian", "mode": "exact"},
        "loop": {"regime": "accumulate", "synthetic_size": 40, "initial_real_size": 40},
    }
    cfg["loop"]["correction"] = {"strength": 2.0}
    first = run(cfg, generations=2, out=tmp_path)
    assert first.manifest["modes"]["base"] == "sample"
    longer = run(cfg, out=tmp_path, resume=True)
    pd.testing.assert_frame_equal(longer.metrics, run(cfg).metrics, check_exact=True)
    assert "ring" in CORRECTIONS and np.isfinite(longer.metrics["value"]).all()


@pytest.mark.parametrize(
    ("correction", "field"),
    [
        ({"strength": -0.5}, "loop.correction.strength"),
        ({"strength": float("nan")}, "loop.correction.strength"),
        ({}, "loop.correction.strength"),
        ({"strength": 1.0, "kind": "ot"}, "loop.correction"),
    ],
)
def test_config_errors_name_the_field(correction, field):
    cfg = toy(None)
    cfg["loop"]["correction"] = correction
    with pytest.raises(ConfigError) as err:
        parse(cfg)
    assert any(line.startswith(field) for line in err.value.problems), err.value.problems


@pytest.mark.parametrize(
    ("data", "model", "loop"),
    [
        ({"source": "categorical", "symbols": 5}, {"family": "categorical"}, {}),
        ({"source": "digits"}, {"family": "gaussian"}, {}),
        ({"source": "gaussian"}, {"family": "gaussian"}, {"regime": "web-pool"}),
    ],
    ids=["tokens", "images", "web-pool"],
)
def test_correction_for_an_unsupported_source_or_regime_is_a_config_error(data, model, loop):
    cfg = {"data": data, "model": model, "loop": {**loop, "correction": {"strength": 1.0}}}
    with pytest.raises(ConfigError) as err:
        parse(cfg)
    assert any(line.startswith("loop.correction") for line in err.value.problems), err.value
