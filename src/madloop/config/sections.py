"""Base classes of the config sections. Each data source, model family and regime registers its own
subclass, so a new one brings its own validated fields without touching the experiment schema."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
)

from madloop.config.errors import check_choice
from madloop.config.preprocess import PreprocessStep


class Section(BaseModel):
    """A config table: unknown keys are errors (the message names the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    source: str
    #: what the source yields: "vectors" (rows of floats), "images" (H x W floats) or "tokens"
    #: (symbol / token ids); families refuse the kinds they cannot fit at validate time
    kind: ClassVar[str] = "vectors"
    #: whether every point carries a class label (``Points.y``): guidance needs labels
    labelled: ClassVar[bool] = False


def _identity(x: float) -> float:
    return float(x)


def _square(x: float) -> float:
    return float(x) * float(x)


def _guidance(lam: float) -> float:
    return 1.0 / lam - 1.0


def _from_guidance(w: float) -> float:
    return 1.0 / (1.0 + w)


def number(x: float) -> str:
    """A knob or λ as shown to people: 0.5, 1, 0.25, 2.333."""
    return f"{float(x):.4g}"


@dataclass(frozen=True)
class BiasKnob:
    """How a family turns the paper's bias λ in (0, 1] (1 = none) into its own sampling knob.

    ``name`` is the knob :func:`knob` returns (``{"guidance_scale": 1.0}``), ``label`` how it is
    shown (``"guidance w"``), ``forward`` λ -> knob and ``inverse`` knob -> λ. ``key`` is the
    native key the ``[sampling]`` table accepts instead of ``bias`` (None: λ only), ``native``
    its valid range in words. ``flattens``: native values beyond λ = 1 are allowed up to
    ``max_lambda`` (a temperature T > 1 flattens the distribution; it has no λ <= 1 form).
    """

    name: str
    label: str
    forward: Callable[[float], float]
    inverse: Callable[[float], float]
    key: str | None = None
    native: str = ""
    flattens: bool = False
    max_lambda: float = 1.0

    def knob(self, lam: float) -> dict[str, float]:
        return {self.name: self.forward(lam)}

    def describe(self, lam: float) -> str:
        """``λ = 0.5 (guidance w = 1)``; a flattening temperature says it has no λ <= 1 form."""
        text = f"λ = {number(lam)} ({self.label} = {number(self.forward(lam))})"
        return text + (" (flattens: no λ <= 1 form)" if lam > 1.0 else "")

    def native_lambda(self, value: float) -> tuple[float | None, str | None]:
        """(λ, None) for a valid native value, else (None, why)."""
        lam = self.inverse(value) if math.isfinite(value) and value >= 0.0 else math.nan
        top = self.max_lambda if self.flattens else 1.0
        if not (math.isfinite(lam) and 0.0 < lam <= top):
            return None, f"must be {self.native}, got {value}"
        return lam, None


#: gaussian, flow, sklearn: λ scales the variance (N(μ, λΣ))
VARIANCE_SCALE = BiasKnob("variance_scale", "variance scale", _identity, _identity)
#: gan: the latent truncation ψ = √λ (latent variance × λ)
TRUNCATION = BiasKnob(
    "truncation", "truncation ψ", math.sqrt, _square, key="truncation", native="ψ in (0, 1]"
)
#: vae: the latent scale τ = √λ (latent variance × λ), given natively as ``sampling.truncation``
LATENT_SCALE = BiasKnob(
    "latent_scale", "latent τ", math.sqrt, _square, key="truncation", native="τ in (0, 1]"
)
#: categorical, ngram, char-transformer: T = λ (a Gaussian tempered by 1/T is N(μ, TΣ))
TEMPERATURE = BiasKnob(
    "temperature",
    "temperature T",
    _identity,
    _identity,
    key="temperature",
    native="T in (0, 100] (T > 1 flattens)",
    flattens=True,
    max_lambda=100.0,
)
#: ddpm: classifier-free guidance w = 1/λ - 1 (λ = 1/(1+w); w = 0 is no guidance)
GUIDANCE = BiasKnob(
    "guidance_scale",
    "guidance w",
    _guidance,
    _from_guidance,
    key="guidance_scale",
    native="w >= 0 (finite)",
)
#: the ``[sampling]`` keys that give a family's native knob instead of λ
NATIVE_KEYS = ("guidance_scale", "truncation", "temperature")


class ModelConfig(Section):
    family: str
    #: how this family turns λ into its sampling knob (see :class:`BiasKnob`)
    bias_knob: ClassVar[BiasKnob] = VARIANCE_SCALE
    #: the fewest training points a fit accepts (validated for every generation of the loop)
    min_train_size: ClassVar[int] = 1
    #: whether the family samples from its top-k symbols given ``sampling.top_k``
    sampling_top_k: ClassVar[bool] = False
    #: whether the family fits weighted training sets (``Points.weight``, weighted ``Stats``),
    #: which ``loop.real_weight`` needs
    accepts_weights: ClassVar[bool] = False
    #: whether its R chains can fit training sets of different sizes (``loop.preprocess`` steps
    #: that remove points): per-replicate fits and the Gaussian's masked statistics can
    variable_train_size: ClassVar[bool] = True
    #: arrays of a training batch's size its fit holds at once beyond the loop's own copies
    #: (``madloop run --dry-run``; e.g. a least-squares fit's QR factors)
    fit_batch_copies: ClassVar[int] = 0

    def requested_mode(self) -> str:
        """``"exact"`` or ``"sample"``. A family with an exact (sufficient-statistics) mode
        declares a ``mode`` field; every other family samples points."""
        return str(self.__dict__.get("mode", "sample"))

    def state_size(self, event_size: int) -> int | None:
        """Floats of learned state per replicate, for ``madloop run --dry-run``; None: unknown."""
        return None

    def bias_problem(self, bias: float) -> str | None:
        """Why the bias λ is invalid for this family, or None. Default: λ in (0, 1]."""
        if not 0.0 < bias <= 1.0:
            return f"must be in (0, 1] for family '{self.family}', got {bias}"
        return None

    def bias_data_problem(self, bias: float, data: DataConfig) -> str | None:
        """Why this family cannot sample with bias λ from models of ``data``, or None (e.g.
        guidance needs labels)."""
        return None


def reals_problem(family: str, data: DataConfig) -> str | None:
    """Why a family of real-valued vectors / images cannot fit ``data``, or None."""
    if data.kind == "tokens":
        return (
            f"family '{family}' needs real-valued vectors or images, got data.source = "
            f"'{data.source}' (token ids); for tokens use family 'categorical', 'ngram' or "
            "'char-transformer'"
        )
    return None


class SamplingInput(Section):
    """The ``[sampling]`` table as written: λ as ``bias`` or one native key of the family."""

    bias: float | None = None
    guidance_scale: float | None = None  # ddpm: w >= 0
    truncation: float | None = None  # gan ψ, vae τ, in (0, 1]
    temperature: float | None = None  # categorical, ngram, char-transformer
    knob: dict[str, float] | None = None  # derived (resolved configs write it); re-checked
    top_k: int | None = Field(None, ge=1)  # categorical, ngram: the k most likely symbols only


class SamplingConfig(Section):
    """The resolved ``[sampling]`` table: ``bias`` is the paper's λ for every family (1 = no
    bias) and ``knob`` the family's native value(s) it maps to, e.g. ``{"guidance_scale": 1.0}``."""

    bias: float = 1.0
    knob: dict[str, float] = Field(default_factory=dict)
    #: sample only the k most likely symbols of the model, renormalised (None: all); composes
    #: with the bias (the temperature first, then the cut)
    top_k: int | None = None

    @model_serializer(mode="wrap")
    def _without_unset_top_k(self, handler: Any) -> dict[str, Any]:
        """Leave ``top_k`` out when unset: configs and manifests without a cut stay as before."""
        out = handler(self)
        if self.top_k is None:
            out.pop("top_k", None)
        return out


#: a size per generation: an int, or a list whose last value repeats
SizeField = int | list[int]


#: a finite number (NaN and infinities are refused with the field's name)
Finite = Annotated[float, Field(allow_inf_nan=False)]


class CurationSection(Section):
    """``loop.curation`` of a single-chain regime (see :mod:`madloop.curation`): each synthetic
    point is the Luce choice among ``choices`` candidates of the previous model, with probability
    ∝ exp(``scale`` · r(x)); r is the registered reward ``reward`` (``linear``: a·x with
    a = ``direction``; ``quadratic``: -||x - ``target``||²; ``classifier``: the real data's
    classifier confidence). The reward's name and params are checked against the data in
    :mod:`madloop.config.schema`."""

    reward: str = "linear"
    direction: list[Finite] | None = None
    target: list[Finite] | None = None
    choices: int = Field(2, ge=1, le=100_000)  # K = 1 is no curation
    scale: Finite = Field(1.0, gt=0.0)  # β: the reward's inverse temperature


class CorrectionSection(Section):
    """``loop.correction`` (see :mod:`madloop.correction`): synthetic points move a share
    γ/(1+γ) of the way to their optimally matched draws of the real law (γ = ``strength``)."""

    strength: Finite = Field(ge=0.0)


class LoopConfig(Section):
    """The ``[loop]`` table's common fields; a regime with more registers a subclass."""

    regime: str = "fully-synthetic"
    real_size: SizeField = 0
    synthetic_size: SizeField = 100
    initial_real_size: int | None = Field(None, ge=1)
    #: the real rows' share w in (0, 1) of the training weight (He, Xu, Cheng 2025): real rows
    #: weigh w / n_r, synthetic ones (1 - w) / n_s; None: every row the same
    real_weight: float | None = None

    @field_validator("real_weight")
    @classmethod
    def _weight_in_unit_interval(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 1.0:  # NaN fails too
            raise ValueError(
                f"must be in (0, 1) (the real rows' share of the training weight; 0.618 = 1/φ "
                f"is optimal for a mean with real_size = synthetic_size), got {v}"
            )
        return v
    curation: CurationSection | None = None  # reward-curated synthetic draws
    correction: CorrectionSection | None = None  # self-corrected synthetic draws
    #: steps applied to every generation's training set before the fit (madloop.preprocess)
    preprocess: tuple[PreprocessStep, ...] = ()


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


#: the experiment trackers ``[tracking]`` may name (:mod:`madloop.tracking` implements each)
TRACKING_BACKENDS = ("mlflow", "wandb")


class TrackingConfig(Section):
    """The ``[tracking]`` table: log a finished ``madloop run`` to an experiment tracker.

    ``backend`` names the tracker (only names from :data:`TRACKING_BACKENDS`: a config never
    names code to import). ``uri`` is where it writes: an ``http(s)://`` tracking server, or a
    relative path to a local store (``mlflow.db``, SQLite, the default; for ``wandb``, which
    runs offline, the folder its ``wandb/`` goes in; an absolute path or another URI is given on
    the command line, ``--track-uri``, like every path outside the run). ``experiment`` groups
    runs (default: the config's ``name``). Tracking changes no number of the run, so it is not
    part of a checkpoint's identity.
    """

    backend: str = "mlflow"
    uri: str | None = None
    experiment: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return check_choice(value, TRACKING_BACKENDS, "tracking backend")

    @field_validator("uri")
    @classmethod
    def _server_or_relative(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("http://", "https://")):
            return value
        posix = value.replace("\\", "/")
        drive = re.match(r"^[A-Za-z]:", posix)
        if "://" in value or value.startswith(("file:", "/", "~")) or drive:
            raise ValueError(
                "must be an http(s):// server or a relative path (mlflow.db); give any other "
                "URI or an absolute path on the command line (--track-uri)"
            )
        if not value or "\x00" in value or ".." in PurePosixPath(posix).parts:
            raise ValueError(
                "must be a path below the current directory ('..' is not allowed); give any "
                "other on the command line (--track-uri)"
            )
        return value


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
