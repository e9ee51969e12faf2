"""The internet pool (``loop.regime = "web-pool"``): several model lineages publish into and scrape
from one pool of documents whose share of generated content grows.

**The pool.** Content enters in *cohorts*: the real content before generation 1
(``initial_real``), then at each generation t >= 2 ``new_content`` units, a share a_t of them
generated (the adoption schedule) and split among the lineages by their ``weight``; lineage k's
cohort of generation t was sampled (with its bias) from its generation t - 1. A cohort stays
reachable for ``max_age`` generations (all of them when unset). The pool is web-scale: a scrape
is a small random sample of it, so two scrapes never share a document and the items a scrape
takes from a cohort are fresh draws from the model that made it. The amounts are therefore rates:
only their ratios matter.

**A lineage's generation t.** Its scrape sees the pool as it was ``lag`` generations earlier
(a knowledge cutoff): n = ``scrape_size`` items, each from cohort c with probability proportional
to its amount (``scrape = "random"``; ``"proportional"`` takes the expected counts). A detector
drops flagged items (:mod:`madloop.detectors`); with ``refill`` (default) the lab scrapes until n
items pass, otherwise it trains on what is left (binomial thinning; ``exact`` mode only, and a
lineage left with fewer than ``min_train_size`` items keeps its model). Curation
(:mod:`madloop.curation`, ``sample`` mode) scrapes n / keep candidates that pass the detector and
keeps the n its current model rates highest. Generation 1 trains on n real items, as every loop.

Counts come first and items second, from the cohorts' models: the Gaussian ``exact`` mode draws
sufficient statistics for each count, ``sample`` mode draws the points, and both modes use the same
counts for the same seed. Each lineage's metrics are reported under the arm name
``"<arm>:<lineage>"`` (just ``"<arm>"`` when there is one lineage), with ``synthetic_share`` (the
share of generated items in its training set) next to the family's metrics; the Gaussian theory
of :mod:`madloop.theory.pool` gives the ``theory`` column.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, field_validator, model_validator

from madloop.config import (
    Arm,
    ConfigError,
    ExperimentConfig,
    LoopConfig,
    ModelConfig,
    Section,
    deep_merge,
    format_errors,
    nest_dotted,
)
from madloop.curation import SCORERS, top_k
from madloop.detectors import Detector, watermarked_lineages
from madloop.experiment import (
    RunResult,
    assemble_result,
    build_loop,
    gallery_generations,
    write_gallery,
    write_run,
)
from madloop.metrics import evaluate
from madloop.models.base import build_model, load_families
from madloop.regimes import Composition, Regime, register_regime
from madloop.tables import long_table, provenance_table
from madloop.theory.pool import REAL_SOURCE, Cohort, LineageLaw, apportion, pool_moments
from madloop.types import Points, Stats

Share = Annotated[float, Field(ge=0.0, le=1.0)]


# -- config ---------------------------------------------------------------------------------------
class ConstantAdoption(Section):
    kind: Literal["constant"]
    level: Share


class LinearAdoption(Section):
    """From ``start`` at generation 2 to ``end`` at generation 2 + ``ramp``, then flat."""

    kind: Literal["linear"]
    start: Share = 0.0
    end: Share
    ramp: int = Field(10, ge=1)


class LogisticAdoption(Section):
    """``ceiling`` / (1 + exp(-steepness (t - midpoint))) at generation t."""

    kind: Literal["logistic"]
    ceiling: Share = 1.0
    midpoint: float = 10.0
    steepness: float = Field(0.5, gt=0.0)


AdoptionTable = Annotated[
    ConstantAdoption | LinearAdoption | LogisticAdoption, Field(discriminator="kind")
]
AdoptionSpec = Share | list[Share] | AdoptionTable


def adoption_at(spec: AdoptionSpec, generation: int) -> float:
    """The generated share of the content published at ``generation`` (>= 2). A list gives one
    value per generation from generation 2 on; its last value repeats."""
    t = generation
    if isinstance(spec, int | float):
        return float(spec)
    if isinstance(spec, list):
        return float(spec[min(t - 2, len(spec) - 1)])
    if isinstance(spec, ConstantAdoption):
        return spec.level
    if isinstance(spec, LinearAdoption):
        return spec.start + (spec.end - spec.start) * min(1.0, (t - 2) / spec.ramp)
    return spec.ceiling / (1.0 + math.exp(-spec.steepness * (t - spec.midpoint)))


class DetectorConfig(Section):
    tpr: Share = 0.0
    fpr: Share = 0.0
    watermark_share: Share = 0.0


class CurationConfig(Section):
    score: str = "likelihood"
    keep: float = Field(1.0, gt=0.0, le=1.0)  # 1 = no curation

    @field_validator("score")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in SCORERS:
            raise ValueError(f"unknown scorer {v!r} (available: {', '.join(sorted(SCORERS))})")
        return v


class LineageConfig(Section):
    name: str
    weight: float = Field(1.0, ge=0.0)  # its part of the generated content published
    scrape_size: int | None = Field(None, ge=2)
    lag: int = Field(0, ge=0)
    watermark: bool | None = None
    bias: float | None = None
    model: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
            raise ValueError(f"must be letters, digits, '_', '.' or '-', got {v!r}")
        return v


_FOUNDATION_SIZES = {"real_size": 0, "synthetic_size": 100, "initial_real_size": None}


class WebPoolConfig(LoopConfig):
    """The ``[loop]`` table of ``regime = "web-pool"``."""

    regime: Literal["web-pool"] = "web-pool"
    scrape_size: int = Field(100, ge=2)
    new_content: float = Field(1.0, gt=0.0)
    initial_real: float = Field(1.0, gt=0.0)
    adoption: AdoptionSpec = 0.5
    max_age: int | None = Field(None, ge=1)
    scrape: Literal["random", "proportional"] = "random"
    refill: bool = True
    min_train_size: int = Field(2, ge=1)
    detector: DetectorConfig = DetectorConfig()
    curation: CurationConfig = CurationConfig()
    lineages: list[LineageConfig] = Field(default_factory=list)

    @field_validator("adoption", mode="wrap")
    @classmethod
    def _adoption(cls, v: Any, handler: Any) -> AdoptionSpec:
        """One clear message per mistake (a plain union would report every member's)."""
        kinds = {
            "constant": ConstantAdoption,
            "linear": LinearAdoption,
            "logistic": LogisticAdoption,
        }
        if isinstance(v, Mapping):
            table = kinds.get(v.get("kind"))
            if table is None:
                raise ValueError(
                    f"adoption: kind must be one of {', '.join(kinds)}, got {v.get('kind')!r} "
                    "(or give a share in [0, 1], or a list of shares per generation)"
                )
            try:
                return table.model_validate(v)
            except ValidationError as err:
                lines = []
                for e in err.errors():
                    key = ".".join(str(p) for p in e["loc"])
                    if e["type"] == "extra_forbidden":
                        valid = ", ".join(sorted(table.model_fields))
                        lines.append(f"unknown key {key!r} (valid: {valid})")
                    else:
                        lines.append(f"{key}: {e['msg'].lower()}, got {e.get('input')!r}")
                raise ValueError(f"adoption: {'; '.join(lines)}") from None
        values = v if isinstance(v, list) else [v]
        if isinstance(v, list) and not v:
            raise ValueError("adoption: must not be an empty list")
        for x in values:
            if isinstance(x, bool) or not isinstance(x, int | float) or not 0.0 <= x <= 1.0:
                raise ValueError(
                    f"adoption: a share of generated content must be a number in [0, 1], got {x!r}"
                )
        return handler(v)

    @model_validator(mode="after")
    def _checks(self) -> WebPoolConfig:
        for key, default in _FOUNDATION_SIZES.items():
            if getattr(self, key) != default:
                raise ValueError(
                    f"{key}: not used by regime 'web-pool' (its sizes are loop.scrape_size, "
                    "loop.new_content and loop.initial_real); remove it"
                )
        names = [lin.name for lin in self.lineages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"lineages: duplicate lineage name {dup[0]!r}")
        return self


# -- the pool's schedule (deterministic) ----------------------------------------------------------
class PoolSchedule:
    """Which cohorts exist and which a scrape reaches; no randomness, shared with the theory."""

    def __init__(self, cfg: WebPoolConfig, weights: list[float]) -> None:
        self.cfg = cfg
        self.weights = np.asarray(weights, dtype=float)
        self._published: dict[int, list[Cohort]] = {}

    def adoption(self, generation: int) -> float:
        return adoption_at(self.cfg.adoption, generation)

    def published(self, generation: int) -> list[Cohort]:
        """The cohorts that enter the pool at ``generation``."""
        t = generation
        if t not in self._published:
            if t <= 1:
                out = [Cohort(REAL_SOURCE, 1, self.cfg.initial_real)] if t == 1 else []
            else:
                a = self.adoption(t)
                new = self.cfg.new_content
                out = [Cohort(REAL_SOURCE, t, new * (1 - a))]
                total = self.weights.sum()
                if total > 0:
                    out += [
                        Cohort(1 + k, t, new * a * w / total) for k, w in enumerate(self.weights)
                    ]
            self._published[t] = [c for c in out if c.amount > 0]
        return self._published[t]

    def as_of(self, generation: int, lag: int) -> int:
        return max(1, generation - lag)

    def reachable(self, generation: int, lag: int = 0) -> list[Cohort]:
        """Cohorts a scrape at ``generation`` with knowledge cutoff ``lag`` can reach: published
        no later than u = generation - lag and not aged out by then."""
        u = self.as_of(generation, lag)
        first = 1 if self.cfg.max_age is None else max(1, u - self.cfg.max_age + 1)
        return [c for s in range(first, u + 1) for c in self.published(s)]


# -- the regime -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineageSpec:
    """A lineage resolved against its arm: its own model config and sampling bias."""

    name: str
    index: int
    model: ModelConfig
    bias: float
    scrape_size: int
    lag: int
    weight: float
    watermark: bool

    @property
    def key(self) -> int:
        """Its branch of the seed tree, keyed by its name."""
        return zlib.crc32(self.name.encode())


@register_regime
class WebPool(Regime):
    """Several lineages sharing one pool: run by :class:`PoolLoop`, not by the single-chain
    :class:`madloop.loop.Loop` (so :meth:`compose` has no meaning here)."""

    name = "web-pool"
    config = WebPoolConfig
    exact = True
    uses_real_size = True

    def __init__(self, **params: Any) -> None:
        params.pop("regime", None)
        self.cfg = WebPoolConfig(regime="web-pool", **params)
        super().__init__()

    def compose(self, generation: int) -> Composition:
        raise TypeError(
            "regime 'web-pool' has no single-chain recipe: its lineages share a pool; it runs on "
            "madloop.pool.PoolLoop (experiment.run does this for you)"
        )

    def lineage_configs(self) -> list[LineageConfig]:
        return list(self.cfg.lineages) or [LineageConfig(name="model")]

    def schedule(self) -> PoolSchedule:
        return PoolSchedule(self.cfg, [lin.weight for lin in self.lineage_configs()])

    def detector(self) -> Detector:
        lins = self.lineage_configs()
        d = self.cfg.detector
        marked = watermarked_lineages([lin.watermark for lin in lins], d.watermark_share)
        return Detector(d.tpr, d.fpr, marked)

    def resolve(
        self, model: ModelConfig, bias: float, problems: list[str] | None = None
    ) -> list[LineageSpec]:
        """Each lineage's model config ([model] with its overrides) and bias."""
        out = []
        marked = self.detector().watermarked
        families = load_families()
        for k, lin in enumerate(self.lineage_configs()):
            where = f"loop.lineages[{lin.name}]"
            over = nest_dotted(lin.model)
            raw = model.model_dump()
            if "family" in over and over["family"] != raw.get("family"):
                raw = dict(over)  # another family: the base's fields belong to the old one
            else:
                raw = deep_merge(raw, over)
            cfg: ModelConfig | None = None
            family = raw.get("family")
            if family not in families:
                msg = f"{where}.model.family: unknown family {family!r} (available: "
                msg += f"{', '.join(sorted(families))})"
                _collect(problems, msg)
            else:
                cls = families[family].config
                try:
                    cfg = cls.model_validate(raw)
                except ValidationError as err:
                    for line in format_errors(f"{where}.model", err, cls):
                        _collect(problems, line)
            b = bias if lin.bias is None else lin.bias
            if cfg is not None:
                why = cfg.bias_problem(b) if lin.bias is not None else None
                if why:  # the base bias is checked with [sampling]
                    _collect(problems, f"{where}.bias: {why}")
                out.append(
                    LineageSpec(
                        lin.name,
                        k,
                        cfg,
                        b,
                        lin.scrape_size or self.cfg.scrape_size,
                        lin.lag,
                        lin.weight,
                        k in marked,
                    )
                )
        return out

    def config_problems(self, model: ModelConfig | None) -> list[str]:
        """Problems that need the [model] table too (called by experiment validation)."""
        if model is None:
            return []
        problems: list[str] = []
        specs = self.resolve(model, 1.0, problems)
        cfg = self.cfg
        exact = all(getattr(s.model, "mode", "sample") == "exact" for s in specs)
        if not cfg.refill and (not exact or cfg.curation.keep < 1):
            problems.append(
                "loop.refill: false (train on what the detector leaves, a random size) needs "
                "exact mode (model.mode = 'exact' for every lineage, no curation): sample-mode "
                "families train on batches of one size; set loop.refill = true"
            )
        return problems

    # -- hooks used by madloop.experiment --------------------------------------------------------
    @staticmethod
    def theory_frame(arm: Arm) -> pd.DataFrame:
        return pool_theory_frame(arm)

    @staticmethod
    def run_experiment(base: ExperimentConfig, arms: list[Arm], **kwargs: Any) -> RunResult:
        return run_experiment(base, arms, **kwargs)


def _collect(problems: list[str] | None, line: str) -> None:
    if problems is None:
        raise ConfigError([line])
    problems.append(line)


def schedule_problems(regime: WebPool, specs: list[LineageSpec], generations: int) -> list[str]:
    """Generations where a lineage's scrape finds nothing, or nothing its detector lets through."""
    sched, det = regime.schedule(), regime.detector()
    for t in range(2, generations + 1):
        for s in specs:
            cohorts = sched.reachable(t, s.lag)
            if not cohorts:
                return [
                    f"loop: at generation {t} the pool lineage '{s.name}' scrapes is empty "
                    "(everything aged out): raise loop.max_age or loop.new_content"
                ]
            if regime.cfg.refill:
                q = sum(c.amount * det.keep_probability(c.source) for c in cohorts)
                if q <= 0:
                    return [
                        f"loop.detector: at generation {t} the detector drops everything lineage "
                        f"'{s.name}' can scrape (all of it generated and flagged), so refill never "
                        "ends: lower loop.detector.tpr, keep real content (loop.adoption < 1, "
                        "loop.max_age) or set loop.refill = false"
                    ]
    return []


# -- the engine -----------------------------------------------------------------------------------
@dataclass
class Lineage:
    spec: LineageSpec
    model: Any
    make_model: Callable[[], Any]


@dataclass
class PoolRecord:
    """One lineage's generation: metrics (R,) each, and the make-up of its training set as
    {(source, published generation): kept counts (R,)} (source 0 real, 1 + k lineage k)."""

    generation: int
    lineage: str
    metrics: dict[str, np.ndarray]
    counts: dict[tuple[int, int], np.ndarray]
    train_size: np.ndarray


def _snapshot(lin: Lineage) -> Any:
    """A frozen copy of a lineage's current model, rebuilt from its checkpoint arrays (copied, so
    a warm-started family that trains in place cannot change published content)."""
    model = lin.make_model()
    model.set_state({k: np.array(v, copy=True) for k, v in lin.model.get_state().items()})
    return model


def draw_stats_counts(
    mean: np.ndarray,
    factor: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: float = 1.0,
) -> Stats:
    """Sufficient statistics of counts[r] draws from N(mean[r], scale · L L^T), one count per
    replicate (0 and 1 allowed): x̄ ~ N(mean, scale Σ/m), S ~ Wishart(scale Σ, m - 1) by Bartlett
    with a per-replicate degree of freedom. Random numbers drawn do not depend on the counts."""
    R, d = mean.shape
    m = np.asarray(counts, dtype=np.int64)
    z = rng.standard_normal((R, d))
    root = np.sqrt(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(m > 0, root / np.sqrt(np.maximum(m, 1)), 0.0)
    xbar = mean + step[:, None] * np.einsum("rij,rj->ri", factor, z)
    dof = m - 1
    i = np.arange(d)
    chi = rng.chisquare(np.maximum(dof[:, None] - i[None, :], 1), size=(R, d))
    A = np.zeros((R, d, d))
    A[:, i, i] = np.where(dof[:, None] - i[None, :] >= 1, np.sqrt(chi), 0.0)
    rows, cols = np.tril_indices(d, -1)
    normals = rng.standard_normal((R, rows.size))
    A[:, rows, cols] = np.where(cols[None, :] < dof[:, None], normals, 0.0)
    return Stats(m, xbar, root * (factor @ A))


def merge_stats(parts: list[Stats]) -> Stats:
    """Union of batches in one QR (zero counts allowed): S = Σ S_c + Σ m_c (x̄_c - x̄)(x̄_c - x̄)^T."""
    counts = np.stack([p.count for p in parts], axis=1).astype(float)  # (R, C)
    means = np.stack([p.mean for p in parts], axis=1)  # (R, C, d)
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.einsum("rc,rcd->rd", counts, means) / np.where(total > 0, total, 1.0)[:, None]
    dev = np.sqrt(counts)[:, :, None] * np.where(counts[:, :, None] > 0, means - mean[:, None], 0)
    stacked = np.concatenate([np.swapaxes(p.factor, 1, 2) for p in parts] + [dev], axis=1)
    r = np.linalg.qr(stacked, mode="r")
    factor = np.swapaxes(r, 1, 2)
    # QR may flip signs of rows: a factor is defined up to them, keep the diagonal non-negative
    sign = np.where(np.diagonal(factor, axis1=1, axis2=2) < 0, -1.0, 1.0)
    prov: dict[tuple[int, int], np.ndarray] = {}
    for p in parts:
        for k, v in p.provenance.items():
            prov[k] = prov.get(k, 0) + v
    return Stats(total.astype(np.int64), mean, factor * sign[:, None, :], prov)


def _splice_state(
    new: dict[str, np.ndarray], old: dict[str, np.ndarray], keep_old: np.ndarray
) -> dict[str, np.ndarray]:
    """Per replicate, the old state where ``keep_old``: arrays with a leading replicate axis, or
    keys prefixed ``r{i}/`` (:class:`madloop.models.base.PerReplicate`)."""
    R = keep_old.size
    out = {}
    for key, value in new.items():
        m = re.match(r"r(\d+)/", key)
        if m:
            out[key] = old[key] if keep_old[int(m.group(1))] else value
        elif np.ndim(value) >= 1 and np.shape(value)[0] == R:
            mask = keep_old.reshape((R,) + (1,) * (np.ndim(value) - 1))
            out[key] = np.where(mask, old[key], value)
        else:
            raise ValueError(f"cannot keep the previous model per replicate for state {key!r}")
    return out


class PoolLoop:
    """R replicate chains of K lineages sharing one web-scale pool (see the module docstring).

    Seeds: lineage k's generation t uses ``SeedSequence(seed, spawn_key=(stream, t, key_k))``
    with key_k a hash of its name, split into counts, items, fit, metrics and gallery streams.
    """

    def __init__(
        self,
        regime: WebPool,
        lineages: list[Lineage],
        real: Any,
        *,
        replicates: int = 1,
        exact: bool = False,
        seed: int = 0,
        stream: int = 0,
    ) -> None:
        self.regime = regime
        self.cfg = regime.cfg
        self.lineages = lineages
        self.real = real
        self.replicates = replicates
        self.seed = seed
        self.stream = stream
        self.schedule = regime.schedule()
        self.detector = regime.detector()
        self.curate = self.cfg.curation.keep < 1.0
        self.exact = exact and not self.curate and self.exact_supported(lineages, real)
        if not self.cfg.refill and not self.exact:
            raise ConfigError(
                [
                    "loop.refill: false needs exact mode, which these lineages cannot run "
                    "(every family needs fit_stats and moments); set loop.refill = true"
                ]
            )
        self.scorer = SCORERS[self.cfg.curation.score] if self.curate else None
        if self.scorer is not None:
            for lin in lineages:
                why = self.scorer.problem(lin.model, real)
                if why:
                    raise ConfigError([f"loop.curation.score: {why}"])
        self.generation = 0
        self.samplers: dict[tuple[int, int], Any] = {}  # (lineage index, generation) -> model
        self.last_train: dict[str, tuple[Points | Stats, np.ndarray | None]] = {}

    @staticmethod
    def exact_supported(lineages: list[Lineage], real: Any) -> bool:
        return hasattr(real, "moments") and all(
            hasattr(lin.model, "fit_stats") and hasattr(lin.model, "moments") for lin in lineages
        )

    def run(self, generations: int) -> Iterator[list[PoolRecord]]:
        while self.generation < generations:
            yield self.step()

    def step(self) -> list[PoolRecord]:
        t = self.generation + 1
        if t >= 2:  # publish: every lineage's generation t - 1 enters the pool
            for lin in self.lineages:
                if any(c.source == 1 + lin.spec.index for c in self.schedule.published(t)):
                    self.samplers[(lin.spec.index, t - 1)] = _snapshot(lin)
            self._forget(t)
        records = [self._train(lin, t) for lin in self.lineages]
        self.generation = t
        return records

    def _forget(self, t: int) -> None:
        """Drop the models whose content no future scrape can reach."""
        if self.cfg.max_age is None:
            return
        max_lag = max(lin.spec.lag for lin in self.lineages)
        oldest = t - max_lag - self.cfg.max_age + 1  # earliest publication still reachable
        for key in [k for k in self.samplers if k[1] + 1 < oldest]:
            del self.samplers[key]

    # -- one lineage's generation --------------------------------------------------------------
    def _seeds(self, lin: Lineage, t: int) -> list[np.random.Generator]:
        ss = np.random.SeedSequence(self.seed, spawn_key=(self.stream, t, lin.spec.key))
        return [np.random.default_rng(s) for s in ss.spawn(5)]

    def _counts(
        self, lin: Lineage, t: int, rng: np.random.Generator
    ) -> tuple[list[Cohort], np.ndarray]:
        """The cohorts reached and the items kept from each, (R, C), before curation."""
        R, n = self.replicates, lin.spec.scrape_size
        if t == 1:
            return [Cohort(REAL_SOURCE, 1, self.cfg.initial_real)], np.full((R, 1), n)
        cohorts = self.schedule.reachable(t, lin.spec.lag)
        amounts = np.array([c.amount for c in cohorts])
        q = self.detector.keep_probabilities([c.source for c in cohorts])
        pi = amounts / amounts.sum()
        if self.cfg.refill:
            size = math.ceil(n / self.cfg.curation.keep) if self.curate else n
            w = pi * q
            if self.cfg.scrape == "proportional":
                return cohorts, np.broadcast_to(apportion(size, w), (R, len(cohorts))).copy()
            return cohorts, rng.multinomial(size, w / w.sum(), size=R)
        if self.cfg.scrape == "proportional":
            kept = np.floor(apportion(n, pi) * q + 0.5).astype(np.int64)
            return cohorts, np.broadcast_to(kept, (R, len(cohorts))).copy()
        return cohorts, self.detector.thin(
            rng.multinomial(n, pi, size=R), [c.source for c in cohorts], rng
        )

    def _groups(self, cohorts: list[Cohort]) -> list[tuple[Any, float, int, int, list[int]]]:
        """Cohorts by the model that made them: (model or None for real, bias, source, origin,
        cohort positions), in a fixed order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(cohorts):
            groups.setdefault((c.source, c.origin), []).append(i)
        out = []
        for (source, origin), idx in groups.items():
            if source == REAL_SOURCE:
                out.append((None, 1.0, source, origin, idx))
            else:
                lin = self.lineages[source - 1]
                out.append(
                    (self.samplers[(source - 1, origin)], lin.spec.bias, source, origin, idx)
                )
        return out

    def _train(self, lin: Lineage, t: int) -> PoolRecord:
        count_rng, draw_rng, fit_rng, metric_rng, _ = self._seeds(lin, t)
        cohorts, counts = self._counts(lin, t, count_rng)
        R = self.replicates
        if self.exact:
            train = self._draw_stats(cohorts, counts, draw_rng)
            kept = counts
            size = train.count
            fit_ok = size >= self.cfg.min_train_size
            previous = None if fit_ok.all() or t == 1 else lin.model.get_state()
            with np.errstate(divide="ignore", invalid="ignore"):
                lin.model.fit_stats(train)
            if previous is not None:
                lin.model.set_state(_splice_state(lin.model.get_state(), previous, ~fit_ok))
            self.last_train[lin.spec.name] = (train, None)
        else:
            points, cid = self._draw_points(cohorts, counts, draw_rng)
            if self.curate and t >= 2:
                scores = self.scorer.score(lin.model, self.real, points)
                best = top_k(scores, lin.spec.scrape_size, draw_rng)
                points, cid = points.take(best), np.take_along_axis(cid, best, axis=1)
            kept = np.stack([(cid == i).sum(axis=1) for i in range(len(cohorts))], axis=1)
            size = np.full(R, points.size)
            lin.model.fit_points(points, rng=fit_rng)
            published = np.array([c.published for c in cohorts])[cid]
            self.last_train[lin.spec.name] = (points, published)
        metrics = evaluate(lin.model, self.real, rng=metric_rng, generation=t)
        real_cols = [i for i, c in enumerate(cohorts) if c.source == REAL_SOURCE]
        total = kept.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            metrics["synthetic_share"] = np.where(
                total > 0, 1.0 - kept[:, real_cols].sum(axis=1) / np.maximum(total, 1), np.nan
            )
        if not self.cfg.refill:
            metrics["train_size"] = np.asarray(total, dtype=float)
        by_cohort = {(c.source, c.published): kept[:, i] for i, c in enumerate(cohorts)}
        return PoolRecord(t, lin.spec.name, metrics, by_cohort, np.asarray(size))

    def _draw_stats(
        self, cohorts: list[Cohort], counts: np.ndarray, rng: np.random.Generator
    ) -> Stats:
        R = self.replicates
        parts = []
        for model, bias, _source, _origin, idx in self._groups(cohorts):
            if model is None:
                mean0, factor0 = self.real.moments()
                mean = np.broadcast_to(mean0, (R,) + mean0.shape)
                factor = np.broadcast_to(factor0, (R,) + factor0.shape)
            else:
                mean, factor = model.moments()
            stats = draw_stats_counts(mean, factor, counts[:, idx].sum(axis=1), rng, scale=bias)
            stats.provenance = {}
            for i in idx:
                key = (cohorts[i].source, cohorts[i].origin)
                stats.provenance[key] = stats.provenance.get(key, 0) + counts[:, i]
            parts.append(stats)
        return merge_stats(parts)

    def _draw_points(
        self, cohorts: list[Cohort], counts: np.ndarray, rng: np.random.Generator
    ) -> tuple[Points, np.ndarray]:
        """The items, (R, size) with their cohort index per row, rows shuffled per replicate."""
        R = self.replicates
        batches, ids = [], []
        for model, bias, source, origin, idx in self._groups(cohorts):
            c = counts[:, idx]  # (R, Cg)
            top = int(c.sum(axis=1).max())
            if top == 0:
                continue
            if model is None:
                pts = self.real.sample_points(top, replicates=R, rng=rng)
            else:
                pts = model.sample_points(top, bias=bias, rng=rng)
            pts.source = np.full((R, top), source, dtype=np.int8)
            pts.origin = np.full((R, top), origin, dtype=np.int32)
            # row j of replicate r belongs to the cohort whose cumulative count first exceeds j
            ends = np.cumsum(c, axis=1)  # (R, Cg)
            j = np.arange(top)
            which = (j[None, None, :] >= ends[:, :, None]).sum(axis=1)  # (R, top)
            valid = j[None, :] < ends[:, -1:]
            ids.append(np.where(valid, np.asarray(idx)[np.minimum(which, len(idx) - 1)], -1))
            batches.append(pts)
        points = Points.concat(batches)
        cid = np.concatenate(ids, axis=1)
        size = int((cid[0] >= 0).sum())
        rows = np.nonzero(cid >= 0)[1].reshape(R, size)
        rows = rng.permuted(rows, axis=1)
        return points.take(rows), np.take_along_axis(cid, rows, axis=1)

    def gallery(self, lin: Lineage, n: int) -> Points:
        seed = self._seeds(lin, self.generation)[4]
        points = lin.model.sample_points(n, bias=lin.spec.bias, rng=seed)
        points.source = np.full(points.X.shape[:2], 1 + lin.spec.index, dtype=np.int8)
        points.origin = np.full(points.X.shape[:2], self.generation, dtype=np.int32)
        return points


# -- building and running arms --------------------------------------------------------------------
def is_pool(arm: Arm) -> bool:
    return arm.config.loop.regime == WebPool.name


def lineage_arm(arm: str, lineage: str, k: int) -> str:
    return arm if k == 1 else f"{arm}:{lineage}"


def _real_source(cfg: ExperimentConfig) -> Any:
    from madloop.data import build_source

    return build_source(
        cfg.data, rng=np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    )


def build_pool(arm: Arm) -> PoolLoop:
    cfg = arm.config
    regime = WebPool(**cfg.loop.model_dump())
    real = _real_source(cfg)
    specs = regime.resolve(cfg.model, cfg.sampling.bias)
    problems = schedule_problems(regime, specs, cfg.generations)
    if problems:
        raise ConfigError([f"arms[{arm.name}]: {p}" if arm.name != "base" else p for p in problems])
    lineages = []
    for spec in specs:

        def make(spec: LineageSpec = spec) -> Any:
            return build_model(spec.model, replicates=cfg.replicates, real=real)

        lineages.append(Lineage(spec, make(), make))
    exact = all(getattr(s.model, "mode", "sample") == "exact" for s in specs)
    return PoolLoop(
        regime,
        lineages,
        real,
        replicates=cfg.replicates,
        exact=exact,
        seed=cfg.seed,
        stream=arm.stream,
    )


def pool_frames(
    arm: str, loop: PoolLoop, records: list[list[PoolRecord]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics (long table) and provenance rows of a pool arm, one arm name per lineage."""
    K = len(loop.lineages)
    names = [lin.spec.name for lin in loop.lineages]
    metrics, prov = [], []
    for k, name in enumerate(names):
        label = lineage_arm(arm, name, K)
        recs = [gen[k] for gen in records]
        metrics.append(long_table(label, recs))
        rows = []
        for r in recs:
            for (source, published), counts in sorted(r.counts.items()):
                counts = np.asarray(counts)
                rows.append(
                    {
                        "arm": label,
                        "generation": r.generation,
                        "source": "real"
                        if source == REAL_SOURCE
                        else f"lineage:{names[source - 1]}",
                        "origin_generation": 0 if source == REAL_SOURCE else published - 1,
                        "published": published,
                        "count_mean": float(np.mean(counts)),
                        "count_min": int(np.min(counts)),
                        "count_max": int(np.max(counts)),
                    }
                )
        prov.append(pd.DataFrame(rows))
    return pd.concat(metrics, ignore_index=True), pd.concat(prov, ignore_index=True)


def write_pool_gallery(loop: PoolLoop, out: Path, arm: str) -> list[Path]:
    render = getattr(loop.real, "render_samples", None)
    if render is None:
        return []
    paths = []
    K = len(loop.lineages)
    for lin in loop.lineages:
        label = lineage_arm(arm, lin.spec.name, K).replace(":", "-")
        stem = out / "plots" / "samples" / f"{label}_gen{loop.generation:03d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        paths += render(loop.gallery(lin, 256), stem)
    return paths


def run_experiment(
    base: ExperimentConfig,
    arms: list[Arm],
    *,
    out: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    plots: bool = True,
) -> RunResult:
    """:func:`madloop.experiment.run` for configs with web-pool arms (other arms run as usual)."""
    started = time.time()
    out = Path(out) if out is not None else None
    pools = {arm.name: build_pool(arm) for arm in arms if is_pool(arm)}  # every check first
    frames, prov, timings, modes = [], [], {}, {}
    for arm in arms:
        t0 = time.perf_counter()
        T = arm.config.generations
        if is_pool(arm):
            loop = pools.pop(arm.name)
            modes[arm.name] = "exact" if loop.exact else "sample"
            records = []
            for recs in loop.run(T):
                records.append(recs)
                if out is not None and loop.generation in gallery_generations(T):
                    write_pool_gallery(loop, out, arm.name)
                if progress is not None:
                    progress(arm.name, loop.generation, T)
            metrics, provenance = pool_frames(arm.name, loop, records)
            frames.append(metrics)
            prov.append(provenance)
        else:
            single = build_loop(arm)
            modes[arm.name] = "exact" if single.exact else "sample"
            recs = []
            for rec in single.run(T):
                recs.append(rec)
                if out is not None and rec.generation in gallery_generations(T):
                    write_gallery(single, out, arm.name)
                if progress is not None:
                    progress(arm.name, rec.generation, T)
            frames.append(long_table(arm.name, recs))
            prov.append(provenance_table(arm.name, recs))
        timings[arm.name] = round(time.perf_counter() - t0, 4)
    result = assemble_result(base, arms, frames, prov, modes, timings, started)
    if out is not None:
        write_run(result, out, plots=plots)
    return result


# -- theory rows ----------------------------------------------------------------------------------
@dataclass
class PoolTheory:
    """Expected metrics per lineage name -> metric -> (T,) and the arm labels."""

    values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


def pool_theory(
    arm: Arm, generations: int | None = None, **loop_overrides: Any
) -> PoolTheory | None:
    """The Gaussian theory of a web-pool arm (None where it does not apply: non-Gaussian data or
    lineage, or curation). ``loop_overrides`` replace [loop] fields (e.g. ``adoption``)."""
    cfg = arm.config
    if cfg.data.source != "gaussian":
        return None
    loop = cfg.loop.model_dump()
    loop.update(loop_overrides)
    regime = WebPool(**loop)
    if regime.cfg.curation.keep < 1:
        return None
    specs = regime.resolve(cfg.model, cfg.sampling.bias)
    if any(s.model.family != "gaussian" for s in specs):
        return None
    real = _real_source(cfg)
    trace0 = float(np.trace(real.covariance))
    laws = [
        LineageLaw(
            s.name,
            s.scrape_size,
            s.lag,
            s.bias,
            getattr(s.model, "covariance_estimator", "unbiased"),
        )
        for s in specs
    ]
    sched, det = regime.schedule(), regime.detector()
    T = generations or cfg.generations
    raw = pool_moments(
        laws,
        sched.reachable,
        det.keep_probability,
        T,
        refill=regime.cfg.refill,
        scrape=regime.cfg.scrape,
        min_train=regime.cfg.min_train_size,
        max_age=regime.cfg.max_age,
    )
    out = PoolTheory()
    for s in specs:
        v = raw[s.name]
        out.values[s.name] = {
            "trace_ratio": v["trace_ratio"],
            "mean_error_sq": v["mean_error_sq_per_trace"] * trace0,
            "synthetic_share": v["synthetic_share"],
        }
        out.labels[s.name] = lineage_arm(arm.name, s.name, len(specs))
    return out


def pool_theory_frame(arm: Arm) -> pd.DataFrame:
    th = pool_theory(arm)
    if th is None:  # typed, so concatenating it keeps the other arms' dtypes
        return pd.DataFrame(
            {
                "arm": pd.Series(dtype=object),
                "generation": pd.Series(dtype=np.int64),
                "metric": pd.Series(dtype=object),
                "theory": pd.Series(dtype=float),
            }
        )
    rows = []
    for name, metrics in th.values.items():
        for metric, values in metrics.items():
            rows.append(
                pd.DataFrame(
                    {
                        "arm": th.labels[name],
                        "generation": np.arange(1, values.size + 1),
                        "metric": metric,
                        "theory": values,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def phase_boundary(
    arm: Arm,
    adoptions: list[float] | np.ndarray,
    *,
    tolerance: float = 2.0,
    generation: int | None = None,
    lineage: str | None = None,
) -> pd.DataFrame:
    """The theory's collapse boundary over (adoption, detector TPR) for a web-pool arm: for each
    constant adoption share, the TPR at which the expected ``mean_error_sq`` at ``generation``
    (default the last) equals ``tolerance`` x the fresh-data level tr Σ_0 / n. Below that TPR the
    error is larger. ``critical_tpr`` is 0 where no detector is needed and NaN where even a
    perfect detector is not enough. Also gives the stationary closed form
    (:func:`madloop.theory.pool.critical_tpr`) for comparison."""
    from scipy import optimize

    from madloop.theory.pool import critical_tpr

    cfg = arm.config
    T = generation or cfg.generations
    real = _real_source(cfg)
    trace0 = float(np.trace(real.covariance))
    regime = WebPool(**cfg.loop.model_dump())
    specs = regime.resolve(cfg.model, cfg.sampling.bias)
    spec = specs[0] if lineage is None else next(s for s in specs if s.name == lineage)
    level = tolerance * trace0 / spec.scrape_size
    detector = cfg.loop.detector.model_dump()

    def error(a: float, tpr: float) -> float:
        th = pool_theory(arm, T, adoption=float(a), detector={**detector, "tpr": float(tpr)})
        assert th is not None, (
            "phase_boundary needs the Gaussian theory (Gaussian data, no curation)"
        )
        return float(th.values[spec.name]["mean_error_sq"][T - 1]) - level

    rows = []
    for a in adoptions:
        lo, hi = error(a, 0.0), error(a, 1.0)
        if lo <= 0:
            tpr = 0.0
        elif hi > 0 or not np.isfinite(hi):
            tpr = np.nan
        else:
            tpr = float(optimize.brentq(lambda x, a=a: error(a, x), 0.0, 1.0, xtol=1e-6))
        rows.append(
            {
                "adoption": float(a),
                "critical_tpr": tpr,
                "stationary_critical_tpr": float(
                    critical_tpr(
                        a,
                        n=spec.scrape_size,
                        fpr=cfg.loop.detector.fpr,
                        bias=spec.bias,
                        tolerance=tolerance,
                        estimator=getattr(spec.model, "covariance_estimator", "unbiased"),
                    )
                ),
            }
        )
    return pd.DataFrame(rows)
