"""Plain-language findings from a run's summary table: what collapsed, how fast, and where the
simulation departs from theory by more than its standard error allows.

Everything here reads ``summary.csv`` columns (arm, generation, metric, mean, std_error, q05, q95,
n, theory) and returns small dataclasses; the HTML report turns them into sentences. Nothing here
knows a model or the loop.

**Departures from theory.** For every (arm, generation, metric) with a closed-form value and a
standard error, z = (mean - theory) / std_error. With N such comparisons a fixed cut-off of 3
standard errors flags about 0.27% of them by chance alone, so the cut-off is chosen per report by
Bonferroni: k = max(3, Φ⁻¹(1 - α / 2N)) with family-wise α = 1%, i.e. a run that agrees with its
theory raises a flag at most once in a hundred reports (for means that are close to normal; a mean
over few replicates of a heavy-tailed metric is not, and its flags say so by their size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import norm

FAMILY_ALPHA = 0.01
COLLAPSED_BELOW = 0.5  # trace ratio: the model kept less than half the real variance
SHRINKING_BELOW = 0.9
DIVERGING_ABOVE = 1.5  # trace ratio: the variance grew by half or more (a diverging fit)
DEGRADED_ABOVE = 1.5  # perplexity: 50% above its reference
#: how bad each verdict is: the worst one any rule gives decides
SEVERITY = {"stable": 0, "shrinking": 1, "degrading": 1, "collapsing": 2, "diverging": 3,
            "collapsed": 4}  # fmt: skip


def theory_cutoff(n_comparisons: int, alpha: float = FAMILY_ALPHA) -> float:
    """k such that N two-sided tests at |z| > k raise a false flag with probability <= alpha."""
    if n_comparisons <= 0:
        return 3.0
    return float(max(3.0, norm.isf(alpha / (2 * n_comparisons))))


@dataclass
class Departure:
    arm: str
    metric: str
    flagged: int  # generations beyond k standard errors
    compared: int  # generations with a theory value and a standard error
    worst_generation: int
    worst_z: float
    mean: float
    theory: float


@dataclass
class ArmFinding:
    arm: str
    generations: int
    verdict: str  # "collapsed" | "diverging" | "collapsing" | "shrinking" | "degrading" |
    #               "stable" | "" (unknown)
    sentences: list[str] = field(default_factory=list)
    decided_by: str = ""  # the metric whose rule gave the verdict
    reason: str = ""  # why, in a few words
    halving_generation: int | None = None
    log_det_slope: float | None = None
    log_det_slope_theory: float | None = None


@dataclass
class Findings:
    arms: list[ArmFinding]
    departures: list[Departure]
    comparisons: int
    cutoff: float
    automatic: bool = True  # cutoff chosen by Bonferroni (not given by the user)

    @property
    def flagged(self) -> list[Departure]:
        return [d for d in self.departures if d.flagged]


def decide(finding: ArmFinding, verdict: str, metric: str, reason: str) -> None:
    """Keep the worse of ``finding``'s verdict and this one (the first of equals): every rule
    votes, and the verdict names the metric that decided it."""
    if finding.verdict and SEVERITY[verdict] <= SEVERITY.get(finding.verdict, -1):
        return
    finding.verdict, finding.decided_by, finding.reason = verdict, metric, reason


def with_z(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary plus ``z`` = (mean - theory) / std_error where both exist (NaN elsewhere)."""
    out = summary.copy()
    theory = pd.to_numeric(out.get("theory", np.nan), errors="coerce")
    se = pd.to_numeric(out["std_error"], errors="coerce")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (out["mean"].astype(float) - theory) / se
    ok = np.isfinite(theory) & np.isfinite(se) & (se > 0) & np.isfinite(out["mean"].astype(float))
    out["z"] = np.where(ok, z, np.nan)
    return out


def first_generation_below(gens: np.ndarray, values: np.ndarray, level: float) -> int | None:
    below = np.flatnonzero(np.isfinite(values) & (values <= level))
    return int(gens[below[0]]) if below.size else None


def slope(gens: np.ndarray, values: np.ndarray) -> float | None:
    """Least-squares slope per generation over the finite points (None with fewer than 2)."""
    ok = np.isfinite(values)
    if ok.sum() < 2:
        return None
    return float(np.polyfit(gens[ok].astype(float), values[ok], 1)[0])


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return str(x)
    return f"{x:.3g}"


#: metrics whose fall is lost diversity (by name part: recall, coverage, modes_covered, ...)
DIVERSITY_HINTS = ("recall", "coverage", "modes", "entropy", "distinct", "support", "tail_mass",
                   "heterozygosity")  # fmt: skip


def arm_finding(arm: str, rows: pd.DataFrame) -> ArmFinding:
    """What happened to one arm, from its summary rows (all metrics, all generations).

    Every suite the run has votes and the worst verdict wins (:data:`SEVERITY`), naming the
    metric that decided it (``decided_by``, ``reason``). The trace ratio: "collapsed" when the
    mean or the median chain keeps less than half the real variance at the last generation,
    "diverging" when the mean ends above 1.5 (the variance grew: a fit that blows up is no more
    stable than one that shrinks), "collapsing" when the volume (log det Σ) still falls over the
    run's second half fast enough to halve within another run of the same length although the
    mean trace holds (the λ = 1 case: E[Σ_t] = Σ_0 while Σ_t -> 0 almost surely), "shrinking"
    when the mean ends below 0.9, "stable" otherwise. Diversity metrics (recall, coverage, modes,
    support, entropy...): "collapsed" below half their reference, "shrinking" below 0.9 of it.
    A metric's rule decides only by being worse than the others'.
    Perplexity: "degrading" above 1.5 times its reference, "collapsed" above 2 times. The
    reference is generation 1 (the verdict judges what the loop lost, not a model class that
    never fit); the real-data floor (generation 0) is quoted beside it where the run has one.
    """
    floor = rows[rows["generation"] == 0]
    rows = rows[rows["generation"] > 0]
    T = int(rows["generation"].max()) if len(rows) else 0
    finding = ArmFinding(arm, T, "")
    if rows.empty:
        return finding
    by_metric = {m: g.sort_values("generation") for m, g in rows.groupby("metric", sort=False)}
    floors = {str(m): float(v) for m, v in zip(floor["metric"], floor["mean"], strict=True)}
    late_slope = None
    ld = by_metric.get("log_det_change")
    if ld is not None:
        gens = ld["generation"].to_numpy()
        mean = ld["mean"].to_numpy(float)
        finding.log_det_slope = slope(gens, mean)
        theory = pd.to_numeric(ld["theory"], errors="coerce").to_numpy(float)
        finding.log_det_slope_theory = slope(gens, theory)
        late = gens >= gens[0] + (gens[-1] - gens[0]) / 2
        late_slope = slope(gens[late], mean[late])
    tr = by_metric.get("trace_ratio")
    if tr is not None:
        _trace_finding(finding, tr, late_slope)
    if ld is not None:
        _log_det_sentences(finding, ld, late_slope)
    me = by_metric.get("mean_error_sq")
    if me is not None:
        finding.sentences.append(
            f"The mean drifts: ||μ_t - μ_0||² goes from {_fmt(me['mean'].iloc[0])} to "
            f"{_fmt(me['mean'].iloc[-1])}."
        )
    _other_metrics(finding, by_metric, int(rows["generation"].min()), floors)
    if finding.decided_by:
        finding.sentences.insert(0, f"Verdict from {finding.decided_by}: {finding.reason}.")
    return finding


def _trace_finding(finding: ArmFinding, tr: pd.DataFrame, late_slope: float | None) -> None:
    """The verdict and the variance sentence from the trace ratio's rows."""
    T = finding.generations
    gens = tr["generation"].to_numpy()
    mean = tr["mean"].to_numpy(float)
    median = tr["median"].to_numpy(float) if "median" in tr else mean
    last, last_median = mean[-1], median[-1]
    finding.halving_generation = first_generation_below(gens, mean, 0.5)
    kept = f"keeps {_fmt(100 * last)}% of the real variance"
    if min(last, last_median) < COLLAPSED_BELOW:
        decide(finding, "collapsed", "trace_ratio", kept)
    elif last > DIVERGING_ABOVE:
        decide(finding, "diverging", "trace_ratio", f"the variance grew to {_fmt(100 * last)}%")
    elif late_slope is not None and late_slope * T < -np.log(2):
        decide(finding, "collapsing", "log_det_change", "the volume still halves within the run")
    elif last < SHRINKING_BELOW:
        decide(finding, "shrinking", "trace_ratio", kept)
    else:
        decide(finding, "stable", "trace_ratio", kept)
    text = f"Keeps {_fmt(100 * last)}% of the real variance after {T} generations (mean "
    text += f"trace ratio {_fmt(last)}; median chain {_fmt(last_median)}; 5-95% of chains "
    text += f"{_fmt(tr['q05'].iloc[-1])} to {_fmt(tr['q95'].iloc[-1])})"
    if finding.halving_generation is not None:
        text += f"; the mean variance halved by generation {finding.halving_generation}"
    else:
        text += "; the mean variance never halved"
    theory = pd.to_numeric(tr["theory"], errors="coerce").to_numpy(float)
    if np.isfinite(theory).any():
        th_half = first_generation_below(gens, theory, 0.5)
        text += (
            f" (theory: generation {th_half})"
            if th_half is not None
            else " (theory: never within the run)"
        )
    finding.sentences.append(text + ".")


def _log_det_sentences(finding: ArmFinding, ld: pd.DataFrame, late_slope: float | None) -> None:
    means = ld["mean"].to_numpy(float)
    if np.isneginf(means).any():
        first = int(ld["generation"].to_numpy()[np.isneginf(means)][0])
        finding.sentences.append(
            f"log det Σ_t is -inf from generation {first} on: some chains' fitted covariance is "
            "singular (fewer training points than dimensions, or variance lost to rounding)."
        )
    if finding.log_det_slope is None:
        return
    text = f"log det Σ changes by {_fmt(finding.log_det_slope)} per generation"
    if finding.log_det_slope_theory is not None:
        text += f" (theory {_fmt(finding.log_det_slope_theory)})"
    if finding.log_det_slope < 0:
        factor = _fmt(np.exp(finding.log_det_slope))
        text += f": the fitted law's volume shrinks by a factor {factor} a generation"
    if finding.verdict == "collapsing" and late_slope is not None:
        text += (
            f", still {_fmt(np.exp(late_slope))} a generation over the second half: the mean "
            "trace holds, yet the typical chain degenerates (some directions die out)"
        )
    finding.sentences.append(text + ".")


def _other_metrics(
    finding: ArmFinding,
    by_metric: dict[str, pd.DataFrame],
    first_gen: int,
    floors: dict[str, float] | None = None,
) -> None:
    """First -> last of every other metric (with its real-data value where there is one); the
    diversity metrics and perplexity vote on the verdict (:func:`arm_finding`)."""
    floors = floors or {}
    others = []
    for metric, g in by_metric.items():
        if metric in {"trace_ratio", "log_det_change", "mean_error_sq"}:
            continue
        first, last = float(g["mean"].iloc[0]), float(g["mean"].iloc[-1])
        if not (np.isfinite(first) and np.isfinite(last)):
            continue
        real = floors.get(str(metric), np.nan)
        text = f"{metric} {_fmt(first)} → {_fmt(last)}"
        others.append(text + (f" (real data {_fmt(real)})" if np.isfinite(real) else ""))
        if not first > 0:
            continue
        ratio = last / first  # what the loop lost; a model class that never fit is no collapse
        since = f"generation {int(g['generation'].iloc[0])}'s"
        since += f" (real data {_fmt(real)})" if np.isfinite(real) else ""
        if any(h in str(metric) for h in DIVERSITY_HINTS):
            verdict = "collapsed" if ratio < 0.5 else "shrinking" if ratio < 0.9 else "stable"
            decide(finding, verdict, str(metric), f"it ends at {_fmt(100 * ratio)}% of {since}")
        elif metric == "perplexity":
            verdict = (
                "collapsed" if ratio > 2 else "degrading" if ratio > DEGRADED_ABOVE else "stable"
            )
            decide(finding, verdict, "perplexity", f"it ends at {_fmt(ratio)} times {since}")
    if others:
        T = finding.generations
        finding.sentences.append(f"Generation {first_gen} → {T}: " + "; ".join(others) + ".")


def departures(
    summary: pd.DataFrame, cutoff: float | None = None
) -> tuple[list[Departure], int, float]:
    """Per (arm, metric): how many generations lie beyond ``cutoff`` standard errors of theory."""
    z = with_z(summary)
    compared = z[np.isfinite(z["z"])]
    n = len(compared)
    k = theory_cutoff(n) if cutoff is None else float(cutoff)
    out = []
    for (arm, metric), g in compared.groupby(["arm", "metric"], sort=False):
        worst = g.loc[g["z"].abs().idxmax()]
        out.append(
            Departure(
                arm=str(arm),
                metric=str(metric),
                flagged=int((g["z"].abs() > k).sum()),
                compared=len(g),
                worst_generation=int(worst["generation"]),
                worst_z=float(worst["z"]),
                mean=float(worst["mean"]),
                theory=float(worst["theory"]),
            )
        )
    return out, n, k


def findings(summary: pd.DataFrame, cutoff: float | None = None) -> Findings:
    arms = [arm_finding(str(a), g) for a, g in summary.groupby("arm", sort=False)]
    deps, n, k = departures(summary, cutoff)
    return Findings(arms, deps, n, k, automatic=cutoff is None)


# -- sweeps ---------------------------------------------------------------------------------------
def sweep_sentences(
    cells: pd.DataFrame, keys: list[str], generation: int, metric: str = "trace_ratio"
) -> list[str]:
    """Where on the grid the loop collapsed. ``cells``: one row per (keys..., arm) with ``mean``
    of ``metric`` at ``generation`` (averaged over replicates and seeds)."""
    if cells.empty:
        return []
    out = []
    for arm, g in cells.groupby("arm", sort=False):
        total = len(g)
        collapsed = g[g["mean"] < COLLAPSED_BELOW]
        stable = g[g["mean"] >= SHRINKING_BELOW]
        who = f"arm {arm}: " if cells["arm"].nunique() > 1 else ""
        text = (
            f"{who}at generation {generation}, the loop collapsed (mean {metric} < "
            f"{COLLAPSED_BELOW}) at {len(collapsed)} of {total} grid points and kept >= "
            f"{int(SHRINKING_BELOW * 100)}% of the variance at {len(stable)}."
        )
        if 0 < len(collapsed) < total:
            points = [
                "("
                + ", ".join(f"{k} = {_fmt_value(v)}" for k, v in zip(keys, row, strict=True))
                + ")"
                for row in collapsed[keys].itertuples(index=False)
            ]
            shown = points[:6] + ([f"and {len(points) - 6} more"] if len(points) > 6 else [])
            out.append(text)
            text = f"{who}collapsed at " + "; ".join(shown) + "."
            text = text[0].upper() + text[1:]
        out.append(text)
    return out


def _sort_key(v: object) -> tuple[int, float | str]:
    try:
        return (0, float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, str(v))


def _fmt_value(v: object) -> str:
    return _fmt(float(v)) if isinstance(v, int | float | np.number) else str(v)
