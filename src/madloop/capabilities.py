"""What a model or a data source can do, as runtime-checkable protocols, and the one place that
decides whether an arm runs in ``exact`` mode.

The loop never asks a family for its name: it asks whether the object satisfies a protocol.
- :class:`SufficientStatistics`: the model fits on and samples Gaussian sufficient statistics
  (count, mean, scatter factor), so the loop can skip drawing points;
- :class:`RealStatistics`: the real source draws such statistics too;
- :class:`Moments`: ``moments() -> (mean, factor)`` of the fitted law (exact Gaussian metrics, the
  web pool's exact draws);
- :class:`Checkpointable`: ``get_state`` / ``set_state`` of arrays (checkpoints, resume,
  non-finite-state detection);
- :class:`RendersSamples`: the source renders a gallery of samples (image grid, scatter, text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class SufficientStatistics(Protocol):
    def fit_stats(self, stats: Any) -> Any: ...

    def sample_stats(self, n: int, *, bias: float, rng: Any) -> Any: ...


@runtime_checkable
class RealStatistics(Protocol):
    def sample_stats(self, n: int, *, replicates: int, rng: Any) -> Any: ...


@runtime_checkable
class Moments(Protocol):
    def moments(self) -> tuple[Any, Any]: ...


@runtime_checkable
class Checkpointable(Protocol):
    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> Any: ...


@runtime_checkable
class RendersSamples(Protocol):
    def render_samples(self, points: Any, path_stem: Path) -> list[Path]: ...


def satisfies(obj: Any, protocol: type) -> bool:
    """Whether ``obj`` has every method of ``protocol``, checked on the object itself.

    Used instead of ``isinstance(obj, protocol)``: a runtime-checkable protocol is an ABC, and
    ABCs cache a class's answer, so a class that gains or loses a method later (a plug-in patched
    at run time, a test's monkeypatch) would keep the stale answer."""
    names = [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
    return all(callable(getattr(obj, n, None)) for n in names)


def exact_requested(model_config: Any) -> bool:
    """Whether ``[model]`` asks for the exact mode (families that have one declare a ``mode``
    field, see :meth:`madloop.config.ModelConfig.requested_mode`)."""
    return model_config.requested_mode() == "exact"


def exact_capable(regime: Any, model: Any = None, real: Any = None) -> bool:
    """Whether the regime's law is a function of whole batches (``regime.exact``) and, when
    given, the built model and real source can draw and fit sufficient statistics."""
    if not getattr(regime, "exact", False):
        return False
    if model is not None and not satisfies(model, SufficientStatistics):
        return False
    return real is None or satisfies(real, RealStatistics)


def exact_mode(model_config: Any, regime: Any, model: Any = None, real: Any = None) -> bool:
    """Whether an arm runs on sufficient statistics: the config asks for it and
    :func:`exact_capable` holds. The one place this is decided for single-chain arms."""
    return exact_requested(model_config) and exact_capable(regime, model, real)


@runtime_checkable
class LogProb(Protocol):
    """``log_prob(X) -> (n,)`` log-densities (the held-out likelihood metric)."""

    def log_prob(self, X: Any) -> Any: ...


@runtime_checkable
class ScoreSamples(Protocol):
    """scikit-learn's spelling of :class:`LogProb`."""

    def score_samples(self, X: Any) -> Any: ...
