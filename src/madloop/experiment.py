"""Experiments: a validated config, its arms, the run and its directory.

A config (TOML) has top-level ``name``, ``seed``, ``generations``, ``replicates`` and the tables
``[data]``, ``[model]``, ``[sampling]``, ``[loop]``, plus optional ``[[arms]]``: variants, each a
name plus dotted-key overrides of the base config. Each table is validated by the class that its
source / family / regime registered, so new ones bring their own fields. Every problem is reported
at once, one line each, naming the field, the value and the fix.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
import typing
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
)

from madloop.configs import (
    DataConfig,
    ModelConfig,
    SamplingConfig,
    Section,
    SweepConfig,
    check_name,
    check_run_path,
)
from madloop.data import build_source, load_sources
from madloop.loop import Engine, GenerationRecord, Loop
from madloop.models.base import build_model, load_families
from madloop.regimes import REGIMES, Regime
from madloop.storage import write_atomic, write_parquet
from madloop.tables import long_table, provenance_table, summarize

SizeField = int | list[int]


class ConfigError(ValueError):
    """An invalid config; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class LoopConfig(Section):
    regime: str = "fully-synthetic"
    real_size: SizeField = 0
    synthetic_size: SizeField = 100
    initial_real_size: int | None = Field(None, ge=1)


class _TopLevel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Annotated[str, AfterValidator(check_name)] = "experiment"
    seed: int = Field(0, ge=0, lt=2**63)
    generations: int = Field(10, ge=1, le=1_000_000)
    replicates: int = Field(1, ge=1, le=1_000_000)
    include_base: bool = True
    arms: list[dict[str, Any]] = Field(default_factory=list)
    sweep: SweepConfig | None = None  # grid x seeds, run by `madloop sweep` (madloop.sweep)


class ExperimentConfig(_TopLevel):
    """A resolved, validated experiment: the top-level fields and one validated table each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: SerializeAsAny[DataConfig]
    model: SerializeAsAny[ModelConfig]
    sampling: SamplingConfig = SamplingConfig()
    loop: SerializeAsAny[LoopConfig] = LoopConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


TOP_LEVEL = set(ExperimentConfig.model_fields)


# -- parsing --------------------------------------------------------------------------------------
def _suggest(key: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


_PLAIN = {  # pydantic error type -> the plain phrase we print
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be finite",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
}
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _phrase(e: Mapping[str, Any]) -> str:
    """One pydantic error as 'must be ...' in the config's own terms."""
    ctx = e.get("ctx") or {}
    if e["type"] in _PLAIN:
        return _PLAIN[e["type"]]
    for key, op in _BOUNDS.items():
        if key in ctx and e["type"].startswith(("greater", "less")):
            return f"must be {op} {ctx[key]}"
    if e["type"] == "literal_error":
        return f"must be {ctx.get('expected', '')}".rstrip()
    msg = str(e["msg"]).removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:] if msg[:1].isupper() and not msg[1:2].isupper() else msg


def _format_errors(prefix: str, err: ValidationError, cls: type[BaseModel]) -> list[str]:
    """One line per field: ``section.field: must be ..., got VALUE``. The alternatives of a union
    (``int | list[int]``) are joined into one line."""
    found: dict[str, list[str]] = {}
    shown_for: dict[str, str] = {}
    lines: list[str] = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-after",)))
        # union members show up as extra location parts: keep the field path only
        loc = ".".join(
            p
            for p in loc.split(".")
            if p not in {"int", "list[int]", "float", "list[float]", "str", "list[list[float]]"}
            and not p.startswith(("literal[", "function"))
        )
        where = f"{prefix}.{loc}" if loc else prefix
        if e["type"] == "extra_forbidden":
            key = str(e["loc"][-1])
            owner = _owner(cls, e["loc"][:-1])  # a nested table names its own keys
            lines.append(
                f"{where}: unknown key{_suggest(key, owner.model_fields)} "
                f"(valid: {', '.join(sorted(owner.model_fields))})"
            )
            continue
        msg = _phrase(e)
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f", got {value!r}"
        if msg.startswith(tuple(f"{f}:" for f in cls.model_fields)):
            where = f"{prefix}.{msg.split(':', 1)[0]}"
            msg = msg.split(":", 1)[1].strip()
            shown = ""
        if where not in found:
            found[where] = []
            lines.append(where)  # placeholder, filled below in first-seen order
        if msg not in found[where]:
            found[where].append(msg)
        shown_for.setdefault(where, shown)
    out = []
    for line in lines:
        if line not in found:
            out.append(line)
            continue
        msgs = found.pop(line)
        if len(msgs) > 1 and all(m.startswith("must be ") for m in msgs):
            msg = "must be " + " or ".join(m.removeprefix("must be ") for m in msgs)
        else:
            msg = "; ".join(msgs)
        out.append(f"{line}: {msg}{shown_for[line]}")
    return sorted(set(out), key=out.index)


def _owner(cls: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The model class that holds the field at ``loc`` (for nested tables; else ``cls``)."""
    for part in loc:
        field = cls.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        for option in (ann, *typing.get_args(ann)):  # X, list[X], X | None
            if isinstance(option, type) and issubclass(option, BaseModel):
                cls = option
                break
    return cls


def _nest_dotted(table: Mapping[str, Any]) -> dict[str, Any]:
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
            value = _nest_dotted(value)
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


def _section(
    raw: Mapping[str, Any],
    name: str,
    key: str,
    registry: Mapping[str, Any],
    default_choice: str | None,
    problems: list[str],
) -> Any:
    table = raw.get(name, {})
    if not isinstance(table, Mapping):
        problems.append(f"{name}: must be a table, got {table!r}")
        return None
    choice = table.get(key, default_choice)
    if choice is None:
        problems.append(f"{name}.{key}: required (one of: {', '.join(sorted(registry))})")
        return None
    if choice not in registry:
        problems.append(
            f"{name}.{key}: unknown {key} {choice!r}{_suggest(str(choice), registry)} "
            f"(available: {', '.join(sorted(registry))})"
        )
        return None
    cls = registry[choice].config if hasattr(registry[choice], "config") else registry[choice]
    try:
        return cls.model_validate(dict(table))
    except ValidationError as err:
        problems.extend(_format_errors(name, err, cls))
        return None


def _regime_configs() -> dict[str, type[BaseModel]]:
    import madloop.pool  # noqa: F401  (registers the web-pool regime)

    return {name: getattr(cls, "config", LoopConfig) for name, cls in REGIMES.items()}


def validate(raw: Mapping[str, Any], *, arm: str | None = None) -> ExperimentConfig:
    """Validate a raw config (a parsed TOML document). Raises :class:`ConfigError`."""
    raw = _nest_dotted(raw)
    problems: list[str] = []
    where = f"arms[{arm}]." if arm else ""
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(
                f"{key}: unknown key{_suggest(key, TOP_LEVEL)} "
                f"(valid: {', '.join(sorted(TOP_LEVEL))})"
            )
    data = _section(raw, "data", "source", load_sources(), None, problems)
    model = _section(raw, "model", "family", load_families(), None, problems)
    loop = _section(raw, "loop", "regime", _regime_configs(), "fully-synthetic", problems)
    sampling = None
    try:
        sampling = SamplingConfig.model_validate(raw.get("sampling", {}))
    except ValidationError as err:
        problems.extend(_format_errors("sampling", err, SamplingConfig))
    top = {k: v for k, v in raw.items() if k in TOP_LEVEL - {"data", "model", "loop", "sampling"}}
    if top.get("sweep") is not None:  # checked on its own, so errors name its fields
        try:
            top["sweep"] = SweepConfig.model_validate(top["sweep"])
        except ValidationError as err:
            problems.extend(_format_errors("sweep", err, SweepConfig))
            top.pop("sweep")
    try:
        top_checked = _TopLevel.model_validate(top)
    except ValidationError as err:
        problems.extend(_format_errors("", err, _TopLevel))
        top_checked = None
    if model is not None and sampling is not None:
        why = model.bias_problem(sampling.bias)
        if why:
            problems.append(f"sampling.bias: {why}")
    if model is not None and data is not None and hasattr(model, "data_problem"):
        why = model.data_problem(data)  # a family that needs a kind of data says so
        if why:
            problems.append(f"data.source: {why}")
    if loop is not None:
        problems.extend(_loop_problems(loop, model))
    if problems:
        raise ConfigError([where + p.lstrip(".") for p in problems])
    assert top_checked is not None
    return ExperimentConfig(
        **top_checked.model_dump(), data=data, model=model, sampling=sampling, loop=loop
    )


def _sizes(spec: SizeField) -> list[int]:
    return [spec] if isinstance(spec, int) else list(spec)


def _loop_problems(loop: LoopConfig, model: ModelConfig | None) -> list[str]:
    """Sizes: one line per field, naming the bound (``loop.synthetic_size: must be >= 1, got -5``);
    then whether every generation has enough points for the family to fit."""
    problems = []
    synthetic_only = not getattr(REGIMES.get(loop.regime), "uses_real_size", True)
    for fname in ("real_size", "synthetic_size"):
        spec = getattr(loop, fname)
        values = _sizes(spec)
        low = 1 if synthetic_only and fname == "synthetic_size" else 0
        where = f"loop.{fname}"
        if not values:
            problems.append(f"{where}: must not be an empty list")
        elif min(values) < low:
            got = f"{min(values)} (in {spec})" if isinstance(spec, list) else f"{spec}"
            problems.append(f"{where}: must be >= {low}, got {got}")
    if problems:
        return problems
    regime = make_regime(loop)
    own = getattr(regime, "config_problems", None)  # a regime's checks that need [model] too
    if regime.engine != "loop":  # an engine of its own (web-pool) checks its sizes
        return problems + (own(model) if own is not None else [])
    if synthetic_only and max(_sizes(loop.real_size)) != 0:
        return [
            f"loop.real_size: must be 0 for regime '{loop.regime}' (it trains on synthetic data "
            f"only), got {loop.real_size}; use regime 'fresh-data' or 'synthetic-augmentation'"
        ]
    n_ini = regime.n_initial()
    if loop.initial_real_size is not None and regime.name == "synthetic-augmentation":
        if n_ini < regime.n_real(1):
            problems.append(
                f"loop.initial_real_size: must be >= loop.real_size ({regime.n_real(1)}) for "
                f"'synthetic-augmentation' (generation 1 includes the fixed real set), got {n_ini}"
            )
    family = getattr(model, "family", None)
    # a family declares the fewest points it can fit (ModelConfig.min_train_size)
    minimum = getattr(model, "min_train_size", 1) if model is not None else 1
    need = f"must give >= {minimum} training points" + (
        " (a Gaussian fit needs 2)" if family == "gaussian" and minimum == 2 else ""
    )
    if n_ini < minimum:
        field = (
            "loop.initial_real_size"
            if loop.initial_real_size is not None
            else "loop.synthetic_size"
            if synthetic_only
            else "loop.real_size + loop.synthetic_size"
        )
        return problems + [f"{field}: {need}, got {n_ini} at generation 1"]
    horizon = max(len(_sizes(loop.real_size)), len(_sizes(loop.synthetic_size))) + 1
    for t in range(2, horizon + 1):
        size = regime.training_size(t)
        if size < minimum:
            field = "loop.synthetic_size" if synthetic_only else "loop.real_size + synthetic_size"
            problems.append(f"{field}: {need}, got {size} at generation {t}")
            break
    if own is not None:
        problems.extend(own(model))
    return problems


def make_regime(loop: LoopConfig) -> Regime:
    cls = REGIMES[loop.regime]
    params = loop.model_dump(exclude={"regime"})
    return cls(**params)


def resolve_run_path(run_dir: str | os.PathLike, value: str, *, field: str) -> Path:
    """The file a config's path field names, inside ``run_dir``; raises :class:`ConfigError`
    (naming ``field``) when it is absolute, climbs out with '..', or leads out through a symlink.
    A path given on the command line is the user's own: open it directly, without this check."""
    try:
        check_run_path(value)
    except ValueError as err:
        raise ConfigError([f"{field}: {err}, got {value!r}"]) from None
    root = Path(run_dir).resolve()
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(
            [f"{field}: {value!r} leads out of the run directory {root} (through a symlink)"]
        )
    return path


# -- arms -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    name: str
    config: ExperimentConfig

    @property
    def stream(self) -> int:
        """This arm's branch of the seed tree: keyed by its name, so reordering arms or adding
        one leaves the others' numbers unchanged."""
        return zlib.crc32(self.name.encode())


def resolve_arms(config: ExperimentConfig | Mapping[str, Any]) -> list[Arm]:
    raw = config.to_dict() if isinstance(config, ExperimentConfig) else _nest_dotted(config)
    base_raw = {k: v for k, v in raw.items() if k != "arms"}
    arms: list[Arm] = []
    problems: list[str] = []
    base = None
    try:
        base = validate(base_raw)
    except ConfigError as err:
        problems.extend(err.problems)
    if base is not None and base.include_base:
        arms.append(Arm("base", base))
    seen = {"base"} if arms else set()
    arm_list = raw.get("arms", []) or []
    if not isinstance(arm_list, list):
        problems.append(f"arms: must be an array of tables ([[arms]]), got {arm_list!r}")
        arm_list = []
    for i, arm in enumerate(arm_list):
        if not isinstance(arm, Mapping) or not isinstance(arm.get("name"), str) or not arm["name"]:
            problems.append(f"arms[{i}].name: every arm needs a non-empty name")
            continue
        name = arm["name"]
        try:
            check_name(name)
        except ValueError as err:
            problems.append(f"arms[{i}].name: {err}, got {name!r}")
            continue
        if name in seen:
            problems.append(f"arms[{i}].name: duplicate arm name {name!r}")
            continue
        seen.add(name)
        overrides = _nest_dotted({k: v for k, v in arm.items() if k != "name"})
        bad = [
            k
            for k in overrides
            if k in {"arms", "name", "seed", "generations", "replicates", "sweep"}
        ]
        if bad:
            problems.append(f"arms[{name}].{bad[0]}: cannot be overridden per arm")
            continue
        merged = deep_merge(base_raw, overrides)
        for section, key in (("model", "family"), ("data", "source"), ("loop", "regime")):
            # switching family/source/regime drops the base's fields that belong to the old one
            over, under = overrides.get(section), base_raw.get(section)
            if not isinstance(over, Mapping) or key not in over:
                continue
            if isinstance(under, Mapping) and over[key] == under.get(key):
                continue
            merged[section] = dict(over)
            if section == "loop" and isinstance(under, Mapping) and isinstance(over[key], str):
                # sizes are common to every regime: keep those it knows
                known = _regime_configs().get(over[key], LoopConfig).model_fields
                if not getattr(REGIMES.get(over[key]), "uses_real_size", 1):
                    known = {k: f for k, f in known.items() if k != "real_size"}
                kept = {k: v for k, v in under.items() if k in known}
                merged[section] = {**kept, **over}
        try:
            arms.append(Arm(name, validate(merged, arm=name)))
        except ConfigError as err:
            # a problem the arm inherits from the base is reported once, for the base
            prefix = f"arms[{name}]."
            problems.extend(p for p in err.problems if p.removeprefix(prefix) not in problems)
    if problems:
        raise ConfigError(problems)
    if not arms:
        raise ConfigError(["arms: no arm to run (include_base = false and no [[arms]])"])
    return arms


def load_config(source: str | os.PathLike | Mapping[str, Any] | ExperimentConfig) -> dict:
    """A raw config dict from a TOML path, a dict or a validated config."""
    if isinstance(source, ExperimentConfig):
        return source.to_dict()
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.exists():
        raise ConfigError([f"{path}: no such config file"])
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{path}: not valid TOML: {err}"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not a UTF-8 text file ({err.reason})"]) from None
    except OSError as err:
        raise ConfigError([f"{path}: cannot be read ({err.strerror or err})"]) from None


def parse(source: Any, **overrides: Any) -> tuple[ExperimentConfig, list[Arm]]:
    """Load, apply top-level overrides (seed, generations, replicates), validate all arms."""
    raw = load_config(source)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    arms = resolve_arms(raw)
    base_raw = {k: v for k, v in _nest_dotted(raw).items() if k != "arms"}
    base = arms[0].config if arms[0].name == "base" else validate(base_raw)
    return base.model_copy(update={"arms": list(raw.get("arms", []) or [])}), arms


# -- running --------------------------------------------------------------------------------------
DATA_STREAM = 0  # the seed-tree branch for the real data's own randomness (e.g. a random Σ_0)


def build_loop(arm: Arm) -> Loop:
    cfg = arm.config
    real = build_source(
        cfg.data, rng=np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    )
    model = build_model(cfg.model, replicates=cfg.replicates, real=real)
    return Loop(
        make_regime(cfg.loop),
        model,
        real,
        bias=cfg.sampling.bias,
        replicates=cfg.replicates,
        exact=getattr(cfg.model, "mode", "sample") == "exact",
        seed=cfg.seed,
        stream=arm.stream,
        label=arm.name,
    )


#: regime.engine -> what builds an arm's engine; the web pool registers its own on import
ENGINES: dict[str, Callable[[Arm], Engine]] = {"loop": build_loop}


def register_engine(name: str, build: Callable[[Arm], Engine]) -> None:
    ENGINES[name] = build


def build_engine(arm: Arm) -> Engine:
    """The engine that runs ``arm``: the one its regime names (``Regime.engine``)."""
    return ENGINES[REGIMES[arm.config.loop.regime].engine](arm)


GALLERY_SIZE = 256


def gallery_generations(generations: int) -> set[int]:
    """Generations that get a sample gallery: 1, the last, and a roughly log-spaced few."""
    marks = {2, 3, 5, 7, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}
    return {1, generations} | {g for g in marks if g < generations}


def write_gallery(engine: Engine, out: Path) -> list[Path]:
    """Samples of the current generation per label, rendered by the real source when it knows
    how (``render_samples(points, path_stem) -> list[Path]``; image grid, 2-D scatter, text...).
    Files land in ``plots/samples/{label}_gen{t:03d}.*`` (':' of a lineage label as '-')."""
    render = getattr(engine.real, "render_samples", None)
    if render is None:
        return []
    paths = []
    for label, points in engine.galleries(GALLERY_SIZE).items():
        stem = out / "plots" / "samples" / f"{label.replace(':', '-')}_gen{engine.generation:03d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        paths += render(points, stem)
    return paths


@dataclass
class RunResult:
    """The tables of a run. ``metrics``: long table (arm, generation, replicate, metric, value);
    ``summary``: per arm, generation and metric; ``provenance``: training-set make-up."""

    config: ExperimentConfig
    metrics: pd.DataFrame
    summary: pd.DataFrame
    provenance: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None


def theory_frame(arms: list[Arm]) -> pd.DataFrame:
    """Closed-form expectations per arm, generation and metric, where the theory module has one."""
    from madloop import theory

    rows = []
    for arm in arms:
        cfg = arm.config
        own = getattr(REGIMES[cfg.loop.regime], "theory_frame", None)  # e.g. web-pool's lineages
        if own is not None:
            rows.append(own(arm))
            continue
        rows.extend(_discrete_theory(arm))
        mean0_factor = _gaussian_truth(cfg)
        if mean0_factor is None:
            continue
        dim, trace0 = mean0_factor
        preds = theory.predictions(
            make_regime(cfg.loop),
            cfg.generations,
            dim=dim,
            trace0=trace0,
            bias=cfg.sampling.bias,
            covariance_estimator=getattr(cfg.model, "covariance_estimator", "unbiased"),
        )
        for metric, values in preds.items():
            rows.append(
                pd.DataFrame(
                    {
                        "arm": arm.name,
                        "generation": np.arange(1, cfg.generations + 1),
                        "metric": metric,
                        "theory": values,
                    }
                )
            )
    if not rows:
        return pd.DataFrame(columns=["arm", "generation", "metric", "theory"])
    return pd.concat(rows, ignore_index=True)


def _gaussian_truth(cfg: ExperimentConfig) -> tuple[int, float] | None:
    """(dim, tr Σ_0) when the theory applies: Gaussian data fitted by the Gaussian family."""
    if cfg.data.source != "gaussian" or cfg.model.family != "gaussian":
        return None
    real = build_source(
        cfg.data, rng=np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    )
    return real.dim, float(np.trace(real.covariance))


def _discrete_theory(arm: Arm) -> list[pd.DataFrame]:
    """Wright–Fisher predictions for the categorical family (see :mod:`madloop.theory_discrete`)."""
    cfg = arm.config
    if cfg.model.family != "categorical" or cfg.data.source != "categorical":
        return []
    from madloop import theory_discrete

    real = build_source(
        cfg.data, rng=np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    )
    preds = theory_discrete.predictions(
        make_regime(cfg.loop),
        cfg.generations,
        real.probabilities(),
        tail=real.tail,
        bias=cfg.sampling.bias,
        alpha=cfg.model.alpha,
    )
    gens = np.arange(1, cfg.generations + 1)
    return [
        pd.DataFrame({"arm": arm.name, "generation": gens, "metric": k, "theory": v})
        for k, v in preds.items()
    ]


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("madloop", "numpy", "scipy", "pandas", "pyarrow", "pydantic", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


Progress = Callable[[str, int, int], None]  # (arm, generation, generations)


Log = Callable[[str], None]


def run(
    config: Any,
    *,
    out: str | os.PathLike | None = None,
    seed: int | None = None,
    generations: int | None = None,
    replicates: int | None = None,
    progress: Progress | None = None,
    plots: bool = True,
    resume: bool | None = None,
    keep_checkpoints: int = 2,
    checkpoint_every: int = 1,
    log: Log | None = None,
) -> RunResult:
    """Run every arm of an experiment; return its tables, and write them to ``out`` if given.

    ``config`` is a TOML path, a dict or an :class:`ExperimentConfig`. With ``out``, each arm is
    checkpointed every ``checkpoint_every`` generations (and at its end) under
    ``out/checkpoints/`` (see :mod:`madloop.checkpoint`), keeping the newest ``keep_checkpoints``.
    ``resume=True`` continues each arm from its newest intact checkpoint (finished arms are not
    recomputed) and gives the numbers of an uninterrupted run, bit for bit; ``resume=False`` (what
    ``madloop run`` passes without ``--resume``) refuses a run directory that already holds
    checkpoints; ``None`` starts afresh, removing them. ``log`` receives notes (resumes,
    rejected checkpoints, stopped chains).
    """
    from madloop.checkpoint import run_has_checkpoints

    base, arms = parse(config, seed=seed, generations=generations, replicates=replicates)
    problems = []
    if keep_checkpoints < 1:
        problems.append(f"--keep-checkpoints: must be >= 1, got {keep_checkpoints}")
    if checkpoint_every < 1:
        problems.append(f"--checkpoint-every: must be >= 1, got {checkpoint_every}")
    if problems:
        raise ConfigError(problems)
    log = log or (lambda msg: None)
    started = time.time()
    out = Path(out) if out is not None else None
    if out is not None and resume is False and run_has_checkpoints(out):
        raise ConfigError(
            [
                f"--out: {out} already holds the checkpoints of a run; pass --resume to continue "
                "it, or give a new --out to start afresh"
            ]
        )
    with contextlib.ExitStack() as stack:
        if out is not None:
            from madloop.checkpoint import CheckpointError, RunLock

            try:
                stack.enter_context(RunLock(out))
            except CheckpointError as err:
                raise ConfigError([f"--out: {err}"]) from None
            if resume is None:  # a fresh run: old checkpoints must never mix with new ones
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
        result = _run_arms(
            base, arms, out, started, resume, keep_checkpoints, checkpoint_every, progress, log
        )
        if out is not None:
            write_run(result, Path(out), plots=plots)
    return result


def _run_arms(
    base: ExperimentConfig,
    arms: list[Arm],
    out: Path | None,
    started: float,
    resume: bool | None,
    keep_checkpoints: int,
    checkpoint_every: int,
    progress: Progress | None,
    log: Log,
) -> RunResult:
    frames, prov, timings, modes, resumed, failures = [], [], {}, {}, {}, []
    for arm in arms:
        t0 = time.perf_counter()
        engine, records, start = _run_arm(
            arm, out, resume, keep_checkpoints, checkpoint_every, progress, log
        )
        modes[arm.name] = "exact" if engine.exact else "sample"
        if resume:
            resumed[arm.name] = start
        sources = getattr(engine, "source_names", None)  # the pool names its lineages
        for label in engine.labels:
            recs = [rec for rec in records if rec.arm == label]
            failures += _failures(label, recs)
            frames.append(long_table(label, recs))
            prov.append(provenance_table(label, recs, sources))
        timings[arm.name] = round(time.perf_counter() - t0, 4)
    extra: dict[str, Any] = {"failures": failures}
    if resume:
        extra["resumed_from"] = resumed
    return assemble_result(base, arms, frames, prov, modes, timings, started, extra)


def _failures(label: str, records: list[GenerationRecord]) -> list[dict[str, Any]]:
    """The manifest's lines for the chains of one label that stopped, by replicate."""
    stops = [(r, rec.generation, why) for rec in records for r, why in rec.failures.items()]
    return [
        {"arm": label, "generation": g, "replicate": r, "reason": why}
        for r, g, why in sorted(stops, key=lambda s: s[0])
    ]


def assemble_result(
    base: ExperimentConfig,
    arms: list[Arm],
    frames: list[pd.DataFrame],
    prov: list[pd.DataFrame],
    modes: dict[str, str],
    timings: dict[str, float],
    started: float,
    extra: dict[str, Any] | None = None,
) -> RunResult:
    """The run's tables and manifest from each arm's records (shared by every engine)."""
    metrics = pd.concat(frames, ignore_index=True)
    summary = summarize(metrics, theory_frame(arms))
    provenance = pd.concat(prov, ignore_index=True)
    manifest = {
        "name": base.name,
        "seed": base.seed,
        "config": {**base.to_dict()},
        "arms": {a.name: a.config.to_dict() for a in arms},
        "modes": modes,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "timings_s": {"arms": timings, "total": round(time.time() - started, 4)},
        **(extra or {}),
    }
    return RunResult(base, metrics, summary, provenance, manifest)


def _run_arm(
    arm: Arm,
    out: Path | None,
    resume: bool | None,
    keep: int,
    every: int,
    progress: Progress | None,
    log: Log,
) -> tuple[Engine, list[GenerationRecord], int]:
    """One arm, on the engine its regime names: restore it from its checkpoints if asked, run
    what is left, checkpoint it every ``every`` generations and write its galleries."""
    from madloop.checkpoint import ArmCheckpoints

    engine = build_engine(arm)
    if out is not None and hasattr(engine.real, "cache_dir"):
        engine.real.cache_dir = out / "cache"  # e.g. the image metrics' feature network
    T = arm.config.generations
    records: list[GenerationRecord] = []
    ckpt = None
    if out is not None:
        ckpt = ArmCheckpoints(
            out / "checkpoints",
            arm.name,
            arm.config.to_dict(),
            keep=keep,
            log=log,
            extra={"versions": _versions()},
        )
    if ckpt is not None and not engine.checkpointable:
        log(
            f"arm '{arm.name}': family '{arm.config.model.family}' has no get_state(); "
            "not checkpointed"
        )
        ckpt = None
    if ckpt is not None and resume:
        records = _restore(arm, engine, ckpt, progress, log)
    start = engine.generation
    while engine.generation < T and engine.stopped is None:
        recs = engine.step()
        t = engine.generation
        records += recs
        for rec in recs:
            for r, why in rec.failures.items():
                log(f"arm '{rec.arm}': chain {r} stopped at generation {t}: {why}")
        if out is not None and t in gallery_generations(T):
            write_gallery(engine, out)
        if ckpt is not None:
            ckpt.save_records(recs)
            last = t >= T or engine.stopped is not None
            if last or t % every == 0:
                ckpt.save(engine, finished=last)
        if progress is not None:
            progress(arm.name, t, T)
    return engine, records, start


def _restore(
    arm: Arm, engine: Engine, ckpt: Any, progress: Progress | None, log: Log
) -> list[GenerationRecord]:
    """Restore ``engine`` from its newest intact checkpoint; the records so far (none without
    one). Says per arm (and per label, for an engine of several) where it goes on."""
    from madloop.checkpoint import CheckpointError

    T = arm.config.generations
    try:
        restored = ckpt.restore(engine)
    except CheckpointError as err:
        raise ConfigError([f"--resume: {err}"]) from None
    if restored is None:
        return []
    g = restored.generation
    if g > T:
        raise ConfigError(
            [
                f"generations: arm '{arm.name}' is already at generation {g}; ask for >= {g} "
                "or use a new --out"
            ]
        )
    done = g >= T or engine.stopped is not None
    log(
        f"arm '{arm.name}': finished at generation {g}; not recomputed"
        if done
        else f"arm '{arm.name}': resuming after generation {g}"
    )
    if len(engine.labels) > 1:
        for label in engine.labels:
            last = max((r.generation for r in restored.records if r.arm == label), default=0)
            log(f"arm '{arm.name}': {label} restored at generation {last}")
    if progress is not None:
        for t in sorted({rec.generation for rec in restored.records}):
            progress(arm.name, t, T)
    return restored.records


def write_run(result: RunResult, out: Path, *, plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(result.metrics, out / "metrics.parquet")
    write_atomic(out / "summary.csv", result.summary.to_csv(index=False))
    write_atomic(out / "provenance.csv", result.provenance.to_csv(index=False))
    if plots:
        from madloop.report.plots import plot_metrics

        t0 = time.perf_counter()
        plot_metrics(result.summary, out / "plots")
        result.manifest["timings_s"]["plots"] = round(time.perf_counter() - t0, 4)
    write_atomic(out / "manifest.json", json.dumps(result.manifest, indent=2, default=str))
    result.out = out
