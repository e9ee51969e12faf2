"""The ``web-pool`` regime: its config resolved into lineages, checks that need the [model] table,
and the schedule and detector it implies. It runs on :class:`madloop.pool.engine.PoolLoop`."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from madloop.capabilities import exact_requested
from madloop.config import ConfigError, ModelConfig, deep_merge, format_errors, nest_dotted
from madloop.models.base import load_families
from madloop.pool.config import LineageConfig, WebPoolConfig
from madloop.pool.detectors import Detector, watermarked_lineages
from madloop.pool.schedule import PoolSchedule
from madloop.regimes import Composition, Regime, register_regime


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
    engine = "web-pool"  # its lineages share a pool: madloop.pool.engine.PoolLoop runs them
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
            if not isinstance(family, str):
                msg = f"{where}.model.family: must be a string naming a family (one of: "
                msg += f"{', '.join(sorted(families))}), got {family!r}"
                _collect(problems, msg)
            elif family not in families:
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
        exact = all(exact_requested(s.model) for s in specs)
        if not cfg.refill and (not exact or cfg.curation.keep < 1):
            problems.append(
                "loop.refill: false (train on what the detector leaves, a random size) needs "
                "exact mode (model.mode = 'exact' for every lineage, no curation): sample-mode "
                "families train on batches of one size; set loop.refill = true"
            )
        return problems


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
