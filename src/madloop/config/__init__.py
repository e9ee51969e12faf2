"""Configs: sections, validation with errors in the config's own words, dotted merging, arms and
paths. The names below load lazily (PEP 562): data sources and model families import
:mod:`madloop.config.sections` to declare their tables, while :mod:`madloop.config.schema`
imports their registries to validate, so this package must not import the schema eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from madloop.config.errors import ConfigError, format_errors, suggest
from madloop.config.merge import deep_merge, nest_dotted
from madloop.config.sections import (
    GUIDANCE,
    LATENT_SCALE,
    TEMPERATURE,
    TRUNCATION,
    VARIANCE_SCALE,
    BiasKnob,
    DataConfig,
    LoopConfig,
    ModelConfig,
    RunPath,
    SamplingConfig,
    Section,
    SizeField,
    SweepConfig,
    TrackingConfig,
    check_name,
    check_run_path,
    flatten,
)

_LAZY = {
    "ExperimentConfig": "madloop.config.schema",
    "TOP_LEVEL": "madloop.config.schema",
    "validate": "madloop.config.schema",
    "validate_section": "madloop.config.schema",
    "regime_configs": "madloop.config.schema",
    "make_regime": "madloop.config.schema",
    "sizes": "madloop.config.schema",
    "Arm": "madloop.config.arms",
    "resolve_arms": "madloop.config.arms",
    "load_config": "madloop.config.arms",
    "parse": "madloop.config.arms",
    "resolve_run_path": "madloop.config.paths",
}

if TYPE_CHECKING:
    from madloop.config.arms import Arm, load_config, parse, resolve_arms
    from madloop.config.paths import resolve_run_path
    from madloop.config.schema import (
        TOP_LEVEL,
        ExperimentConfig,
        make_regime,
        regime_configs,
        sizes,
        validate,
        validate_section,
    )

__all__ = [
    "GUIDANCE",
    "LATENT_SCALE",
    "TEMPERATURE",
    "TOP_LEVEL",
    "TRUNCATION",
    "VARIANCE_SCALE",
    "Arm",
    "BiasKnob",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "LoopConfig",
    "ModelConfig",
    "RunPath",
    "SamplingConfig",
    "Section",
    "SizeField",
    "SweepConfig",
    "TrackingConfig",
    "check_name",
    "check_run_path",
    "deep_merge",
    "flatten",
    "format_errors",
    "load_config",
    "make_regime",
    "nest_dotted",
    "parse",
    "regime_configs",
    "resolve_arms",
    "resolve_run_path",
    "sizes",
    "suggest",
    "validate",
    "validate_section",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'madloop.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
