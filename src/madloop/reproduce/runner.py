"""Running a study and comparing it with its references: comparison.csv, curves.csv, a figure.

``reproduce(names, out, quick=...)`` runs each study's experiment config through
:func:`madloop.experiment.run` (into ``out/runs/NAME``), turns each ``[[rows]]`` check into one
comparison row per (arm, generation), and writes

- ``out/comparison.csv``: study, quantity, generation, reference, reference_source, measured,
  std_error, tolerance, agrees (then relation, panel, tolerance_why);
- ``out/curves.csv``: the measured and reference curves the figures draw;
- ``out/figures/NAME.png``: per study, our curve beside the reference;
- ``out/reproductions.md`` (or ``markdown``): one table of every row.

The tolerance of a ``standard_errors`` row is k standard errors, k = Φ⁻¹(1 - α/(2m)) for the m
such rows of the study (Bonferroni: the chance that any row of a correct study disagrees is at
most α), unless the row gives k. A paper number's reading precision is added to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from madloop.config.errors import ConfigError
from madloop.reproduce.formulas import FORMULAS
from madloop.reproduce.measures import MEASURES, StudyData
from madloop.reproduce.spec import Row, Study, load_study

COMPARISON_COLUMNS = [
    "study", "quantity", "generation", "reference", "reference_source", "measured", "std_error",
    "tolerance", "agrees", "relation", "panel", "tolerance_why",
]  # fmt: skip
CURVE_COLUMNS = ["study", "panel", "arm", "series", "x", "y", "std_error", "xlabel", "ylabel"]


@dataclass
class StudyOutcome:
    study: Study
    comparison: pd.DataFrame
    curves: pd.DataFrame
    seconds: float
    load_average: float = float("nan")  # the machine's, when the study finished

    @property
    def agrees(self) -> bool:
        return bool(self.comparison["agrees"].all())


@dataclass
class Reproduction:
    outcomes: list[StudyOutcome] = field(default_factory=list)
    out: Path | None = None

    @property
    def comparison(self) -> pd.DataFrame:
        return pd.concat([o.comparison for o in self.outcomes], ignore_index=True)

    @property
    def agrees(self) -> bool:
        return all(o.agrees for o in self.outcomes)


# -- one study -------------------------------------------------------------------------------------
def study_data(config: dict[str, Any], out: Path | None, log: Callable[[str], None]) -> StudyData:
    """Run the study's experiment (madloop's own ``run``) and collect what the rows read."""
    from madloop.config import parse
    from madloop.engines import real_source
    from madloop.experiment import run

    if config.get("sweep") is not None:
        raise ValueError("a study config with a [sweep] table is not supported yet: use [[arms]]")
    _, arms = parse(config)
    result = run(config, out=out, log=log)
    configs = {a.name: a.config for a in arms}
    traces = {}
    for name, cfg in configs.items():
        cov = getattr(real_source(cfg), "covariance", None)
        traces[name] = float(np.trace(cov)) if cov is not None else np.nan
    return StudyData(configs, result.metrics, result.summary, traces)


def _generations(row: Row, data: StudyData, arm: str) -> list[int]:
    T = data.generations(arm)
    out = [T if g == "last" else int(g) for g in row.generations]
    if any(not 1 <= g <= T for g in out):
        raise ValueError(f"row {row.quantity!r}: generations {row.generations} outside 1..{T}")
    return out


def config_value(config: Any, dotted: str) -> Any:
    value: Any = config.to_dict()
    for part in dotted.split("."):
        value = value[part]
    return value


def reference_value(row: Row, data: StudyData, arm: str, generation: int) -> tuple[float, str]:
    """(value, reference_source) of the row's reference for one arm and generation."""
    ref = row.reference
    arm = ref.arm or arm
    if ref.kind == "theory":
        measure = MEASURES[row.measure]
        if measure.theory is None:
            raise ValueError(f"measure {row.measure!r} has no theory column; use a formula")
        return measure.theory(data, arm, generation, row), "closed form: madloop theory column"
    if ref.kind == "formula":
        formula = FORMULAS[ref.id]
        return formula.evaluate(data, arm, generation, ref.params), f"closed form: {formula.text}"
    if ref.kind == "constant":
        return float(ref.value), f"closed form: {ref.why or 'constant'}"
    if ref.kind == "measured":
        return MEASURES[row.measure].value(data, arm, generation, row)[0], f"measured: arm {arm}"
    precision = f", ±{ref.precision:g}" if ref.precision else ""
    return float(ref.value), f"paper: {ref.source} ({ref.how}{precision})"


def _measured_rows(row: Row, data: StudyData) -> list[dict[str, Any]]:
    """The row's (arm, generation) points: measured mean, s.e. and the reference."""
    measure = MEASURES[row.measure]
    out = []
    for arm in row.arms:
        for g in _generations(row, data, arm):
            value, se = measure.value(data, arm, g, row)
            ref, source = reference_value(row, data, arm, g)
            if row.reference.kind == "measured":  # a difference of two independent arms
                se = float(np.hypot(se, measure.value(data, row.reference.arm, g, row)[1]))
            label = row.quantity if len(row.arms) == 1 else f"{row.quantity} [{arm}]"
            out.append(dict(quantity=label, generation=g, reference=ref,
                            reference_source=source, measured=value, std_error=se,
                            half_width=np.nan))  # fmt: skip
    return out


def _threshold_row(row: Row, data: StudyData) -> list[dict[str, Any]]:
    """The measured threshold along ``row.x``: the bracket between the last grid arm whose
    measure is below the baseline arm's and the next one."""
    measure = MEASURES[row.measure]
    g = _generations(row, data, row.baseline)[0]
    base, _ = measure.value(data, row.baseline, g, row)
    grid = sorted(row.arms, key=lambda a: config_value(data.config(a), row.x))
    xs = [float(config_value(data.config(a), row.x)) for a in grid]
    worse = [measure.value(data, a, g, row)[0] >= base for a in grid]
    first = next((i for i, w in enumerate(worse) if w), None)
    if first is None or first == 0 or any(worse[:first]) or not all(worse[first:]):
        mid, half = np.nan, np.nan  # no single crossing inside the grid
    else:
        mid, half = (xs[first - 1] + xs[first]) / 2, (xs[first] - xs[first - 1]) / 2
    ref, source = reference_value(row, data, grid[0], g)
    return [dict(quantity=row.quantity, generation=g, reference=ref, reference_source=source,
                 measured=mid, std_error=np.nan, half_width=half)]  # fmt: skip


def _agrees(relation: str, measured: float, reference: float, tolerance: float) -> bool:
    if not (np.isfinite(measured) and np.isfinite(reference) and np.isfinite(tolerance)):
        return False
    if relation == "below":
        return measured + tolerance < reference
    if relation == "above":
        return measured - tolerance > reference
    return abs(measured - reference) <= tolerance


def compare(study: Study, data: StudyData) -> pd.DataFrame:
    """Every row of the study, with its tolerance and verdict."""
    points = []
    for row in study.rows:
        found = _threshold_row(row, data) if row.check == "threshold" else _measured_rows(row, data)
        points += [(row, p) for p in found]
    m = sum(r.tolerance.kind == "standard_errors" and r.tolerance.k is None for r, _ in points)
    k_bonferroni = float(norm.isf(study.study.alpha / (2 * max(m, 1))))
    records = []
    for row, p in points:
        tol = row.tolerance
        if tol.kind == "standard_errors":
            k = tol.k or k_bonferroni
            tolerance = k * p["std_error"]
            why = tol.why or (
                f"{k:.2f} s.e." if tol.k else
                f"{k:.2f} s.e.: Bonferroni over {m} rows at α = {study.study.alpha:g}"
            )  # fmt: skip
        elif tol.kind == "absolute":
            tolerance, why = float(tol.value), tol.why or "absolute"
        else:
            tolerance, why = p["half_width"], tol.why or "half the grid bracket"
        tolerance += row.reference.precision + tol.allowance(p["reference"], p["generation"])
        records.append(
            dict(study=study.name, **{k: v for k, v in p.items() if k != "half_width"},
                 tolerance=tolerance,
                 agrees=_agrees(row.relation, p["measured"], p["reference"], tolerance),
                 relation=row.relation, panel=row.figure_panel, tolerance_why=why)
        )  # fmt: skip
    return pd.DataFrame.from_records(records, columns=COMPARISON_COLUMNS)


def curves(study: Study, data: StudyData) -> pd.DataFrame:
    """Measured and reference curves per panel: over generations (``x = "generation"``), or
    across the arms along a config key at the row's generation. Threshold rows and closed-form
    rows (nothing simulated) have none: their panels are dot plots."""
    rows = []
    for row in study.rows:
        if row.check == "threshold" or row.measure == "closed_form":
            continue
        measure = MEASURES[row.measure]
        for arm in row.arms:
            if row.x == "generation":
                xs = [(g, g) for g in range(1, data.generations(arm) + 1)]
            else:
                xs = [(float(config_value(data.config(arm), row.x)), g)
                      for g in _generations(row, data, arm)]  # fmt: skip
            series = arm if row.x == "generation" else "grid"
            series = f"{row.label}: {series}" if row.label else series
            for x, g in xs:
                y, se = measure.value(data, arm, g, row)
                rows.append((study.name, row.figure_panel, series, "measured", x, y, se))
                if row.reference.kind in ("theory", "formula", "measured") or row.x != "generation":
                    ref, _ = reference_value(row, data, arm, g)
                    rows.append((study.name, row.figure_panel, series, "reference", x, ref, 0.0))
            if row.reference.kind in ("constant", "paper") and row.x == "generation":
                for g in _generations(row, data, arm):
                    ref, _ = reference_value(row, data, arm, g)
                    rows.append((study.name, row.figure_panel, series, "reference", g, ref, 0.0))
    frame = pd.DataFrame(rows, columns=CURVE_COLUMNS[:7])
    frame = frame.drop_duplicates(["panel", "arm", "series", "x"]).reset_index(drop=True)
    labels = {r.figure_panel: (r.x, MEASURES[r.measure].label or r.metric or r.measure)
              for r in study.rows}  # fmt: skip
    frame["xlabel"] = frame["panel"].map(lambda p: labels[p][0])
    frame["ylabel"] = frame["panel"].map(lambda p: labels[p][1])
    return frame


def run_study(
    study: Study, out: Path, *, quick: bool, log: Callable[[str], None] | None = None
) -> StudyOutcome:
    log = log or (lambda message: None)
    started = time.perf_counter()
    data = study_data(study.experiment(quick=quick), out / "runs" / study.name, log)
    seconds = time.perf_counter() - started
    return StudyOutcome(study, compare(study, data), curves(study, data), seconds, load_average())


def load_average() -> float:
    """The 1-minute load average (the studies' times mean little without it), NaN if unknown."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def reproduce(
    names: list[str],
    out: str | Path,
    *,
    quick: bool = False,
    markdown: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Reproduction:
    """Run the studies ``names`` and write ``out``'s comparison, curves, figures and markdown."""
    from madloop.reproduce.output import write_outputs

    studies = [load_study(n) for n in names]  # every name checked before anything runs
    out = Path(out)
    result = Reproduction(out=out)
    for study in studies:
        if log:
            log(f"{study.name}: running ({'quick' if quick else 'full'} mode)")
        try:
            result.outcomes.append(run_study(study, out, quick=quick, log=log))
        except (ValueError, KeyError) as e:  # a spec that parses but asks what its run lacks
            if isinstance(e, ConfigError):
                raise
            raise ConfigError([f"study {study.name}: {e}"]) from e
    write_outputs(result, out, quick=quick, markdown=markdown)
    return result
