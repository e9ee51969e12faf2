"""Which engine runs an arm, and how the built-in one is built.

An arm's regime names its engine (``Regime.engine``): ``"loop"``, the single-chain
:class:`madloop.loop.Loop`, for every regime that composes a training set per chain, or another
registered here (the web pool's lineages, :mod:`madloop.pool.engine`, registered when the
``web-pool`` regime loads). One table, no probing of what a regime can do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from madloop.capabilities import exact_mode
from madloop.config import Arm, ConfigError, ExperimentConfig, make_regime
from madloop.data import build_source
from madloop.loop import Engine, Loop
from madloop.models.base import build_model
from madloop.preprocess import Preprocessor
from madloop.regimes import load_regimes
from madloop.registry import Registry
from madloop.synthetic import build_synthetic

DATA_STREAM = 0  # the seed-tree branch for the real data's own randomness (e.g. a random Σ_0)


def real_source(cfg: ExperimentConfig) -> Any:
    """An arm's real data, from its own branch of the seed tree (``DATA_STREAM``)."""
    seed = np.random.SeedSequence(cfg.seed, spawn_key=(DATA_STREAM,))
    return build_source(cfg.data, rng=np.random.default_rng(seed))


def build_loop(arm: Arm) -> Loop:
    """The single-chain engine of an arm: R replicate chains of its family on its regime."""
    cfg = arm.config
    real = real_source(cfg)
    model = build_model(cfg.model, replicates=cfg.replicates, real=real, top_k=cfg.sampling.top_k)
    regime = make_regime(cfg.loop)
    synthetic = build_synthetic(cfg.loop, cfg.data.source)
    why = synthetic.check(model, real) if synthetic is not None else None
    if why:
        raise ConfigError([f"loop.curation.reward: {why}"])
    return Loop(
        regime,
        model,
        real,
        bias=cfg.sampling.bias,
        replicates=cfg.replicates,
        exact=exact_mode(cfg.model, regime, model, real),
        seed=cfg.seed,
        stream=arm.stream,
        label=arm.name,
        real_weight=getattr(cfg.loop, "real_weight", None),
        synthetic=synthetic,
        preprocess=build_preprocess(cfg, real),
    )


def build_preprocess(cfg: ExperimentConfig, real: Any) -> Preprocessor | None:
    """The arm's ``loop.preprocess`` steps (None when it has none: the loop is unchanged)."""
    steps = cfg.loop.preprocess
    if not steps:
        return None
    size = cfg.model.min_train_size
    return Preprocessor(steps, real, min_train_size=size, family=cfg.model.family)


#: regime.engine -> what builds an arm's engine
ENGINES: Registry[Callable[[Arm], Engine]] = Registry("engine")
ENGINES["loop"] = build_loop


def register_engine(name: str, build: Callable[[Arm], Engine]) -> None:
    ENGINES[name] = build


def build_engine(arm: Arm) -> Engine:
    """The engine that runs ``arm``: the one its regime names (``Regime.engine``)."""
    return ENGINES[load_regimes()[arm.config.loop.regime].engine](arm)
