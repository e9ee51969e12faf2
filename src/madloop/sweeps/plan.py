"""Planning a sweep: the grid x seeds of a config's ``[sweep]`` table as validated tasks, each with
a seed derived from what it is (see :mod:`madloop.sweeps`)."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

from madloop.config import (
    TOP_LEVEL,
    ConfigError,
    deep_merge,
    flatten,
    load_config,
    nest_dotted,
    regime_configs,
    resolve_arms,
)
from madloop.config.arms import own_bias
from madloop.config.sections import NATIVE_KEYS

#: top-level keys a grid may set besides the tables' fields (seeds come from ``seeds = K``)
SWEEPABLE_TOP = ("generations", "replicates", "include_base")
TABLES = ("data", "model", "sampling", "loop")
MAX_LISTED = 20  # invalid points listed by name before "... and N more"

METRIC_COLUMNS = ["arm", "generation", "replicate", "metric", "value"]
THEORY_COLUMNS = ["arm", "generation", "metric", "theory"]


# -- tasks ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Task:
    """One point of the grid with one seed index; ``config`` is the raw config the task runs."""

    id: str  # its partition path: "sampling.bias=0.9/loop.real_size=10/seed=0"
    point: dict[str, Any]  # swept key -> value, in grid order
    seed: int  # seed index, 0..seeds-1
    task_seed: int  # the config seed this task runs with
    config: dict[str, Any]
    #: where the task checkpoints each generation while it runs (set by :func:`sweep`): a sweep
    #: killed mid-task continues the task from there, not from scratch
    checkpoints: str | None = None
    #: the user-registered families (madloop.register_family), pickled by value for a worker
    #: that lacks them (a notebook's or a script's ``__main__``); set by :func:`sweep`
    families: bytes | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.point.items()) or "(no grid)"


@dataclass
class SweepPlan:
    """A validated sweep: its base config, grid, seeds and tasks in grid order."""

    name: str
    seed: int
    raw: dict[str, Any]  # the config as given (with its [sweep] table)
    grid: dict[str, list[Any]]
    seeds: int
    tasks: list[Task]
    warnings: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return list(self.grid)


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _segment(value: Any) -> str:
    """A value as a hive partition segment that DuckDB, pyarrow and polars parse back."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:  # a list (a per-generation size schedule, say): its JSON text
        text = json.dumps(value, separators=(",", ":"))
    return quote(text, safe=".-_+")


def task_seed(study_seed: int, point: Mapping[str, Any], seed_index: int) -> int:
    """The config seed of a task: a function of the study seed, the point and the seed index.

    The point is hashed with its keys sorted, so reordering the grid's keys or values, or adding
    a value, never changes an existing task's numbers.
    """
    canonical = json.dumps(sorted(point.items()), separators=(",", ":"), default=str)
    digest = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "little")
    seq = np.random.SeedSequence(study_seed, spawn_key=(digest, seed_index))
    return int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1))  # a config seed is < 2**63


def _flat_grid(raw: Mapping[str, Any]) -> tuple[dict[str, list[Any]], int]:
    table = raw.get("sweep") or {}
    grid = flatten(table.get("grid", {}) or {}) if isinstance(table, Mapping) else {}
    return grid, int(table.get("seeds", 1)) if isinstance(table, Mapping) else 1


def _field_names(raw: Mapping[str, Any], table: str, grid: Mapping[str, list[Any]]) -> set[str]:
    """Fields the ``[table]`` accepts for every choice of family/source/regime the sweep uses."""
    from madloop.data import load_sources
    from madloop.models.base import load_families

    registry, selector, default = {
        "data": (load_sources(), "source", None),
        "model": (load_families(), "family", None),
        "loop": (regime_configs(), "regime", "fully-synthetic"),
    }.get(table, (None, None, None))
    if registry is None:
        from madloop.config.sections import SamplingInput

        return set(SamplingInput.model_fields) - {"knob"}
    choices = {c for c in grid.get(f"{table}.{selector}", []) if isinstance(c, str)}
    base = (raw.get(table) or {}).get(selector, default)
    choices |= {base} if base is not None else set()
    names: set[str] = set()
    for choice in choices:
        spec = registry.get(choice)
        if spec is not None:
            cls = spec.config if hasattr(spec, "config") else spec
            names |= set(cls.model_fields)
    return names


def _key_problems(raw: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> list[str]:
    problems = []
    for key in grid:
        head, _, rest = key.partition(".")
        where = f"sweep.grid.{key}"
        if head in ("seed", "arms", "name", "sweep"):
            fix = {"seed": "use `seeds = K` in [sweep]"}.get(head, "it cannot vary in a sweep")
            problems.append(f"{where}: '{head}' cannot be swept ({fix})")
        elif head in TABLES:
            fields = _field_names(nest_dotted(raw), head, grid)
            if not rest:
                problems.append(f"{where}: name a field of [{head}], e.g. '{head}.<field>'")
            elif fields and rest.split(".")[0] not in fields:
                match = difflib.get_close_matches(rest, sorted(fields), n=1, cutoff=0.5)
                hint = f"; did you mean '{head}.{match[0]}'?" if match else ""
                problems.append(
                    f"{where}: not a config key{hint} (fields of [{head}]: "
                    f"{', '.join(sorted(fields))})"
                )
        elif head not in SWEEPABLE_TOP or rest:
            options = [*SWEEPABLE_TOP, *(f"{t}.<field>" for t in TABLES)]
            match = difflib.get_close_matches(key, [*SWEEPABLE_TOP, *TOP_LEVEL], n=1, cutoff=0.6)
            hint = f"; did you mean '{match[0]}'?" if match else ""
            problems.append(f"{where}: not a config key{hint} (sweepable: {', '.join(options)})")
    return problems


def plan(config: Any) -> SweepPlan:
    """Expand and validate a sweep: every grid key must name a config field, and every point's
    config (all its arms) must validate; invalid points are listed by name. Nothing runs.

    ``config``: a TOML path or a raw config dict with a ``[sweep]`` table (without one, the sweep
    is the base config alone, ``seeds = 1``).
    """
    raw = load_config(config)
    base_raw = {k: v for k, v in raw.items() if k != "sweep"}
    try:  # the top level and the [sweep] table itself (types, empty lists, unknown keys)
        base, _ = _parse_base(raw)
    except ConfigError as err:
        # a bad grid value makes the base invalid only through [sweep]; report those first
        sweep_problems = [p for p in err.problems if p.startswith("sweep")]
        if sweep_problems:
            raise ConfigError(sweep_problems) from None
        base = None
    grid, seeds = _flat_grid(raw)
    problems = _key_problems(raw, grid)
    if problems:
        raise ConfigError(problems)
    study_seed = int(raw.get("seed", 0)) if base is None else base.seed
    name = str(raw.get("name", "experiment")) if base is None else base.name
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    tasks: list[Task] = []
    invalid: list[str] = []
    warnings: list[str] = []
    for point in points:
        point_raw = own_bias(  # a swept bias (any form) replaces the base's
            deep_merge(nest_dotted(base_raw), nest_dotted(point)), base_raw, nest_dotted(point)
        )
        for section, key in (("model", "family"), ("data", "source")):
            # a swept family/source drops the base's fields that belong to the old one
            swept = point.get(f"{section}.{key}")
            if swept is not None and swept != (base_raw.get(section) or {}).get(key):
                point_raw[section] = nest_dotted(point)[section]
        label = ", ".join(f"{k}={_show(v)}" for k, v in point.items())
        try:
            arms = resolve_arms(point_raw)
        except ConfigError as err:
            invalid.extend(f"sweep point ({label}): {p}" for p in err.problems)
            continue
        for arm in arms[1:] if arms[0].name == "base" else arms:
            for key, value in point.items():
                if _swept_value(arm, key, value) != value:
                    warnings.append(
                        f"arm '{arm.name}' overrides swept key {key}: it runs with its own value"
                    )
        for s in range(seeds):
            seed = task_seed(study_seed, point, s)
            tid = "/".join(
                [*(f"{quote(k, safe='.-_')}={_segment(v)}" for k, v in point.items()), f"seed={s}"]
            )
            tasks.append(Task(tid, point, s, seed, {**point_raw, "seed": seed}))
    if invalid:
        more = len(invalid) - MAX_LISTED
        raise ConfigError(invalid[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else []))
    return SweepPlan(name, study_seed, raw, grid, seeds, tasks, sorted(set(warnings)))


def _parse_base(raw: Mapping[str, Any]) -> tuple[Any, Any]:
    from madloop.config import parse

    return parse(raw)


def _swept_value(arm: Any, key: str, value: Any) -> Any:
    """The arm's value of a swept key; a native bias key (``sampling.guidance_scale``) is read
    back from the arm's λ."""
    head, _, rest = key.partition(".")
    knob = arm.config.model.bias_knob
    if head == "sampling" and rest in NATIVE_KEYS:
        got = knob.forward(arm.config.sampling.bias) if knob.key == rest else None
        close = got is not None and isinstance(value, int | float) and math.isclose(got, value)
        return value if close else got
    return _lookup(arm.config.to_dict(), key)


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


