"""The registry of real-data sources."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from madloop.config import DataConfig
from madloop.registry import Registry


@dataclass(frozen=True)
class DataSpec:
    name: str
    config: type[DataConfig]
    build: Callable[..., Any]  # (config, *, rng: Generator) -> RealSource


#: the real-data sources, by name
DATA_SOURCES: Registry[DataSpec] = Registry("data source", builtins=(
    "madloop.data.gaussian",
    "madloop.data.regression",  # before the torch families: its configs never import torch
    "madloop.data.toy2d",
    "madloop.data.images",
    "madloop.data.text",
    "madloop.data.categorical",
))
register_source = DATA_SOURCES.register


def load_sources() -> Registry[DataSpec]:
    """Import the built-in sources (once; one whose optional extra is missing is left out)."""
    return DATA_SOURCES.load()


def build_source(config: DataConfig, *, rng: np.random.Generator) -> Any:
    return load_sources()[config.source].build(config, rng=rng)
