"""Arms: variants of one experiment, each a name plus dotted-key overrides of the base config;
and loading a config from a TOML path, a dict or a validated config."""

from __future__ import annotations

import os
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madloop.config.errors import ConfigError
from madloop.config.merge import deep_merge, nest_dotted
from madloop.config.schema import ExperimentConfig, regime_configs, validate
from madloop.config.sections import NATIVE_KEYS, LoopConfig, check_name
from madloop.regimes import REGIMES


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
    raw = config.to_dict() if isinstance(config, ExperimentConfig) else nest_dotted(config)
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
        overrides = nest_dotted({k: v for k, v in arm.items() if k != "name"})
        bad = [
            k
            for k in overrides
            if k in {"arms", "name", "seed", "generations", "replicates", "sweep", "tracking"}
        ]
        if bad:
            problems.append(f"arms[{name}].{bad[0]}: cannot be overridden per arm")
            continue
        merged = deep_merge(base_raw, overrides)
        merged = own_bias(merged, base_raw, overrides)
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
                known = regime_configs().get(over[key], LoopConfig).model_fields
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


#: the ``[sampling]`` keys that give the bias (one per config) and the derived native value
BIAS_KEYS = ("bias", *NATIVE_KEYS, "knob")


def own_bias(merged: dict, base_raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """An arm that sets the bias in any form (``bias``, ``guidance_scale``, ...) replaces the
    base's, so ``sampling.bias = 0.5`` on a base with ``sampling.truncation`` is not a conflict."""
    over, under = overrides.get("sampling"), base_raw.get("sampling")
    if not isinstance(over, Mapping) or not isinstance(under, Mapping):
        return merged
    if not any(k in over for k in BIAS_KEYS):
        return merged
    kept = {k: v for k, v in under.items() if k not in BIAS_KEYS}
    return {**merged, "sampling": {**kept, **over}}


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
    base_raw = {k: v for k, v in nest_dotted(raw).items() if k != "arms"}
    base = arms[0].config if arms[0].name == "base" else validate(base_raw)
    return base.model_copy(update={"arms": list(raw.get("arms", []) or [])}), arms

