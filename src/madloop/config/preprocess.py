"""The ``loop.preprocess`` steps as a config writes them, and the checks that need the other tables.

A training set is processed by people before it is fitted (outliers clipped, duplicates dropped,
features standardised, images aligned); each step trims the distribution's edges, and a
self-consuming loop repeats the trimming every generation. ``loop.preprocess`` is an ordered
list of such steps, applied to every generation's training set after it is composed and before
the fit (:mod:`madloop.preprocess` runs them)::

    [[loop.preprocess]]
    step = "clip"         # drop points farther than radius from the set's own mean
    radius = 2.0          # ... in the set's own Mahalanobis metric (or keep = q: the closest q)
    applies_to = "all"    # "real", "synthetic" or "all" (default)
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from madloop.config.errors import check_choice

#: the steps, in the words a config uses
STEPS = ("align", "clip", "dedup", "standardise")
#: which rows of a training set a step looks at and may change or remove
APPLIES_TO = ("all", "real", "synthetic")
#: the steps that remove points (so training sets differ in size across replicates)
REMOVING = ("clip", "dedup")


class PreprocessStep(BaseModel):
    """One step of ``loop.preprocess``.

    ``clip``: drop points farther than ``radius`` from the rows' own sample mean in the metric of
    their own sample covariance, or keep the ``keep`` share closest to it. ``dedup``: drop a point
    within ``tolerance`` (Euclidean) of an earlier kept one (0: exact duplicates). ``standardise``:
    map each coordinate to the real law's mean and standard deviation. ``align``: rotate about the
    own mean to the own principal axes (vectors), or shift each image by whole pixels so its mass
    is centred (images). ``applies_to`` names the rows it looks at.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)  # as every Section (sections.py)

    step: str
    radius: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    keep: float | None = Field(None, gt=0.0, le=1.0)
    tolerance: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    applies_to: str = "all"

    #: which parameters each step takes
    PARAMETERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "clip": ("radius", "keep"),
        "dedup": ("tolerance",),
        "standardise": (),
        "align": (),
    }

    @field_validator("step")
    @classmethod
    def _known_step(cls, value: str) -> str:
        return check_choice(value, STEPS, "step")

    @field_validator("applies_to")
    @classmethod
    def _known_source(cls, value: str) -> str:
        return check_choice(value, APPLIES_TO, "source")

    @model_validator(mode="after")
    def _parameters(self) -> PreprocessStep:
        own = self.PARAMETERS[self.step]
        given = [k for k in ("radius", "keep") if getattr(self, k) is not None]
        if self.tolerance != 0.0:
            given.append("tolerance")
        foreign = [k for k in given if k not in own]
        if foreign:
            takes = ", ".join(own) if own else "no parameters"
            raise ValueError(f"{foreign[0]}: step {self.step!r} takes {takes}; remove it")
        if self.step == "clip" and len(given) != 1:
            raise ValueError(
                "radius: step 'clip' needs exactly one of radius = k (> 0, a Mahalanobis "
                "radius) or keep = q (in (0, 1], the share of points kept)"
            )
        return self

    @property
    def removes(self) -> bool:
        return self.step in REMOVING

    @property
    def describe(self) -> str:
        """``clip radius = 2 (all)``: how tables and notes name the step."""
        own = self.PARAMETERS[self.step]
        params = [f"{k} = {getattr(self, k):g}" for k in own if getattr(self, k) is not None]
        return " ".join([self.step, *params]) + f" ({self.applies_to})"


def exact_steps(steps: tuple[PreprocessStep, ...]) -> bool:
    """Whether the steps are functions of the sufficient statistics of the whole training set
    (so a Gaussian arm keeps its ``exact`` mode): only ``standardise`` of all rows is (an affine
    map of the mean and scatter); a clip, a dedup or an alignment looks at each point."""
    return all(s.step == "standardise" and s.applies_to == "all" for s in steps)


def preprocess_problems(
    steps: tuple[PreprocessStep, ...],
    model: Any,
    data: Any,
    engine: str,
) -> list[str]:
    """The checks that need ``[model]`` (a ModelConfig), ``[data]`` (a DataConfig) and the
    regime's engine: one line per field."""
    if not steps:
        return []
    if engine != "loop":
        return [
            f"loop.preprocess: not supported by a regime with its own engine ('{engine}'); "
            "use a single-chain regime (fully-synthetic, fresh-data, ...) or remove it"
        ]
    problems = []
    kind = data.kind if data is not None else "vectors"
    ragged = getattr(model, "variable_train_size", True)
    for i, s in enumerate(steps):
        where = f"loop.preprocess[{i}]"
        if s.removes and model is not None and not ragged:
            problems.append(
                f"{where}.step: '{s.step}' removes points, so training sets differ in size "
                f"across replicates; family '{model.family}' fits one fixed-size batch for all "
                "of them (use 'standardise', or a family fitted per replicate)"
            )
        if s.step == "clip" and kind != "vectors":
            problems.append(
                f"{where}.step: 'clip' is a Mahalanobis clip of vectors; data.source "
                f"'{data.source}' gives {kind} (a score-based clip of {kind} is not "
                "implemented yet)"
            )
        if s.step == "dedup" and kind == "tokens" and s.tolerance > 0:
            problems.append(
                f"{where}.tolerance: token sequences are deduplicated exactly; it must be 0 "
                f"for data.source '{data.source}', got {s.tolerance}"
            )
        if s.step == "align" and kind == "tokens" or s.step == "standardise" and kind != "vectors":
            problems.append(
                f"{where}.step: '{s.step}' maps vectors; data.source '{data.source}' gives "
                f"{kind} (not implemented for {kind} yet)"
            )
    return problems
