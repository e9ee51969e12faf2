"""The ``[loop]`` table of ``regime = "web-pool"``: adoption schedules, detector, curation and
lineages (see :mod:`madloop.pool` for what they mean)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from madloop.config import LoopConfig, Section
from madloop.config.errors import field_path
from madloop.pool.curation import SCORERS

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
        usable = sorted(k for k, s in SCORERS.items() if not s.params)
        if v not in usable:  # a scorer with params (linear: a direction) is the loop's reward
            raise ValueError(f"unknown scorer {v!r} (available: {', '.join(usable)})")
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


FOUNDATION_SIZES = {"real_size": 0, "synthetic_size": 100, "initial_real_size": None}


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
            kind = v.get("kind")
            table = kinds.get(kind) if isinstance(kind, str) else None
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
                    key = field_path(e["loc"])
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
        for key, default in FOUNDATION_SIZES.items():
            if getattr(self, key) != default:
                raise ValueError(
                    f"{key}: not used by regime 'web-pool' (its sizes are loop.scrape_size, "
                    "loop.new_content and loop.initial_real); remove it"
                )
        if self.correction is not None:
            raise ValueError(
                "correction: not supported by regime 'web-pool' (it corrects a single chain's "
                "synthetic draws); use a single-chain regime such as 'accumulate', or remove it"
            )
        names = [lin.name for lin in self.lineages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"lineages: duplicate lineage name {dup[0]!r}")
        return self
