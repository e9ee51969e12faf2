"""Base classes of the config sections. Each data source, model family and regime registers its own
subclass, so a new one brings its own validated fields without touching the experiment schema."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """A config table: unknown keys are errors (the message names the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    source: str


class ModelConfig(Section):
    family: str
    #: the fewest training points a fit accepts (validated for every generation of the loop)
    min_train_size: ClassVar[int] = 1

    def requested_mode(self) -> str:
        """``"exact"`` or ``"sample"``. A family with an exact (sufficient-statistics) mode
        declares a ``mode`` field; every other family samples points."""
        return str(self.__dict__.get("mode", "sample"))

    def state_size(self, event_size: int) -> int | None:
        """Floats of learned state per replicate, for ``madloop run --dry-run``; None: unknown."""
        return None

    def bias_problem(self, bias: float) -> str | None:
        """Why ``sampling.bias`` is invalid for this family, or None. Default: λ in (0, 1]."""
        if not 0.0 < bias <= 1.0:
            return f"must be in (0, 1] for family '{self.family}', got {bias}"
        return None


class SamplingConfig(Section):
    bias: float = 1.0


#: a size per generation: an int, or a list whose last value repeats
SizeField = int | list[int]


class LoopConfig(Section):
    """The ``[loop]`` table's common fields; a regime with more registers a subclass."""

    regime: str = "fully-synthetic"
    real_size: SizeField = 0
    synthetic_size: SizeField = 100
    initial_real_size: int | None = Field(None, ge=1)


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class SweepConfig(Section):
    """The ``[sweep]`` table: ``grid`` maps dotted config keys to lists of values (their product
    is the set of points) and ``seeds`` repeats every point that many times. Which keys exist is
    checked by :mod:`madloop.sweeps` against the resolved config."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: int = Field(1, ge=1, le=100_000)

    @field_validator("grid", mode="before")
    @classmethod
    def _lists(cls, grid: Any) -> Any:
        if not isinstance(grid, Mapping):
            raise ValueError(f"must be a table of dotted config keys -> lists, got {grid!r}")
        flat = flatten(grid)  # TOML nests unquoted dotted keys: sampling.bias = [...]
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


# -- names and paths that come from a config file --------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: str) -> str:
    """A run or arm name: it becomes part of file names, so no path separators or control
    characters, no leading dot or space, at most 100 characters."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 100:
        raise ValueError(f"must be at most 100 characters (it has {len(value)})")
    if "/" in value or "\\" in value or _CONTROL.search(value):
        raise ValueError("must not contain '/', '\\' or control characters")
    if value[0] in ". ":
        raise ValueError("must not start with '.' or a space")
    return value


def check_run_path(value: str) -> str:
    """A path written in a config file: relative, and inside the run directory once joined to it.

    A config handed to you must not read or write elsewhere (``/etc/...``, ``~/.ssh``,
    ``../../x``). Paths outside the run directory are given on the command line instead, where
    the user typed them. Use the :data:`RunPath` type for such fields and
    :func:`madloop.config.resolve_run_path` to open them (it also refuses symlinks that lead
    out of the run directory).
    """
    text = str(value)
    if not text or "\x00" in text:
        raise ValueError("must be a non-empty path without NUL characters")
    posix = text.replace("\\", "/")
    if posix.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", posix):
        raise ValueError(
            "must be a relative path inside the run directory; give a path outside it on the "
            "command line"
        )
    if ".." in PurePosixPath(posix).parts:
        raise ValueError(
            "must stay inside the run directory ('..' is not allowed); give a path outside it "
            "on the command line"
        )
    return text


#: a config field holding a path: relative, inside the run directory (see :func:`check_run_path`)
RunPath = Annotated[str, AfterValidator(check_run_path)]
