"""Dotted keys and merging: ``{"sampling.bias": 0.8}`` is ``{"sampling": {"bias": 0.8}}``."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def nest_dotted(table: Mapping[str, Any]) -> dict[str, Any]:
    """{"sampling.bias": 0.8} -> {"sampling": {"bias": 0.8}} (TOML dotted keys already nest)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):  # "loop.x" next to a non-table "loop"
                node[p] = {}
            node = node[p]
        if isinstance(value, Mapping):
            value = nest_dotted(value)
        if isinstance(node.get(parts[-1]), dict) and isinstance(value, dict):
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out

