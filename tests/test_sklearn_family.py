"""The scikit-learn family: each estimator through the loop, bias semantics, seeding, checkpoints,
parameter validation and estimators published by installed packages."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

import madloop.models.base as base
from madloop.config import ConfigError, validate
from madloop.experiment import run
from madloop.models.sklearn import (
    ESTIMATORS,
    EstimatorSpec,
    SklearnModel,
    estimator_family,
    mixture_moments,
    sample_kde,
    sample_mixture,
)

K = 4.0


def two_blobs(n: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal([-6.0, 0.0], [1.0, 0.5], size=(n // 2, 2))
    b = rng.normal([6.0, 1.0], [0.5, 2.0], size=(n - n // 2, 2))
    return np.concatenate([a, b])


@pytest.fixture(scope="module")
def gmm() -> GaussianMixture:
    return GaussianMixture(2, random_state=0).fit(two_blobs(4000, np.random.default_rng(0)))


def config(estimator: str, bias: float = 1.0, **params):
    return {
        "name": estimator,
        "seed": 1,
        "generations": 3,
        "replicates": 2,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "sklearn", "estimator": estimator, "params": params},
        "sampling": {"bias": bias},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 200},
    }


@pytest.mark.parametrize(
    "estimator, params",
    [("gmm", {"n_components": 2}), ("bgmm", {"n_components": 2}), ("kde", {"bandwidth": 0.3})],
)
def test_each_estimator_round_trips_through_the_loop(estimator, params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = run(config(estimator, 0.8, **params))
        b = run(config(estimator, 0.8, **params))
    metrics = set(a.metrics["metric"])
    assert {"heldout_loglik", "trace_ratio", "wasserstein2", "kl_divergence"} <= metrics
    assert a.metrics["value"].notna().all()
    np.testing.assert_array_equal(a.metrics["value"], b.metrics["value"])  # same seed, same run
    tr = a.summary.query("metric == 'trace_ratio'").sort_values("generation")["mean"].to_numpy()
    if estimator == "kde":  # each refit adds the kernel's λ h² per dimension: the spread grows
        assert tr[-1] > tr[0]
    else:  # components sampled with λ Σ_k: the spread shrinks generation after generation
        assert tr[-1] < tr[0]


def test_mixture_covariance_bias_scales_each_component(gmm):
    lam, n = 0.4, 40_000
    X = sample_mixture(gmm, n, lam, "covariance", np.random.default_rng(1))
    labels = gmm.predict(X)
    for k in range(2):
        Xk = X[labels == k]
        emp = np.cov(Xk.T)
        target = lam * gmm.covariances_[k]
        se = np.sqrt(2.0 / len(Xk)) * np.abs(np.diag(target))  # sd of a sample variance
        assert np.all(np.abs(np.diag(emp) - np.diag(target)) < K * se)
    freq = np.bincount(labels, minlength=2) / n  # weights untouched
    assert np.all(np.abs(freq - gmm.weights_) < K * np.sqrt(gmm.weights_ * (1 - gmm.weights_) / n))


def test_mixture_weight_bias_sharpens_by_a_temperature():
    gm = GaussianMixture(2, random_state=0).fit(
        np.concatenate(
            [
                np.random.default_rng(2).normal(-8, 1, (700, 1)),
                np.random.default_rng(3).normal(8, 1, (300, 1)),
            ]
        )
    )
    lam, n = 0.5, 50_000
    X = sample_mixture(gm, n, lam, "weights", np.random.default_rng(4))
    w = gm.weights_ ** (1 / lam) / (gm.weights_ ** (1 / lam)).sum()
    freq = np.bincount(gm.predict(X), minlength=2) / n
    assert np.all(np.abs(freq - w) < K * np.sqrt(w * (1 - w) / n))
    assert abs(freq.max() - gm.weights_.max()) > 0.1  # visibly sharper than the fit
    big = np.argmax(gm.weights_)
    Xb = X[gm.predict(X) == big]
    target = gm.covariances_[big].item()  # covariances untouched by a weights-only bias
    assert abs(Xb.var() - target) < K * np.sqrt(2.0 / len(Xb)) * target


def test_kde_bandwidth_scales_with_sqrt_lambda():
    data = np.random.default_rng(5).normal(0, 1, (2000, 1))
    h, lam, n = 0.5, 0.25, 100_000
    kde = KernelDensity(bandwidth=h).fit(data)
    X = sample_kde(kde, n, lam, "covariance", np.random.default_rng(6))
    target = data.var() + lam * h**2  # data variance + kernel variance λ h²
    se = np.sqrt(2.0 / n) * target * 1.5  # mixture kurtosis close to Gaussian
    assert abs(X.var() - target) < K * se
    assert abs(X.var() - (data.var() + h**2)) > 10 * se  # and differs from the unbiased kernel


def test_random_state_is_reseeded_from_the_loop_rng_every_call():
    X = two_blobs(400, np.random.default_rng(7))
    m = SklearnModel("gmm", {"n_components": 2, "init_params": "random"})
    m.fit(X, rng=np.random.default_rng(8))
    s1 = m.estimator.random_state
    m.fit(X, rng=np.random.default_rng(9))
    assert m.estimator.random_state != s1  # never an int fixed across calls
    unbiased = SklearnModel("gmm", {"n_components": 2})
    ESTIMATORS["plain-gmm"] = EstimatorSpec("plain-gmm", GaussianMixture)  # sklearn's own sample
    try:
        plain = SklearnModel("plain-gmm", {"n_components": 2}).fit(X, rng=np.random.default_rng(1))
        a = plain.sample(5, rng=np.random.default_rng(2))
        b = plain.sample(5, rng=np.random.default_rng(3))
        c = plain.sample(5, rng=np.random.default_rng(2))
        assert not np.allclose(a, b) and np.allclose(a, c)
        with pytest.raises(ValueError, match="no biased sampler"):
            plain.sample(5, bias=0.5, rng=np.random.default_rng(2))
    finally:
        del ESTIMATORS["plain-gmm"]
    assert unbiased.get_state() == {}


@pytest.mark.parametrize("estimator, params", [("gmm", {"n_components": 2}), ("kde", {})])
def test_state_round_trip(estimator, params):
    X = two_blobs(300, np.random.default_rng(10))
    a = SklearnModel(estimator, params).fit(X, rng=np.random.default_rng(11))
    state = a.get_state()
    assert state and all(isinstance(v, np.ndarray) for v in state.values())
    b = SklearnModel(estimator, params)
    b.set_state({k: np.array(v) for k, v in state.items()})
    np.testing.assert_array_equal(
        a.sample(50, bias=0.7, rng=np.random.default_rng(12)),
        b.sample(50, bias=0.7, rng=np.random.default_rng(12)),
    )
    assert a.score(X) == pytest.approx(b.score(X))
    if estimator == "gmm":
        mean, cov = mixture_moments(b.estimator)
        np.testing.assert_allclose(mean, X.mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(cov, np.cov(X.T, bias=True), rtol=1e-3)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"estimator": "gmn"}, "model.estimator: unknown estimator 'gmn'; did you mean 'gmm'"),
        (
            {"params": {"n_componets": 2}},
            "model.params: n_componets: not a parameter of GaussianMixture; did you mean",
        ),
        (
            {"params": {"n_components": 0}},
            "model.params: n_components: The 'n_components' parameter of GaussianMixture must be",
        ),
        ({"params": {"random_state": 3}}, "model.params: random_state: set by madloop"),
        ({"estimator": "kde", "params": {"kernel": "cosine"}}, "model.params: kernel: must be"),
    ],
)
def test_parameters_are_validated(model, message):
    cfg = config("gmm")
    cfg["model"] = {"family": "sklearn", **model}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(cfg)


def test_sklearn_needs_vectors_and_bias_in_range():
    cfg = config("gmm")
    cfg["data"] = {"source": "categorical"}
    with pytest.raises(ConfigError, match="data.source: family 'sklearn' needs real-valued"):
        validate(cfg)
    with pytest.raises(ConfigError, match="sampling.bias"):
        validate(config("gmm", bias=1.5))


class _EntryPoint:
    name = "mixture3"

    def load(self):
        return lambda: estimator_family(
            EstimatorSpec(
                "mixture3",
                lambda: GaussianMixture(n_components=3),
                sample_mixture,
                mixture_moments,
            )
        )


def test_an_installed_package_adds_an_estimator(monkeypatch):
    base.load_families()
    monkeypatch.setattr(base.FAMILIES, "_loaded", False)
    monkeypatch.setattr("madloop.registry.entry_points", lambda group: [_EntryPoint()])
    monkeypatch.setitem(base.FAMILIES, "mixture3", None)  # removed again after the test
    monkeypatch.setattr("madloop.models.sklearn.ESTIMATORS", dict(ESTIMATORS))
    families = base.load_families()
    assert "mixture3" in families
    cfg = config("gmm")
    cfg["model"] = {"family": "mixture3", "params": {"max_iter": 50}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = run(cfg)
    assert "heldout_loglik" in set(result.metrics["metric"])
    cfg["model"] = {"family": "sklearn", "estimator": "mixture3"}  # and by short name
    assert validate(cfg).model.estimator == "mixture3"
