"""The metric generator is built only when a suite that applies draws from it, and the numbers
are those of a generator built up front."""

from __future__ import annotations

import numpy as np

from madloop.data.gaussian import GaussianSource
from madloop.metrics.base import evaluate
from madloop.models.gaussian import GaussianFamily
from madloop.types import Points


def fitted(dim: int = 3, R: int = 4) -> tuple[GaussianFamily, GaussianSource]:
    real = GaussianSource(np.zeros(dim), np.eye(dim))
    X = np.random.default_rng(0).standard_normal((R, 50, dim))
    return GaussianFamily(R).fit_points(Points.tagged(X, source=0, origin=0)), real


def test_closed_form_suites_build_no_generator() -> None:
    model, real = fitted()
    calls = []

    def factory() -> np.random.Generator:
        calls.append(1)
        return np.random.default_rng(1)

    moments = evaluate(model, real, rng=factory, generation=1)
    assert "wasserstein2" in moments and not calls
    values = evaluate(model, real, rng=np.random.default_rng(1), generation=1)
    assert values.keys() == moments.keys()
    for k in values:
        np.testing.assert_array_equal(values[k], moments[k])


def test_a_drawing_suite_gets_the_generator_built_once(monkeypatch) -> None:
    from madloop.metrics import base

    model, real = fitted()
    suite = base.MetricSuite(
        "draws", lambda m, r: True, lambda m, r, *, rng, generation: {"u": rng.random(4)}
    )
    second = base.MetricSuite(
        "draws-again", lambda m, r: True, lambda m, r, *, rng, generation: {"v": rng.random(4)}
    )
    registry = {"draws": suite, "draws-again": second}
    monkeypatch.setattr(base, "METRIC_SUITES", registry)
    calls = []

    def factory() -> np.random.Generator:
        calls.append(1)
        return np.random.default_rng(7)

    lazy = evaluate(model, real, rng=factory, generation=1)
    eager = evaluate(model, real, rng=np.random.default_rng(7), generation=1)
    assert calls == [1]  # built once, shared by both suites in registry order
    np.testing.assert_array_equal(lazy["u"], eager["u"])
    np.testing.assert_array_equal(lazy["v"], eager["v"])
