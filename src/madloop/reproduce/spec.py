"""A study: one TOML file in ``madloop/studies/``, data only.

A study file holds an ordinary madloop experiment config (``[config]``, what ``madloop run``
reads), the overrides of its quick mode (``[quick]``, dotted keys), and a declarative list of
checks (``[[rows]]``): what is measured (a measure from :data:`madloop.reproduce.measures.MEASURES`
by name), against which reference (madloop's own ``theory`` column, a closed form from
:data:`madloop.reproduce.formulas.FORMULAS` by id, a constant, or a number typed in from a paper
with the figure or table it comes from and how it was read), with which tolerance and why. A file
never names code to import: adding a study is adding one file.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from madloop.config.errors import ConfigError, format_errors
from madloop.config.merge import deep_merge, nest_dotted
from madloop.config.sections import Section

Generation = int | Literal["last"]


class Reference(Section):
    """What a measured value is compared with.

    ``theory``: the arm's ``theory`` column of summary.csv (madloop's closed forms);
    ``formula``: the closed form ``id`` (see :data:`~madloop.reproduce.formulas.FORMULAS`), with
    ``params``; ``constant``: ``value``, a closed-form constant (say why in ``why``);
    ``paper``: ``value`` typed in from the paper, with ``source`` (figure / table / section),
    ``how`` (``"exact value in text"`` or ``"read off a plot"``) and its reading ``precision``
    (added to the tolerance); ``measured``: the same measure of another ``arm`` at the same
    generation, for a qualitative claim between two simulated arms (the row's standard error
    is then that of the difference, sqrt(se² + se_arm²): the arms' chains are independent)."""

    kind: Literal["theory", "formula", "constant", "paper", "measured"]
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    arm: str | None = None  # evaluate the formula for this arm instead of the row's
    value: float | None = None
    source: str | None = None
    how: str | None = None
    precision: float = Field(0.0, ge=0.0)
    why: str = ""

    @model_validator(mode="after")
    def _complete(self) -> Reference:
        if self.kind == "formula" and not self.id:
            raise ValueError("a formula reference needs id = one of the built-in formulas")
        if self.kind == "measured" and not self.arm:
            raise ValueError("a measured reference needs arm = the arm it is compared with")
        if self.kind in ("constant", "paper") and self.value is None:
            raise ValueError(f"a {self.kind} reference needs value")
        if self.kind == "paper" and not (self.source and self.how):
            raise ValueError(
                "a paper reference needs source (figure, table or section) and how "
                "('exact value in text' or 'read off a plot')"
            )
        return self


class Tolerance(Section):
    """``standard_errors``: k standard errors of the measurement (k from a Bonferroni correction
    over the study's rows at level ``alpha`` when k is not given); ``absolute``: ``value``;
    ``bracket``: the measure's own half-width (a threshold between two grid points).

    ``plus`` (absolute) and ``plus_relative`` (times |reference|) are added to any of them: the
    known size of a closed form's approximation (an O(1/n) term of an n -> ∞ limit), stated in
    ``why``; with ``per_generation`` both grow as the generation t (an error each generation
    compounds)."""

    kind: Literal["standard_errors", "absolute", "bracket"] = "standard_errors"
    k: float | None = Field(None, gt=0.0)
    value: float | None = Field(None, ge=0.0)
    plus: float = Field(0.0, ge=0.0)
    plus_relative: float = Field(0.0, ge=0.0)
    per_generation: bool = False
    why: str = ""

    def allowance(self, reference: float, generation: int) -> float:
        """The added ``plus`` terms at this reference value and generation."""
        added = self.plus + self.plus_relative * abs(reference)
        return added * generation if self.per_generation else added

    @model_validator(mode="after")
    def _complete(self) -> Tolerance:
        if self.kind == "absolute" and self.value is None:
            raise ValueError("an absolute tolerance needs value")
        return self


class Row(Section):
    """One check; it becomes one comparison row per (arm, generation).

    ``check = "value"``: the ``measure`` of each arm at each generation against the reference.
    ``check = "threshold"``: the arms are a grid along the config key ``x``; the measured
    threshold is the bracket between the last grid point whose measure is below ``baseline``'s
    and the next one (midpoint ± half-width), the reference a threshold formula.
    ``relation``: ``equal`` (|measured - reference| <= tolerance), ``below`` (measured +
    tolerance < reference) or ``above`` (measured - tolerance > reference)."""

    quantity: str
    check: Literal["value", "threshold"] = "value"
    measure: str = "metric"
    metric: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    arms: list[str] = Field(default_factory=lambda: ["base"], min_length=1)
    generations: list[Generation] = Field(default_factory=lambda: ["last"], min_length=1)
    x: str = "generation"
    baseline: str | None = None
    relation: Literal["equal", "below", "above"] = "equal"
    reference: Reference
    tolerance: Tolerance = Field(default_factory=Tolerance)
    panel: str | None = None  # the figure panel (default: the quantity); rows may share one
    label: str | None = None  # the legend's name of its curves (default: the arm)

    @model_validator(mode="after")
    def _threshold(self) -> Row:
        if self.check == "threshold":
            if self.baseline is None or self.x == "generation":
                raise ValueError("a threshold row needs baseline (an arm) and x (a config key)")
            if len(self.generations) != 1:
                raise ValueError("a threshold row is at one generation")
        return self

    @property
    def figure_panel(self) -> str:
        return self.panel or self.quantity


class StudyInfo(Section):
    name: str
    paper: str
    checks: str
    minutes: float = Field(gt=0.0)  # quick mode, measured on the 2-core reference machine
    full_minutes: float | None = Field(None, gt=0.0)
    alpha: float = Field(0.01, gt=0.0, lt=1.0)  # family-wise error rate of the study's rows
    notes: str = ""


class Study(Section):
    study: StudyInfo
    config: dict[str, Any]
    quick: dict[str, Any] = Field(default_factory=dict)
    rows: list[Row] = Field(min_length=1)

    @property
    def name(self) -> str:
        return self.study.name

    def experiment(self, *, quick: bool) -> dict[str, Any]:
        """The experiment config of the study (with the quick-mode overrides applied)."""
        config = nest_dotted(dict(self.config))
        return deep_merge(config, nest_dotted(self.quick)) if quick else config


def studies_folder() -> Any:
    """The package's ``studies/`` folder (a Traversable: installed as package data)."""
    return resources.files("madloop") / "studies"


def study_names() -> list[str]:
    return sorted(p.name[:-5] for p in studies_folder().iterdir() if p.name.endswith(".toml"))


def parse_study(text: str, where: str) -> Study:
    """A study from its TOML text; a ConfigError naming the file and the field otherwise."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{where}: not valid TOML ({e})"]) from None
    try:
        study = Study.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(where, e, Study)) from None
    return study


def load_study(name: str) -> Study:
    """The built-in study ``name``; a ConfigError listing the valid names otherwise."""
    names = study_names()
    if name not in names:
        raise ConfigError([f"unknown study {name!r}; the studies are: {', '.join(names)}"])
    path = studies_folder() / f"{name}.toml"
    where = f"studies/{name}.toml"
    study = parse_study(path.read_text(), where)
    problems = [] if study.name == name else [f"{where}: study.name must be {name!r}"]
    problems += [f"{where}: {line}" for line in check_names(study)]
    if problems:
        raise ConfigError(problems)
    return study


def check_names(study: Study) -> list[str]:
    """What a valid spec can still get wrong: a measure, formula or arm that does not exist, a
    generation outside the run (in either mode). One line per problem."""
    from madloop.config import parse
    from madloop.reproduce.formulas import FORMULAS
    from madloop.reproduce.measures import MEASURES

    problems = []
    for quick in (False, True):
        try:
            _, arms = parse(study.experiment(quick=quick))
        except ConfigError as e:
            return [f"{'quick' if quick else 'config'}: {line}" for line in e.problems]
        names = {a.name for a in arms}
        last = min(a.config.generations for a in arms)
        for i, row in enumerate(study.rows):
            where = f"rows[{i}] ({row.quantity})"
            others = [row.baseline, row.params.get("minus_arm"), row.reference.arm]
            for arm in [*row.arms, *(a for a in others if a)]:
                if arm.split(":")[0] not in names:
                    problems.append(f"{where}: no arm {arm!r} (arms: {', '.join(sorted(names))})")
            late = [g for g in row.generations if g != "last" and not 1 <= g <= last]
            if late:
                mode = "quick mode" if quick else "the config"
                problems.append(f"{where}: generations {late} outside 1..{last} in {mode}")
    for i, row in enumerate(study.rows):
        if row.measure not in MEASURES:
            problems.append(f"rows[{i}].measure: unknown {row.measure!r} "
                            f"(measures: {', '.join(sorted(MEASURES))})")  # fmt: skip
        if row.reference.kind == "formula" and row.reference.id not in FORMULAS:
            problems.append(f"rows[{i}].reference.id: unknown formula {row.reference.id!r} "
                            f"(formulas: {', '.join(sorted(FORMULAS))})")  # fmt: skip
        if row.measure == "closed_form" and row.params.get("id") not in FORMULAS:
            problems.append(f"rows[{i}].params.id: the closed_form measure needs id = one of "
                            f"the formulas ({', '.join(sorted(FORMULAS))})")  # fmt: skip
        if row.measure == "metric" and row.metric is None:
            problems.append(f"rows[{i}].metric: the metric measure needs metric = a metric name")
    return sorted(set(problems), key=problems.index)
