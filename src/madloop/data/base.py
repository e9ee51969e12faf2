"""The registry of real-data sources."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.config import DataConfig


@dataclass(frozen=True)
class DataSpec:
    name: str
    config: type[DataConfig]
    build: Callable[..., Any]  # (config, *, rng: Generator) -> RealSource


DATA_SOURCES: dict[str, DataSpec] = {}
_BUILTIN_MODULES = (
    "madloop.data.gaussian",
    "madloop.data.toy2d",
    "madloop.data.images",
    "madloop.data.text",
    "madloop.data.categorical",
)
_loaded = False


def register_source(spec: DataSpec) -> DataSpec:
    DATA_SOURCES[spec.name] = spec
    return spec


def load_sources() -> dict[str, DataSpec]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            try:
                importlib.import_module(module)
            except ImportError:
                pass
    return DATA_SOURCES


def build_source(config: DataConfig, *, rng: np.random.Generator) -> Any:
    return load_sources()[config.source].build(config, rng=rng)
