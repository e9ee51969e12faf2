"""Base classes of the config sections. Each data source, model family and regime registers its own
subclass, so a new one brings its own validated fields without touching the experiment schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """A config table: unknown keys are errors (the message names the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    source: str


class ModelConfig(Section):
    family: str

    def bias_problem(self, bias: float) -> str | None:
        """Why ``sampling.bias`` is invalid for this family, or None. Default: λ in (0, 1]."""
        if not 0.0 < bias <= 1.0:
            return f"must be in (0, 1] for family '{self.family}', got {bias}"
        return None


class SamplingConfig(Section):
    bias: float = 1.0


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class SweepConfig(Section):
    """The ``[sweep]`` table: ``grid`` maps dotted config keys to lists of values (their product
    is the set of points) and ``seeds`` repeats every point that many times. Which keys exist is
    checked by :mod:`madloop.sweep` against the resolved config."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: int = Field(1, ge=1, le=100_000)

    @field_validator("grid", mode="before")
    @classmethod
    def _lists(cls, grid: Any) -> Any:
        if not isinstance(grid, Mapping):
            raise ValueError(f"must be a table of dotted config keys -> lists, got {grid!r}")
        flat = _flatten(grid)  # TOML nests unquoted dotted keys: sampling.bias = [...]
        problems = []
        for key, values in flat.items():
            if not isinstance(values, list):
                problems.append(
                    f"'{key}' must be a list of values, got {values!r} (write [{values!r}])"
                )
            elif not values:
                problems.append(f"'{key}' is an empty list; give it at least one value")
            elif len({repr(v) for v in values}) < len(values):
                problems.append(f"'{key}' lists a value twice: {values!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return flat
