"""The scikit-learn family: any estimator with ``fit`` and ``sample``, named by a short name.

Built in: ``gmm`` (GaussianMixture), ``bgmm`` (BayesianGaussianMixture), ``kde``
(KernelDensity). An installed package adds its own with :func:`estimator_family`, published under
the ``madloop.families`` entry point; a config only ever names the short name and the
estimator's parameters (``[model] params = {...}``), validated by scikit-learn's own parameter
constraints. A config never names an import path.

Sampling bias λ in (0, 1]:
- mixtures: each component is sampled from N(μ_k, λ Σ_k) (``bias_on = "covariance"``, the
  truncation trick per component), and/or the weights are sharpened, w_k ∝ w_k^(1/λ)
  (``"weights"``, a temperature), or both;
- KDE: the bandwidth is scaled by sqrt(λ) (kernel covariance λ h²).
These samplers draw with the loop's numpy Generator. scikit-learn's own ``random_state`` (used by
fitting, and by ``sample`` for estimators without a sampler here) is re-seeded from that
Generator before every call: an integer fixed across calls would give the same draws every
generation and silently tie the chain together.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from madloop.config import DataConfig, ModelConfig
from madloop.linalg import lower_factor
from madloop.models.base import FamilySpec, NotFittedError, PerReplicate, register_family

Sampler = Callable[[Any, int, float, str, np.random.Generator], np.ndarray]
Moments = Callable[[Any], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator.

    ``factory()`` makes an unfitted estimator (e.g. the class). ``sampler(est, n, bias, bias_on,
    rng)`` draws n biased samples with ``rng``; without one, ``est.sample(n)`` is called with a
    fresh ``random_state`` and only bias = 1 is allowed. ``moments(est)`` gives the model's mean
    and covariance (for the Gaussian moment metrics). ``get_state`` / ``set_state`` override the
    default checkpoint (every public fitted attribute ``*_`` that is an array or a number).
    """

    name: str
    factory: Callable[[], Any]
    sampler: Sampler | None = None
    moments: Moments | None = None
    get_state: Callable[[Any], dict[str, np.ndarray]] | None = None
    set_state: Callable[[Any, dict[str, np.ndarray]], None] | None = None
    reserved: frozenset[str] = field(default_factory=lambda: frozenset({"random_state"}))
    check: Callable[[dict[str, Any]], str | None] | None = None  # extra parameter rules


ESTIMATORS: dict[str, EstimatorSpec] = {}


def register_estimator(spec: EstimatorSpec) -> EstimatorSpec:
    ESTIMATORS[spec.name] = spec
    return spec


def make_estimator(name: str, params: dict[str, Any]) -> Any:
    """An unfitted estimator with ``params``; ValueError naming the parameter when invalid."""
    spec = ESTIMATORS[name]
    bad = sorted(set(params) & spec.reserved)
    if bad:
        raise ValueError(f"{bad[0]}: set by madloop from the run's seed each generation; remove it")
    est = spec.factory()
    valid = _parameters(est)
    for key in params:
        if key not in valid:
            hint = difflib.get_close_matches(key, list(valid), n=1)
            raise ValueError(
                f"{key}: not a parameter of {type(est).__name__}"
                + (f"; did you mean '{hint[0]}'?" if hint else "")
                + f" (valid: {', '.join(sorted(set(valid) - spec.reserved))})"
            )
    if hasattr(est, "set_params"):
        est.set_params(**params)
    else:  # a plain class: its constructor takes the parameters
        try:
            est = spec.factory(**params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"params: {type(est).__name__}({params}) failed: {e}") from None
    validate = getattr(est, "_validate_params", None)
    if validate is not None and hasattr(est, "_parameter_constraints"):
        try:
            validate()  # scikit-learn's declarative constraints
        except (ValueError, TypeError) as e:
            name = re.search(r"'(\w+)' parameter", str(e))
            raise ValueError(f"{name.group(1) if name else 'params'}: {e}") from None
    if spec.sampler is None and not _takes(est.sample, "rng") and "random_state" not in valid:
        raise ValueError(
            f"estimator '{spec.name}': {type(est).__name__}.sample takes no rng and the class no "
            "random_state, so madloop cannot seed its draws (runs would not repeat); give "
            "sample(n, *, bias, rng) an rng argument, register a sampler in its EstimatorSpec, or "
            "use madloop.register_family(name, cls) (see docs/own-model.md)"
        )
    if spec.check is not None:
        why = spec.check(params)
        if why:
            raise ValueError(why)
    return est


def _parameters(est: Any) -> dict[str, Any]:
    """The constructor parameters: scikit-learn's ``get_params``, else the signature."""
    if hasattr(est, "get_params"):
        return dict(est.get_params(deep=False))
    sig = inspect.signature(type(est))
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in sig.parameters.values() if p.kind in kinds}


def _takes(method: Any, name: str) -> bool:
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


class SklearnConfig(ModelConfig):
    family: Literal["sklearn"] = "sklearn"
    estimator: str = "gmm"  # a registered short name: gmm, bgmm, kde, or an installed one
    # the estimator's own parameters (validated by it, defaults too)
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    bias_on: Literal["covariance", "weights", "both"] = "covariance"  # mixtures only

    @field_validator("estimator")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ESTIMATORS:
            hint = difflib.get_close_matches(v, list(ESTIMATORS), n=1)
            raise ValueError(
                f"unknown estimator {v!r}"
                + (f"; did you mean '{hint[0]}'?" if hint else "")
                + f" (available: {', '.join(sorted(ESTIMATORS))})"
            )
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        estimator = info.data.get("estimator")
        if estimator in ESTIMATORS:  # else the estimator's own error is reported
            make_estimator(estimator, dict(v))
        return v

    def bias_problem(self, bias: float) -> str | None:
        why = super().bias_problem(bias)
        spec = ESTIMATORS[self.estimator]
        biased = spec.sampler is not None or _takes(getattr(spec.factory, "sample", None), "bias")
        if why is None and bias != 1.0 and not biased:
            return f"must be 1 for estimator '{self.estimator}' (it has no biased sampler)"
        return why

    def data_problem(self, data: DataConfig) -> str | None:
        if data.source in ("text", "categorical"):
            return (
                f"family 'sklearn' needs real-valued vectors, got data.source = '{data.source}'"
                " (use 'gaussian' or another continuous source)"
            )
        return None


def bias_knob(lam: float) -> dict[str, float]:
    """The covariance (or bandwidth²) scale for the paper's bias λ: ``{"variance_scale": λ}``."""
    return SklearnConfig.bias_knob.knob(lam)


# -- samplers and moments of the built-in estimators ---------------------------------------------
def mixture_factors(est: Any) -> np.ndarray:
    """Lower Cholesky factors of the K component covariances, (K, d, d), for any
    ``covariance_type``."""
    cov, kind = est.covariances_, est.covariance_type
    K, d = est.means_.shape
    if kind == "full":
        return np.linalg.cholesky(cov)
    if kind == "tied":
        return np.broadcast_to(np.linalg.cholesky(cov), (K, d, d))
    if kind == "diag":
        return np.sqrt(cov)[:, :, None] * np.eye(d)
    return np.sqrt(cov)[:, None, None] * np.eye(d)  # spherical


def sample_mixture(
    est: Any, n: int, bias: float, bias_on: str, rng: np.random.Generator
) -> np.ndarray:
    """n draws: component k with weight ∝ w_k^(1/λ) if the weights are biased, then
    μ_k + sqrt(λ) L_k z if the covariances are."""
    w = np.asarray(est.weights_, dtype=float)
    if bias_on in ("weights", "both") and bias != 1.0:
        with np.errstate(divide="ignore"):
            logw = np.log(w) / bias
        w = np.exp(logw - logw.max())
    w = w / w.sum()
    scale = np.sqrt(bias) if bias_on in ("covariance", "both") else 1.0
    comp = rng.choice(w.size, size=n, p=w)
    z = rng.standard_normal((n, est.means_.shape[1]))
    L = mixture_factors(est)
    return est.means_[comp] + scale * np.einsum("nij,nj->ni", L[comp], z)


def mixture_moments(est: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean Σ w_k μ_k and covariance Σ w_k (Σ_k + μ_k μ_k^T) - μ μ^T (law of total covariance)."""
    w, mu = est.weights_, est.means_
    L = mixture_factors(est)
    mean = w @ mu
    second = np.einsum("k,kij->ij", w, L @ np.swapaxes(L, 1, 2) + mu[:, :, None] * mu[:, None])
    return mean, second - np.outer(mean, mean)


def _kde_data(est: Any) -> np.ndarray:
    return np.asarray(est.tree_.data)


def sample_kde(est: Any, n: int, bias: float, bias_on: str, rng: np.random.Generator) -> np.ndarray:
    """A random training point plus kernel noise of bandwidth sqrt(λ) h (Gaussian kernel), or a
    uniform point of the ball of that radius (tophat)."""
    data = _kde_data(est)
    h = float(est.bandwidth_) * np.sqrt(bias)
    x = data[rng.integers(0, data.shape[0], size=n)]
    d = data.shape[1]
    z = rng.standard_normal((n, d))
    if est.kernel == "gaussian":
        return x + h * z
    radius = h * rng.random(n) ** (1.0 / d)
    return x + z / np.linalg.norm(z, axis=1, keepdims=True) * radius[:, None]


def kde_moments(est: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the data and covariance = data covariance (1/m) + the kernel's (h² I Gaussian,
    h²/(d+2) I tophat)."""
    data = _kde_data(est)
    d = data.shape[1]
    h2 = float(est.bandwidth_) ** 2
    kernel = h2 if est.kernel == "gaussian" else h2 / (d + 2)
    centred = data - data.mean(axis=0)
    return data.mean(axis=0), centred.T @ centred / data.shape[0] + kernel * np.eye(d)


def _kde_get_state(est: Any) -> dict[str, np.ndarray]:
    return {"data": _kde_data(est)}


def _kde_set_state(est: Any, state: dict[str, np.ndarray]) -> None:
    est.fit(np.asarray(state["data"]))  # the tree is rebuilt deterministically from the data


def _kde_check(params: dict[str, Any]) -> str | None:
    kernel = params.get("kernel", "gaussian")
    if kernel not in ("gaussian", "tophat"):
        return f"kernel: must be 'gaussian' or 'tophat' to sample, got {kernel!r}"
    return None


def _builtins() -> None:
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture
    from sklearn.neighbors import KernelDensity

    register_estimator(EstimatorSpec("gmm", GaussianMixture, sample_mixture, mixture_moments))
    register_estimator(
        EstimatorSpec("bgmm", BayesianGaussianMixture, sample_mixture, mixture_moments)
    )
    register_estimator(
        EstimatorSpec(
            "kde",
            KernelDensity,
            sample_kde,
            kde_moments,
            _kde_get_state,
            _kde_set_state,
            check=_kde_check,
        )
    )


_builtins()


# -- one estimator, one data set ------------------------------------------------------------------
def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


class SklearnModel:
    """One scikit-learn estimator behind madloop's ``fit(X, *, rng)`` / ``sample(n, *, bias,
    rng)``; the estimator object lives across generations (so ``warm_start`` works)."""

    def __init__(self, estimator: str, params: dict[str, Any], *, bias_on: str = "covariance"):
        self.spec = ESTIMATORS[estimator]
        self.estimator = make_estimator(estimator, params)
        self.bias_on = bias_on
        self.fitted_ = False

    def _reseed(self, rng: np.random.Generator) -> None:
        if "random_state" in _parameters(self.estimator):
            if hasattr(self.estimator, "set_params"):
                self.estimator.set_params(random_state=_seed(rng))
            else:
                self.estimator.random_state = _seed(rng)

    def fit(self, X: np.ndarray, y: None = None, *, rng: np.random.Generator) -> Self:
        self._reseed(rng)
        if _takes(self.estimator.fit, "rng"):
            self.estimator.fit(np.asarray(X, dtype=float), rng=rng)
        else:
            self.estimator.fit(np.asarray(X, dtype=float))
        self.fitted_ = True
        return self

    def sample(self, n: int, *, bias: float = 1.0, rng: np.random.Generator) -> np.ndarray:
        if not self.fitted_:
            raise NotFittedError(f"{type(self.estimator).__name__} is not fitted yet: call fit")
        if self.spec.sampler is not None:
            return self.spec.sampler(self.estimator, n, bias, self.bias_on, rng)
        if _takes(self.estimator.sample, "rng"):  # a plain class that follows madloop.Model
            extra = {"bias": bias} if _takes(self.estimator.sample, "bias") else {}
            out = self.estimator.sample(n, rng=rng, **extra)
            return np.asarray(out[0] if isinstance(out, tuple) else out)
        if bias != 1.0:
            raise ValueError(f"estimator '{self.spec.name}' has no biased sampler: bias must be 1")
        self._reseed(rng)
        out = self.estimator.sample(n)
        return np.asarray(out[0] if isinstance(out, tuple) else out)

    def score(self, X: np.ndarray) -> float:
        """Mean log-density of X under the fitted estimator."""
        return float(np.mean(self.estimator.score_samples(np.asarray(X, dtype=float))))

    def moments(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.spec.moments is None else self.spec.moments(self.estimator)

    def get_state(self) -> dict[str, np.ndarray]:
        if not self.fitted_:
            return {}
        if self.spec.get_state is not None:
            return self.spec.get_state(self.estimator)
        if hasattr(self.estimator, "get_state"):  # a plain class with its own state
            return dict(self.estimator.get_state())
        out = {}
        for key, value in vars(self.estimator).items():
            if key.endswith("_") and not key.startswith("_"):
                arr = np.asarray(value)
                if arr.dtype.kind in "biuf":
                    out[key] = arr
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        if self.spec.set_state is not None:
            self.spec.set_state(self.estimator, state)
        elif hasattr(self.estimator, "set_state"):
            self.estimator.set_state(state)
        else:
            for key, value in state.items():
                arr = np.asarray(value)
                setattr(self.estimator, key, arr.item() if arr.ndim == 0 else arr)
        self.fitted_ = True


class SklearnChains(PerReplicate):
    """R chains of one estimator; adds the held-out score the density metric uses."""

    def heldout_loglik(self, X: np.ndarray) -> np.ndarray:
        """Mean log-density of real points X (m, d) under each chain's model: (R,)."""
        return np.array([m.score(X) for m in self.models])


class MomentChains(SklearnChains):
    """Chains of an estimator with known moments: the Gaussian moment metrics apply."""

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = [m.moments() for m in self.models]
        mean = np.stack([p[0] for p in pairs])
        factor = np.stack([lower_factor((p[1] + p[1].T) / 2) for p in pairs])
        return mean, factor


class SampledChains(SklearnChains):
    """Chains of an estimator without known moments: the sample-based metrics measure them."""

    sample_metrics = True


def _build(config: SklearnConfig, *, replicates: int, real: object) -> PerReplicate:
    spec = ESTIMATORS[config.estimator]
    scored = hasattr(spec.factory, "score_samples")  # else no held-out likelihood metric
    cls = MomentChains if spec.moments is not None else SampledChains if scored else PerReplicate
    params = dict(config.params)
    return cls(lambda: SklearnModel(config.estimator, params, bias_on=config.bias_on), replicates)


def estimator_family(spec: EstimatorSpec) -> FamilySpec:
    """Register ``spec`` and return a family named after it, for a package to publish under the
    ``madloop.families`` entry point (``myest = "mypkg.madloop:family"`` with ``family =
    estimator_family(EstimatorSpec("myest", MyEstimator, ...))``). The estimator is then also
    available as ``family = "sklearn", estimator = "myest"``."""
    register_estimator(spec)
    name = spec.name
    config_cls = type(
        f"{name.title().replace('-', '')}Config",
        (SklearnConfig,),
        {
            "__annotations__": {"family": Literal[name], "estimator": Literal[name]},  # type: ignore[valid-type]
            "family": name,
            "estimator": name,
        },
    )
    return FamilySpec(name, config_cls, _build)


register_family(FamilySpec("sklearn", SklearnConfig, _build))
