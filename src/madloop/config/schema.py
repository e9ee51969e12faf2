"""The experiment schema and its validation.

A config (TOML) has top-level ``name``, ``seed``, ``generations``, ``replicates`` and the tables
``[data]``, ``[model]``, ``[sampling]``, ``[loop]``, plus optional ``[[arms]]`` (see
:mod:`madloop.config.arms`). Each table is validated by the class that its source / family /
regime registered, so new ones bring their own fields. Every problem is reported at once, one
line each, naming the field, the value and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from madloop.config.errors import ConfigError, format_errors, suggest
from madloop.config.merge import nest_dotted
from madloop.config.preprocess import exact_steps, preprocess_problems
from madloop.config.sections import (
    NATIVE_KEYS,
    DataConfig,
    LoopConfig,
    ModelConfig,
    SamplingConfig,
    SamplingInput,
    SizeField,
    SweepConfig,
    TrackingConfig,
    check_name,
)
from madloop.correction import CORRECTIONS
from madloop.curation import curation_problems
from madloop.data import load_sources
from madloop.models.base import load_families
from madloop.regimes import REGIMES, Regime, load_regimes


class TopLevel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Annotated[str, AfterValidator(check_name)] = "experiment"
    seed: int = Field(0, ge=0, lt=2**63)
    generations: int = Field(10, ge=1, le=1_000_000)
    replicates: int = Field(1, ge=1, le=1_000_000)
    include_base: bool = True
    arms: list[dict[str, Any]] = Field(default_factory=list)
    sweep: SweepConfig | None = None  # grid x seeds, run by `madloop sweep` (madloop.sweeps)
    tracking: TrackingConfig | None = None  # where `madloop run` logs (madloop.tracking)


class ExperimentConfig(TopLevel):
    """A resolved, validated experiment: the top-level fields and one validated table each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: SerializeAsAny[DataConfig]
    model: SerializeAsAny[ModelConfig]
    sampling: SamplingConfig = SamplingConfig()
    loop: SerializeAsAny[LoopConfig] = LoopConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def bias_text(self) -> str:
        """The bias in both forms: ``λ = 0.5 (guidance w = 1)``."""
        return self.model.bias_knob.describe(self.sampling.bias)

    def bias_entry(self) -> dict[str, Any]:
        """The bias as the manifest records it per arm: λ, the native knob and the text."""
        lam = self.sampling.bias
        return {"lambda": lam, "knob": self.model.bias_knob.knob(lam), "text": self.bias_text()}


TOP_LEVEL = set(ExperimentConfig.model_fields)
#: 2-D sources without a ``dim`` field
TWO_D = ("ring", "grid", "moons")


def validate_section(
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
    if not isinstance(choice, str):  # before the lookup: a list or a table is not hashable
        problems.append(
            f"{name}.{key}: must be a string naming a {key} "
            f"(one of: {', '.join(sorted(registry))}), got {choice!r}"
        )
        return None
    if choice not in registry:
        problems.append(
            f"{name}.{key}: unknown {key} {choice!r}{suggest(str(choice), registry)} "
            f"(available: {', '.join(sorted(registry))})"
        )
        return None
    cls = registry[choice].config if hasattr(registry[choice], "config") else registry[choice]
    try:
        return cls.model_validate(dict(table))
    except ValidationError as err:
        problems.extend(format_errors(name, err, cls))
        return None


def regime_configs() -> dict[str, type[BaseModel]]:
    return {name: getattr(cls, "config", LoopConfig) for name, cls in load_regimes().items()}


def validate(raw: Mapping[str, Any], *, arm: str | None = None) -> ExperimentConfig:
    """Validate a raw config (a parsed TOML document). Raises :class:`ConfigError`."""
    raw = nest_dotted(raw)
    problems: list[str] = []
    where = f"arms[{arm}]." if arm else ""
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(
                f"{key}: unknown key{suggest(key, TOP_LEVEL)} "
                f"(valid: {', '.join(sorted(TOP_LEVEL))})"
            )
    data = validate_section(raw, "data", "source", load_sources(), None, problems)
    model = validate_section(raw, "model", "family", load_families(), None, problems)
    loop = validate_section(raw, "loop", "regime", regime_configs(), "fully-synthetic", problems)
    written = None
    try:
        written = SamplingInput.model_validate(raw.get("sampling", {}))
    except ValidationError as err:
        problems.extend(format_errors("sampling", err, SamplingInput))
    top = {k: v for k, v in raw.items() if k in TOP_LEVEL - {"data", "model", "loop", "sampling"}}
    if top.get("sweep") is not None:  # checked on its own, so errors name its fields
        try:
            top["sweep"] = SweepConfig.model_validate(top["sweep"])
        except ValidationError as err:
            problems.extend(format_errors("sweep", err, SweepConfig))
            top.pop("sweep")
    if top.get("tracking") is not None:
        try:
            top["tracking"] = TrackingConfig.model_validate(top["tracking"])
        except ValidationError as err:
            problems.extend(format_errors("tracking", err, TrackingConfig))
            top.pop("tracking")
    try:
        top_checked = TopLevel.model_validate(top)
    except ValidationError as err:
        problems.extend(format_errors("", err, TopLevel))
        top_checked = None
    sampling = None
    if model is not None and written is not None:
        sampling = resolve_sampling(written, model, problems)
    if model is not None and data is not None:
        # a family that needs a kind of data says so; then what its bias needs (guidance: labels)
        why = model.data_problem(data) if hasattr(model, "data_problem") else None
        if why:
            problems.append(f"data.source: {why}")
        elif sampling is not None and (why := model.bias_data_problem(sampling.bias, data)):
            problems.append(f"sampling.bias: {why}")
    if loop is not None:
        problems.extend(loop_problems(loop, model))
        engine = getattr(REGIMES.get(loop.regime), "engine", "loop")
        if sampling is not None and sampling.top_k and engine != "loop":
            problems.append(
                f"sampling.top_k: not supported by regime '{loop.regime}' (its own engine "
                "builds the models); use a single-chain regime or drop sampling.top_k"
            )
        if data is not None:
            problems.extend(synthetic_problems(loop, data))
        problems.extend(preprocess_problems(loop.preprocess, model, data, engine))
    own = getattr(data, "config_problems", None)  # a source's checks on [model] and [loop]
    if own is not None and model is not None and loop is not None and not problems:
        problems.extend(own(model, loop, make_regime(loop)))
    if problems:
        raise ConfigError([where + p.lstrip(".") for p in problems])
    assert top_checked is not None
    return ExperimentConfig(
        **top_checked.model_dump(), data=data, model=model, sampling=sampling, loop=loop
    )


def resolve_sampling(
    written: SamplingInput, model: ModelConfig, problems: list[str]
) -> SamplingConfig | None:
    """The one λ of ``[sampling]``: from ``bias`` or the family's native key (``guidance_scale``,
    ``truncation``, ``temperature``), never both; problems name the fields."""
    knob = model.bias_knob
    given = [k for k in ("bias", *NATIVE_KEYS) if getattr(written, k) is not None]
    if len(given) > 1:
        problems.append(
            f"{', '.join('sampling.' + k for k in given)}: give one of them, not both "
            f"(sampling.bias is λ; {knob_hint(model)})"
        )
        return None
    key = given[0] if given else "bias"
    value = 1.0 if not given else float(getattr(written, key))
    if key == "bias":
        lam = value
        if knob.flattens and 1.0 < lam <= knob.max_lambda and written.knob == knob.knob(lam):
            why = None  # a resolved config's flattening temperature, written back as λ = T
        else:
            why = model.bias_problem(lam)
            if why and knob.flattens and lam > 1.0:
                why += f"; to flatten (T > 1) set sampling.{knob.key} instead"
    elif key != knob.key:
        own = f"sampling.{knob.key}" if knob.key else "sampling.bias (λ)"
        problems.append(
            f"sampling.{key}: not a knob of family '{model.family}'; its own key is {own} "
            f"({knob_hint(model)})"
        )
        return None
    else:
        found, why = knob.native_lambda(value)
        lam = found if found is not None else math.nan
        if why is None and lam <= 1.0:
            why = model.bias_problem(lam)
    if why:
        problems.append(f"sampling.{key}: {why}")
        return None
    top_k = top_k_problem(written, model, problems)
    return SamplingConfig(bias=lam, knob=knob.knob(lam), top_k=top_k)


def top_k_problem(written: SamplingInput, model: ModelConfig, problems: list[str]) -> int | None:
    """``sampling.top_k`` for a family that truncates (``ModelConfig.sampling_top_k``); a k above
    the vocabulary keeps every symbol (no truncation), as decoders do."""
    k = written.top_k
    if k is None:
        return None
    if not model.sampling_top_k:
        problems.append(
            f"sampling.top_k: not a knob of family '{model.family}' (tail truncation is "
            "implemented for 'categorical' and 'ngram'); drop sampling.top_k"
        )
    elif getattr(model, "top_k", 0):
        problems.append(
            f"sampling.top_k: family '{model.family}' also got model.top_k = {model.top_k}; "
            "give one of them"
        )
    return k


def knob_hint(model: ModelConfig) -> str:
    knob = model.bias_knob
    native = f"sampling.{knob.key} is {knob.label}, {knob.native}" if knob.key else ""
    return native or f"family '{model.family}' maps λ to its {knob.label}"


def sizes(spec: SizeField) -> list[int]:
    return [spec] if isinstance(spec, int) else list(spec)


def loop_problems(loop: LoopConfig, model: ModelConfig | None) -> list[str]:
    """Sizes: one line per field, naming the bound (``loop.synthetic_size: must be >= 1, got -5``);
    then whether every generation has enough points for the family to fit."""
    problems = []
    synthetic_only = not getattr(REGIMES.get(loop.regime), "uses_real_size", True)
    for fname in ("real_size", "synthetic_size"):
        spec = getattr(loop, fname)
        values = sizes(spec)
        low = 1 if synthetic_only and fname == "synthetic_size" else 0
        where = f"loop.{fname}"
        if not values:
            problems.append(f"{where}: must not be an empty list")
        elif min(values) < low:
            got = f"{min(values)} (in {spec})" if isinstance(spec, list) else f"{spec}"
            problems.append(f"{where}: must be >= {low}, got {got}")
    if problems:
        return problems
    problems.extend(real_weight_problems(loop, model))
    regime = make_regime(loop)
    own = getattr(regime, "config_problems", None)  # a regime's checks that need [model] too
    if regime.engine != "loop":  # an engine of its own (web-pool) checks its sizes
        return problems + (own(model) if own is not None else [])
    if synthetic_only and max(sizes(loop.real_size)) != 0:
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
    horizon = max(len(sizes(loop.real_size)), len(sizes(loop.synthetic_size))) + 1
    for t in range(2, horizon + 1):
        size = regime.training_size(t)
        if size < minimum:
            field = "loop.synthetic_size"
            if not synthetic_only:
                field = "loop.real_size + loop.synthetic_size"
            problems.append(f"{field}: {need}, got {size} at generation {t}")
            break
    if own is not None:
        problems.extend(own(model))
    return problems


#: the regimes whose training set mixes real and synthetic rows, where weights mean something
WEIGHTED_REGIMES = ("fresh-data", "synthetic-augmentation")


def real_weight_problems(loop: LoopConfig, model: ModelConfig | None) -> list[str]:
    """``loop.real_weight``: only for regimes that mix both sources, with rows of each every
    generation, and a family that declares ``accepts_weights``."""
    w = getattr(loop, "real_weight", None)
    if w is None:
        return []
    if loop.regime not in WEIGHTED_REGIMES:
        return [
            f"loop.real_weight: only for regimes {' and '.join(map(repr, WEIGHTED_REGIMES))} "
            f"(they mix real and synthetic rows), got regime '{loop.regime}'; remove the key"
        ]
    if model is not None and not getattr(model, "accepts_weights", False):
        return [
            f"loop.real_weight: family '{model.family}' cannot fit weighted data; remove the key "
            "or use family 'gaussian'"
        ]
    if getattr(loop, "preprocess", ()):
        return [
            "loop.real_weight: cannot be combined with loop.preprocess yet (a processed training "
            "set is fitted unweighted); remove one of them"
        ]
    if min(sizes(loop.real_size)) < 1 or min(sizes(loop.synthetic_size)) < 1:
        return [
            "loop.real_weight: needs real and synthetic rows every generation (loop.real_size "
            f"and loop.synthetic_size >= 1), got {loop.real_size} and {loop.synthetic_size}"
        ]
    return []


def data_dimension(data: DataConfig) -> int | None:
    """Numbers per data row from the config alone (``dim``, ``event_size()``), None: unknown."""
    dim = getattr(data, "dim", None)
    if isinstance(dim, int):
        return dim
    if hasattr(data, "event_size"):
        return int(data.event_size())
    if data.kind == "images":  # side x side pixels after downscaling (native: 8 digits, 28)
        side = int(getattr(data, "size", 0) or (8 if data.source == "digits" else 28))
        return side * side
    return 2 if data.source in TWO_D else None


def synthetic_problems(loop: LoopConfig, data: DataConfig) -> list[str]:
    """``loop.curation`` (a known reward, params of the data's dimension) and
    ``loop.correction`` (a source that has one)."""
    if getattr(REGIMES.get(loop.regime), "engine", "loop") != "loop":
        return []  # the web pool validates its own curation table (and refuses correction)
    if loop.curation is not None and data.kind == "tokens":
        problems = [
            f"loop.curation: rewards score real-valued points, got data.source = "
            f"{data.source!r} (token ids); remove loop.curation"
        ]
    else:
        problems = curation_problems(loop.curation, data_dimension(data))
    if loop.curation is not None and loop.curation.reward == "classifier":
        if data.kind != "images":  # whether the source has one is checked when it is built
            problems.append(
                "loop.curation.reward: 'classifier' needs an image data set (its classifier), "
                f"got data.source = {data.source!r}; use 'linear' or 'quadratic'"
            )
    if loop.correction is not None and data.source not in CORRECTIONS:
        problems.append(
            f"loop.correction: no correction towards the real law for data.source = "
            f"{data.source!r} (supported: {', '.join(sorted(CORRECTIONS))}); remove it"
        )
    return problems


def make_regime(loop: LoopConfig) -> Regime:
    cls = REGIMES[loop.regime]
    single_chain = getattr(cls, "engine", "loop") == "loop"
    # the weight is the loop's, not the recipe's (Loop and the theory read loop.real_weight);
    # preprocessing steps are the loop's too (madloop.preprocess)
    exclude = {"regime", "real_weight", "preprocess"}
    if single_chain:
        exclude |= {"curation", "correction"}
    regime = cls(**loop.model_dump(exclude=exclude))
    if single_chain and (loop.curation is not None or loop.correction is not None):
        # curation picks points and correction moves them: neither is a function of a batch's
        # sufficient statistics, so such an arm runs in sample mode (exact_mode says so)
        regime.exact = False
        regime.sample_reason = "curation / correction act on points"
    if not exact_steps(loop.preprocess):  # a step that looks at each point: no exact law
        regime.exact = False
        regime.sample_reason = (
            "loop.preprocess has a step that looks at each point (clip, dedup, align)"
        )
    return regime
