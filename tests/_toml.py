"""A minimal TOML writer for tests (tomli-w is not a dependency)."""

from __future__ import annotations

import math
import re


def to_toml(cfg: dict) -> str:
    """A minimal TOML writer for generated configs (tables, arrays of tables, scalars, lists)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return (
                "nan"
                if math.isnan(v)
                else ("inf" if v > 0 else "-inf")
                if math.isinf(v)
                else repr(v)
            )
        if isinstance(v, str):
            return (
                '"'
                + "".join(
                    c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in v
                )
                + '"'
            )
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else value(k)

    lines = [
        f"{key(k)} = {value(v)}"
        for k, v in cfg.items()
        if not isinstance(v, dict) and not (k == "arms" and _table_array(v))
    ]
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"[{key(k)}]")
            lines += [f"{key(a)} = {value(b)}" for a, b in v.items()]
    if _table_array(cfg.get("arms")):
        for arm in cfg["arms"]:
            lines.append("[[arms]]")
            lines += [f"{key(a)} = {value(b)}" for a, b in arm.items()]
    return "\n".join(lines) + "\n"


def _table_array(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
