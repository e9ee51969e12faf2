"""Your own model in madloop: the public :class:`Model` contract and :func:`register_family`.

A model is any object with ``fit(X, y=None, *, rng) -> self`` and ``sample(n, *, bias, rng) -> X``
(or ``(X, y)``), drawing every random number from ``rng`` (a ``numpy.random.Generator``). What
else it can do is discovered by protocol (:mod:`madloop.capabilities`): ``get_state`` /
``set_state`` (checkpoints and resume), ``log_prob`` / ``score_samples`` (held-out likelihood),
``moments`` (exact Gaussian metrics). Every model whose samples are vectors gets the sample-based
metrics (:mod:`madloop.metrics.samples`).

:func:`register_family` turns a class (or any callable) into a family: its keyword arguments
become the ``[model]`` table, validated from its signature and type hints. The registrations
made here travel to sweep workers by value (:func:`registrations_payload`,
:func:`install_registrations`), and ``madloop run CONFIG --import FILE`` imports a file that
registers them (:func:`import_user_code`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import sysconfig
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import TypeAdapter, create_model

from madloop.capabilities import Checkpointable, LogProb, Moments, ScoreSamples, satisfies
from madloop.config import ConfigError, ModelConfig
from madloop.linalg import lower_factor
from madloop.models.base import FAMILIES, FamilySpec, FitFailed, PerReplicate, load_families


@runtime_checkable
class Model(Protocol):
    """What madloop needs of a model: fit one data set, sample from the fit, with ``rng``."""

    def fit(self, X: Any, y: Any = None, *, rng: np.random.Generator) -> Any: ...

    def sample(self, n: int, *, bias: float, rng: np.random.Generator) -> Any: ...


#: ``[model]`` keys madloop keeps for itself (never passed to the factory)
RESERVED = ("family", "check_rng")
#: how many points the reproducibility guard fits and samples
GUARD_POINTS = 64

#: the families registered through :func:`register_family`: name -> (factory, options)
USER_FAMILIES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
_installed: dict[str, str] = {}  # name -> digest of the payload it came from (in workers)
_by_value_modules: set[str] = set()  # modules imported from a file path (--import FILE)


# -- the [model] table of a factory ----------------------------------------------------------------
def _hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable string annotations: validate those fields as Any
        return {}


def _checked_type(annotation: Any) -> Any:
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return Any
    try:
        TypeAdapter(annotation)  # a type pydantic cannot validate (a tensor...) is taken as is
    except Exception:
        return Any
    return annotation


def config_class(name: str, factory: Callable[..., Any], min_train_size: int) -> type[ModelConfig]:
    """A ``ModelConfig`` whose fields are ``factory``'s keyword arguments (extra keys forbidden)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError) as err:
        raise TypeError(f"register_family({name!r}): cannot read the factory's signature") from err
    hints = _hints(factory)
    fields: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            raise TypeError(
                f"register_family({name!r}): parameter {p.name!r} is positional-only; madloop "
                "passes the [model] table as keyword arguments"
            )
        if p.name in RESERVED:
            raise TypeError(
                f"register_family({name!r}): parameter {p.name!r} clashes with the [model] key "
                f"madloop keeps ({', '.join(RESERVED)}); rename it"
            )
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (_checked_type(hints.get(p.name, p.annotation)), default)
    cls = create_model(  # type: ignore[call-overload]
        f"{name.title().replace('-', '').replace('_', '')}Config",
        __base__=ModelConfig,
        family=(Literal[name], name),  # type: ignore[valid-type]
        check_rng=(bool, True),
        **fields,
    )
    cls.min_train_size = min_train_size
    return cls


# -- R chains of one-data-set models ---------------------------------------------------------------
class UserChains:
    """R independent instances of a registered model, one per replicate chain (as
    :class:`~madloop.models.base.PerReplicate`); each gets its own child of the loop's rng."""

    #: the sample-based metric suite measures these (samples are vectors for most models)
    sample_metrics = True
    fit_points = PerReplicate.fit_points
    sample_points = PerReplicate.sample_points

    def __init__(self, models: list[Any]) -> None:
        self.models = models


class _State:
    get_state = PerReplicate.get_state
    set_state = PerReplicate.set_state


class _Likelihood:
    models: list[Any]

    def heldout_loglik(self, X: np.ndarray) -> np.ndarray:
        """Mean log-density of real points X under each chain's model: (R,)."""
        out = []
        for m in self.models:
            score = m.log_prob if satisfies(m, LogProb) else m.score_samples
            out.append(float(np.mean(np.asarray(score(X), dtype=float))))
        return np.array(out)


class _Moments:
    models: list[Any]

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Each chain's mean and lower covariance factor, from the model's ``(mean, cov)``."""
        pairs = [m.moments() for m in self.models]
        mean = np.stack([np.asarray(p[0], dtype=float) for p in pairs])
        covs = [np.atleast_2d(np.asarray(p[1], dtype=float)) for p in pairs]
        return mean, np.stack([lower_factor((c + c.T) / 2) for c in covs])


_CHAIN_CLASSES: dict[tuple[bool, bool, bool], type] = {}


def chains_for(models: list[Any]) -> UserChains:
    """The chain object with exactly the capabilities the model has (checked by protocol)."""
    probe = models[0]
    caps = (
        satisfies(probe, Checkpointable),
        satisfies(probe, LogProb) or satisfies(probe, ScoreSamples),
        satisfies(probe, Moments),
    )
    cls = _CHAIN_CLASSES.get(caps)
    if cls is None:
        mixins = [m for m, on in zip((_State, _Likelihood, _Moments), caps, strict=True) if on]
        cls = type("UserChains", (UserChains, *mixins), {"__module__": __name__})
        _CHAIN_CLASSES[caps] = cls
    return cls(models)


# -- the reproducibility guard ---------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    except TypeError:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def check_rng(name: str, make: Callable[[], Any], real: Any, *, strict: bool = True) -> None:
    """Fit and sample a small batch twice with the same seeds; if the draws differ, the model
    takes randomness from somewhere other than ``rng``: a ConfigError (a warning if not strict)."""
    points = real.sample_points(GUARD_POINTS, replicates=1, rng=np.random.default_rng(0))
    X = points.global_X()[0]
    y = None if points.y is None else points.y[0]
    draws = []
    for _ in range(2):
        model = make()
        try:
            model.fit(X, y, rng=np.random.default_rng(1))
        except FitFailed:  # cannot fit this small batch: the loop reports its own failures
            return
        draws.append(model.sample(16, bias=1.0, rng=np.random.default_rng(2)))
    if _same(*draws):
        return
    message = (
        f"model.family: '{name}' ignores rng: two fits and samples with the same seed drew "
        "different values, so runs would not repeat. Draw every random number from the rng "
        "argument of fit() and sample() (rng.normal(...), rng.choice(...); for torch, a "
        "torch.Generator seeded with int(rng.integers(2**63))), not np.random.* or a "
        "default_rng() of the model's own; or set model.check_rng = false to run anyway"
    )
    if strict:
        raise ConfigError([message])
    warnings.warn(message.replace("; or set", "; ran anyway because of"), RuntimeWarning, 3)


# -- registering -----------------------------------------------------------------------------------
def _builder(name: str, factory: Callable[..., Any]) -> Callable[..., UserChains]:
    def build(config: ModelConfig, *, replicates: int, real: Any) -> UserChains:
        kwargs = config.model_dump(exclude=set(RESERVED))

        def make() -> Any:
            return factory(**kwargs)

        models = [make() for _ in range(replicates)]
        probe = models[0]
        if not isinstance(probe, Model):
            raise ConfigError(
                [
                    f"model.family: '{name}' made a {type(probe).__name__}, which needs "
                    "fit(X, y=None, *, rng) and sample(n, *, bias, rng) (see madloop.Model)"
                ]
            )
        check_rng(name, make, real, strict=bool(getattr(config, "check_rng", True)))
        return chains_for(models)

    return build


def register_family(
    name: str | FamilySpec, factory: Callable[..., Any] | None = None, *, min_train_size: int = 2
) -> FamilySpec:
    """Make ``factory`` (a class, or a callable returning a :class:`Model`) the family ``name``.

    The ``[model]`` table holds ``family = name`` and the factory's keyword arguments, validated
    from its signature and type hints (an unknown key is a config error naming the nearest valid
    one); ``check_rng = false`` turns the reproducibility guard's error into a warning. Each of
    the R replicate chains gets its own instance. ``min_train_size``: the fewest points a fit
    accepts (checked for every generation of the loop). Returns the registered FamilySpec.
    A :class:`~madloop.models.base.FamilySpec` alone is registered as it is.
    """
    if isinstance(name, FamilySpec) and factory is None:  # a package's full spec
        return FAMILIES.register(name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_family: name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_family({name!r}): factory must be a class or callable")
    families = load_families()
    if name in families and name not in USER_FAMILIES:
        raise ValueError(
            f"register_family: '{name}' is a built-in or installed family; pick another name"
        )
    spec = FamilySpec(name, config_class(name, factory, min_train_size), _builder(name, factory))
    families.register(spec)
    USER_FAMILIES[name] = (factory, {"min_train_size": min_train_size})
    return spec


# -- shipping registrations to workers -------------------------------------------------------------
def _by_value(module_name: str) -> bool:
    """Whether a factory from this module must travel by value: it is not an installed package
    a worker could import (``__main__``, a notebook, a file given to --import, a test module)."""
    if module_name == "__main__" or module_name in _by_value_modules:
        return True
    if module_name.split(".")[0] == "madloop":
        return False
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if file is None:
        return False
    installed = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    return not any(Path(file).resolve().is_relative_to(Path(p).resolve()) for p in installed)


def registrations_payload() -> bytes | None:
    """The user-registered families as bytes (cloudpickle; factories outside installed packages
    by value), for a sweep task to register in its worker; None when there are none."""
    if not USER_FAMILIES:
        return None
    import cloudpickle

    modules = {getattr(f, "__module__", "") for f, _ in USER_FAMILIES.values()} - {"__main__", ""}
    chosen = [sys.modules[m] for m in modules if m in sys.modules and _by_value(m)]
    for module in chosen:
        cloudpickle.register_pickle_by_value(module)
    try:
        entries = [(n, f, opts) for n, (f, opts) in USER_FAMILIES.items()]
        return cloudpickle.dumps(entries)
    finally:
        for module in chosen:
            cloudpickle.unregister_pickle_by_value(module)


def install_registrations(payload: bytes | None) -> None:
    """Register the families of ``payload`` in this (worker) process, unless this process
    registered them itself (the serial executor) or already installed this very payload.

    ``payload`` only ever travels in memory, from the sweep's own driver to its workers inside
    the task the executor already pickles; it is never written to or read from a file, so no
    file a user is handed can reach this ``loads``."""
    if payload is None:
        return
    digest = hashlib.sha256(payload).hexdigest()
    import cloudpickle

    for name, factory, opts in cloudpickle.loads(payload):
        if name in USER_FAMILIES and name not in _installed:
            continue  # registered in this process by the user
        if _installed.get(name) != digest:
            register_family(name, factory, **opts)
            _installed[name] = digest


# -- --import -------------------------------------------------------------------------------------
def import_user_code(target: str) -> ModuleType:
    """Import a file (``path/to/models.py``) or a module (``mypkg.models``) that registers
    families. A file is imported under a name of its own and its factories travel to workers by
    value. Raises ConfigError when it cannot be found or fails to import."""
    path = Path(target)
    try:
        if path.suffix == ".py" or path.exists():
            if not path.is_file():
                raise ConfigError([f"--import: no such file {target!r}"])
            digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
            name = f"madloop_user_{path.stem}_{digest}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ConfigError([f"--import: cannot import {target!r} as Python"])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            _by_value_modules.add(name)
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(target)
    except ConfigError:
        raise
    except ModuleNotFoundError as err:
        raise ConfigError([f"--import: no file or module {target!r} ({err})"]) from None
    except Exception as err:
        raise ConfigError([f"--import: {target} failed: {type(err).__name__}: {err}"]) from None


__all__ = ["FAMILIES", "Model", "register_family", "import_user_code"]
