"""The family registry and the adapter from one-data-set models to R replicate chains."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Self

import numpy as np

from madloop.config import ModelConfig
from madloop.types import SYNTHETIC, Points, RealSource


class NotFittedError(RuntimeError):
    """A model was asked to sample or score before ``fit``."""


class FitFailed(RuntimeError):
    """Training diverged (NaN loss, an exploding step...): raise it from ``fit`` / ``fit_points``.

    The loop marks the generation failed with ``reason`` and stops the chains named in
    ``replicates`` (all of them when None); the other chains and arms go on. ``reason`` may map
    replicate -> reason when they differ. A family may also just leave non-finite values in its
    state: the loop checks ``get_state()`` after every fit and treats that the same way.
    """

    def __init__(
        self, reason: str | Mapping[int, str], *, replicates: Iterable[int] | None = None
    ) -> None:
        if isinstance(reason, Mapping):
            self.reasons = {int(r): str(v) for r, v in reason.items()}
            replicates = self.reasons if replicates is None else replicates
            reason = "; ".join(f"replicate {r}: {v}" for r, v in self.reasons.items())
        else:
            self.reasons = {}
        self.replicates = None if replicates is None else sorted(int(r) for r in replicates)
        self.reason = str(reason)
        super().__init__(self.reason)

    def reason_for(self, replicate: int) -> str:
        return self.reasons.get(replicate, self.reason)


def check_is_fitted(model: object, attribute: str) -> None:
    if getattr(model, attribute, None) is None:
        raise NotFittedError(f"{type(model).__name__} is not fitted yet: call fit first")


@dataclass(frozen=True)
class FamilySpec:
    """A registered family: its config class and how to build R chains of it for a real source."""

    name: str
    config: type[ModelConfig]
    build: Callable[..., Any]  # (config, *, replicates, real: RealSource) -> ChainModel
    requires: str | None = None  # optional extra that must be installed, e.g. "torch"


FAMILIES: dict[str, FamilySpec] = {}
_BUILTIN_MODULES = (
    "madloop.models.gaussian",
    "madloop.models.ddpm",
    "madloop.models.vae",
    "madloop.models.gan",
    "madloop.models.flow",
    "madloop.models.categorical",
    "madloop.models.ngram",
    "madloop.models.sklearn",
    "madloop.models.char_transformer",
)
_loaded = False


def register_family(spec: FamilySpec) -> FamilySpec:
    FAMILIES[spec.name] = spec
    return spec


def load_families() -> dict[str, FamilySpec]:
    """Import the built-in families and those installed packages publish under the
    ``madloop.families`` entry point. A config names a family; it never names code to import."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            try:
                importlib.import_module(module)
            except ImportError:  # an optional extra (torch, ...) is missing
                pass
        for ep in entry_points(group="madloop.families"):
            try:
                spec = ep.load()
                spec = spec() if callable(spec) and not isinstance(spec, FamilySpec) else spec
            except Exception as err:  # a broken plugin must not break every config
                warnings.warn(
                    f"madloop.families entry point {ep.name!r} ({ep.value}) failed to load: "
                    f"{type(err).__name__}: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            if not isinstance(spec, FamilySpec):
                warnings.warn(
                    f"madloop.families entry point {ep.name!r} gave {type(spec).__name__}, "
                    "not a FamilySpec; ignored",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            register_family(spec)
    return FAMILIES


class PerReplicate:
    """R independent chains of a model that fits one data set at a time.

    The wrapped models follow scikit-learn's shape: ``fit(X, y=None, *, rng)`` returns self and
    ``sample(n, *, bias, rng)`` returns X, or (X, y) for class-conditional models. Each replicate
    gets its own child generator, so chains never share random numbers.
    """

    def __init__(self, make_model: Callable[[], Any], replicates: int) -> None:
        self.models = [make_model() for _ in range(replicates)]

    def fit_points(self, points: Points, *, rng: np.random.Generator) -> Self:
        X = points.global_X()
        failed: dict[int, str] = {}
        for r, (model, child) in enumerate(
            zip(self.models, rng.spawn(len(self.models)), strict=True)
        ):
            y = None if points.y is None else points.y[r]
            try:
                model.fit(X[r], y, rng=child)
            except FitFailed as err:  # one chain diverged: fit the others, then report it
                failed[r] = err.reason
        if failed:
            raise FitFailed(failed)
        return self

    def sample_points(self, n: int, *, bias: float, rng: np.random.Generator) -> Points:
        xs, ys = [], []
        for model, child in zip(self.models, rng.spawn(len(self.models)), strict=True):
            out = model.sample(n, bias=bias, rng=child)
            x, y = out if isinstance(out, tuple) else (out, None)
            xs.append(np.asarray(x))
            ys.append(y)
        y = None if any(v is None for v in ys) else np.stack([np.asarray(v) for v in ys])
        return Points.tagged(np.stack(xs), source=SYNTHETIC, origin=-1, y=y)

    def get_state(self) -> dict[str, np.ndarray]:
        """Each replicate's arrays under ``r{index}/``; models provide ``get_state()`` too."""
        out = {}
        for r, model in enumerate(self.models):
            for key, value in model.get_state().items():
                out[f"r{r}/{key}"] = np.asarray(value)
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        for r, model in enumerate(self.models):
            prefix = f"r{r}/"
            model.set_state({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def build_model(config: ModelConfig, *, replicates: int, real: RealSource) -> Any:
    spec = load_families()[config.family]
    return spec.build(config, replicates=replicates, real=real)
