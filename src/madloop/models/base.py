"""The family registry and the adapter from one-data-set models to R replicate chains."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from madloop.config import ModelConfig
from madloop.registry import Registry
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


#: the model families, by name: the built-in ones and those installed packages publish under the
#: ``madloop.families`` entry point (a FamilySpec, or a callable returning one)
FAMILIES: Registry[FamilySpec] = Registry(
    "model family",
    builtins=(
    "madloop.models.gaussian",
    "madloop.models.regression",  # before the torch families: its configs never import torch
    "madloop.models.ddpm",
    "madloop.models.vae",
    "madloop.models.gan",
    "madloop.models.flow",
    "madloop.models.categorical",
    "madloop.models.ngram",
    "madloop.models.sklearn",
    "madloop.models.char_transformer",
),
    entry_point="madloop.families",
    check=lambda entry: isinstance(entry, FamilySpec),
)
register_family = FAMILIES.register


def load_families() -> Registry[FamilySpec]:
    """Import the built-in families and the installed plug-ins (once). A config names a family;
    it never names code to import."""
    return FAMILIES.load()


class PerReplicate:
    """R independent chains of a model that fits one data set at a time.

    The wrapped models follow scikit-learn's shape: ``fit(X, y=None, *, rng)`` returns self and
    ``sample(n, *, bias, rng)`` returns X, or (X, y) for class-conditional models. Each replicate
    gets its own child generator, so chains never share random numbers.
    """

    def __init__(self, make_model: Callable[[], Any], replicates: int) -> None:
        self.models = [make_model() for _ in range(replicates)]

    def fit_points(
        self, points: Points, *, rng: np.random.Generator, keep: np.ndarray | None = None
    ) -> Self:
        """Fit each chain on its replicate's rows; ``keep`` (R, m) narrows them per replicate
        (``loop.preprocess`` leaves chains with different numbers of points)."""
        X = points.global_X()
        failed: dict[int, str] = {}
        for r, (model, child) in enumerate(
            zip(self.models, rng.spawn(len(self.models)), strict=True)
        ):
            y = None if points.y is None else points.y[r]
            rows = slice(None) if keep is None else keep[r]
            try:
                model.fit(X[r][rows], None if y is None else y[rows], rng=child)
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


def build_model(
    config: ModelConfig, *, replicates: int, real: RealSource, top_k: int | None = None
) -> Any:
    """R chains of ``config``'s family. ``top_k`` (``sampling.top_k``) reaches only a family
    that declares ``sampling_top_k`` (validation refuses it for the others)."""
    spec = load_families()[config.family]
    if top_k:
        return spec.build(config, replicates=replicates, real=real, top_k=top_k)
    return spec.build(config, replicates=replicates, real=real)
