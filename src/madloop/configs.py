"""Base classes of the config sections. Each data source, model family and regime registers its own
subclass, so a new one brings its own validated fields without touching the experiment schema."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config table: unknown keys are errors (the message names the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    source: str


class ModelConfig(Section):
    family: str
    #: the fewest training points a fit accepts (validated for every generation of the loop)
    min_train_size: ClassVar[int] = 1

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
