"""The report's parts: one :class:`Part` per run directory or sweep directory, with its sentences,
tables and inline figures, ready for the page template (:mod:`madloop.report.html`).

Directories are read through :mod:`madloop.storage` and every statistic of replicate chains
comes from :func:`madloop.tables.summarize` (a run's ``summary.csv`` is its output), so the page
shows what ``summary.csv`` says, stopped chains included.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from madloop.glossary import GLOSSARY
from madloop.report import findings as fnd
from madloop.report import phase
from madloop.report.gallery import data_uri, galleries
from madloop.report.plots import figure_png, metric_title, plot_metric
from madloop.storage import RunDir, SweepDir
from madloop.tables import summarize


# -- small helpers --------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, NaN as empty."""
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def to_toml(config: dict[str, Any]) -> str:
    """A config dict as TOML-looking text: scalars first, then one [table] per mapping."""
    lines, tables = [], []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif key != "arms":
            lines.append(f"{key} = {toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines).strip()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(base: dict[str, Any], arm: dict[str, Any]) -> list[str]:
    """``key = value`` lines where an arm's resolved config differs from the base config."""
    b, a = _flatten(base), _flatten(arm)
    skip = {"arms", "name"}
    return [
        f"{k} = {toml_value(v)}" for k, v in a.items() if k not in skip and b.get(k, object()) != v
    ]


def bias_text(config: dict[str, Any], entry: dict[str, Any] | None = None) -> str:
    """The arm's bias in both forms, ``λ = 0.5 (guidance w = 1)``: the manifest's ``bias`` entry,
    else λ and the resolved ``sampling.knob``."""
    if entry and entry.get("text"):
        return str(entry["text"])
    sampling = config.get("sampling", {}) or {}
    if "bias" not in sampling:
        return ""
    knob = sampling.get("knob") or {}
    native = ", ".join(f"{k} = {fmt(v)}" for k, v in knob.items())
    return f"λ = {fmt(sampling['bias'])}" + (f" ({native})" if native else "")


def describe_arm(config: dict[str, Any], bias: dict[str, Any] | None = None) -> str:
    """One line: what this arm's loop does (``bias``: the manifest's entry for the arm)."""
    loop, model = config.get("loop", {}), config.get("model", {})
    data = config.get("data", {})
    parts = [str(loop.get("regime", "?"))]
    fam = str(model.get("family", "?"))
    if model.get("mode"):
        fam += f" ({model['mode']})"
    parts.append(f"{fam} on {data.get('source', '?')}")
    shown = bias_text(config, bias)
    if shown:
        parts.append(shown)
    if "real_size" in loop or "synthetic_size" in loop:
        parts.append(
            f"{loop.get('real_size', 0)} real + {loop.get('synthetic_size', 0)} synthetic per "
            "generation"
        )
    return ", ".join(parts)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "part"


# -- the page's parts -----------------------------------------------------------------------------
@dataclass
class Figure:
    name: str  # file-name stem when figures are also written out
    title: str
    uri: str
    caption: str = ""
    figure: Any = field(default=None, repr=False, compare=False)  # to write as svg / pdf


@dataclass
class Part:
    id: str
    title: str
    kind: str  # "run" | "sweep"
    path: str
    description: list[str] = field(default_factory=list)
    arms: list[dict[str, Any]] = field(default_factory=list)  # arm, verdict, what, sentences
    sentences: list[str] = field(default_factory=list)
    theory_note: str = ""
    departures: list[dict[str, str]] = field(default_factory=list)
    curves: list[Figure] = field(default_factory=list)
    last_table: list[dict[str, str]] = field(default_factory=list)
    galleries: list[dict[str, Any]] = field(default_factory=list)
    phase: list[Figure] = field(default_factory=list)
    phase_note: str = ""
    provenance: list[tuple[str, str]] = field(default_factory=list)
    config_text: str = ""
    arm_configs: list[tuple[str, str, list[str]]] = field(default_factory=list)
    tasks: dict[str, Any] = field(default_factory=dict)
    comparison: list[dict[str, str]] = field(default_factory=list)  # reproduction rows

    @property
    def figures(self) -> list[Figure]:
        return self.curves + self.phase

    @property
    def sections(self) -> list[tuple[str, str]]:
        """(section key, heading) of the sections this part has, in page order."""
        if self.kind == "reproduction":
            return [("comparison", "Comparison with the papers"), ("studies", "Figures")]
        out = [("summary", "What happened")]
        if self.curves:
            out.append(("metrics", "Metrics over generations"))
        if self.galleries:
            out.append(("galleries", "Samples by generation"))
        if self.phase:
            out.append(("phase", "Phase diagrams"))
        if self.tasks:
            out.append(("tasks", "Tasks"))
        out.append(("config", "Config and provenance"))
        return out


def _figure(name: str, title: str, fig: Any, caption: str) -> Figure:
    return Figure(name, title, data_uri(figure_png(fig)), caption, fig)


# -- runs -----------------------------------------------------------------------------------------
def run_summary(path: str | Path) -> pd.DataFrame:
    """A run's summary table: ``summary.csv``, or :func:`~madloop.tables.summarize` of its
    ``metrics.parquet`` when there is no summary (then without theory)."""
    run = RunDir(path)
    if not run.summary.exists():
        return summarize(run.read_metrics())
    summary = run.read_summary()
    for column in ("std_error", "median", "q05", "q95", "n", "ci_low", "ci_high", "theory"):
        if column not in summary:  # an older or foreign summary: show what it has
            summary[column] = summary["mean"] if column == "median" else np.nan
    summary["theory"] = pd.to_numeric(summary["theory"], errors="coerce")
    return summary


def run_part(path: Path, title: str | None = None, *, cutoff: float | None = None) -> Part:
    """The part of one run directory."""
    run = RunDir(path)
    manifest = run.read_manifest()
    summary = run_summary(path)
    name = title or manifest.get("name") or path.name
    part = Part(id=slug(str(name)), title=str(name), kind="run", path=str(path))
    arms_cfg: dict[str, dict[str, Any]] = manifest.get("arms", {}) or {}
    biases: dict[str, dict[str, Any]] = manifest.get("bias", {}) or {}

    T = int(summary["generation"].max()) if len(summary) else 0
    chains = pd.to_numeric(summary["n"], errors="coerce").max() if len(summary) else np.nan
    each = f", {int(chains)} replicate chains each" if np.isfinite(chains) else ""
    part.description.append(f"{summary['arm'].nunique()} arm(s), {T} generations{each}.")
    found = fnd.findings(summary, cutoff)
    for arm in found.arms:
        what = describe_arm(arms_cfg[arm.arm], biases.get(arm.arm)) if arm.arm in arms_cfg else ""
        part.arms.append(
            {
                "arm": arm.arm,
                "verdict": arm.verdict,
                "decided_by": arm.decided_by,
                "what": what,
                "sentences": arm.sentences,
            }
        )
    theory_summary(part, found)
    part.curves = _curves(part.id, summary)
    part.last_table = _last_table(summary, found.cutoff)
    part.galleries = galleries(run.samples)

    part.provenance = _provenance_rows(manifest, path)
    config = manifest.get("config", {})
    part.config_text = to_toml(config) if config else ""
    for arm, cfg in arms_cfg.items():
        part.arm_configs.append((arm, describe_arm(cfg, biases.get(arm)), config_diff(config, cfg)))
    return part


def _curves(part_id: str, summary: pd.DataFrame) -> list[Figure]:
    from matplotlib.figure import Figure as MplFigure

    out = []
    for metric in summary["metric"].unique():
        fig = MplFigure(figsize=(6.4, 3.7))
        ax = fig.add_subplot()
        plot_metric(summary, metric, ax)
        ax.set_title(metric_title(metric), fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        rows = summary.loc[summary["metric"] == metric, "theory"]
        has_theory = np.isfinite(pd.to_numeric(rows, errors="coerce")).any()
        caption = (
            "Mean over replicate chains (line), its 95% confidence interval (darker band) and "
            "5-95% of chains (lighter band)"
        )
        caption += "; theory dashed" if has_theory else ""
        floor = summary[(summary["metric"] == metric) & (summary["generation"] == 0)]
        caption += "; real data (generation 0) dotted." if len(floor) else "."
        out.append(_figure(f"{part_id}-{metric}", str(metric), fig, caption))
    return out


def _last_table(summary: pd.DataFrame, cutoff: float) -> list[dict[str, str]]:
    zed = fnd.with_z(summary)
    last = zed[zed["generation"] == zed.groupby("arm")["generation"].transform("max")]
    floor = zed[zed["generation"] == 0].set_index(["arm", "metric"])["mean"].to_dict()
    rows = []
    for row in last.itertuples():
        flagged = np.isfinite(row.z) and abs(row.z) > cutoff
        real = floor.get((row.arm, row.metric), np.nan)
        ci = (getattr(row, "ci_low", np.nan), getattr(row, "ci_high", np.nan))
        known = GLOSSARY.get(str(row.metric))
        rows.append(
            {
                "arm": str(row.arm),
                "metric": str(row.metric),
                "generation": str(int(row.generation)),
                "mean": fmt(row.mean),
                "std_error": fmt(row.std_error),
                "band": f"{fmt(row.q05)} to {fmt(row.q95)}",
                "ci": f"{fmt(ci[0])} to {fmt(ci[1])}" if np.isfinite(ci).all() else "",
                "real": fmt(real) if np.isfinite(real) else "",
                "better": known.better if known is not None else "",
                "definition": known.definition if known is not None else "",
                "theory": fmt(float(row.theory)) if np.isfinite(row.theory) else "",
                "z": f"{row.z:+.1f}" if np.isfinite(row.z) else "",
                "flag": "flag" if flagged else "",
            }
        )
    return rows


def theory_summary(part: Part, found: fnd.Findings) -> None:
    """``part``'s theory note and departures table from ``found``."""
    if not found.comparisons:
        part.theory_note = "No closed-form theory applies to this run, so nothing is compared."
        return
    flagged = found.flagged
    why = "Bonferroni: 1% chance of any false flag" if found.automatic else "as asked"
    part.theory_note = (
        f"{found.comparisons} (arm, generation, metric) means were compared with theory; a "
        f"difference counts when it exceeds k = {found.cutoff:.2f} standard errors ({why}). "
    )
    if not flagged:
        part.theory_note += "None does: the simulation agrees with theory everywhere."
    else:
        part.theory_note += (
            f"{sum(d.flagged for d in flagged)} do, in {len(flagged)} series (below). A flag is "
            "either a real departure or a mean over too few replicate chains of a heavy-tailed "
            "metric, whose standard error is then itself unreliable: more replicates tell them "
            "apart."
        )
    for d in flagged:
        part.departures.append(
            {
                "arm": d.arm,
                "metric": d.metric,
                "flagged": f"{d.flagged} of {d.compared}",
                "worst": str(d.worst_generation),
                "mean": fmt(d.mean),
                "theory": fmt(d.theory),
                "z": f"{d.worst_z:+.1f}",
            }
        )


def _provenance_rows(manifest: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("directory", str(path))]
    versions = manifest.get("versions", {}) or {}
    config = manifest.get("config", {}) or {}
    for label, value in (
        ("name", manifest.get("name")),
        ("madloop", versions.get("madloop")),
        ("seed", manifest.get("seed")),
        ("generations", config.get("generations")),
        ("replicates", config.get("replicates")),
        ("git commit", manifest.get("git_commit")),
        ("started", manifest.get("started")),
        ("command", manifest.get("command")),
    ):
        if value is not None:
            rows.append((label, str(value)))
    timings = manifest.get("timings_s", {}) or {}
    if isinstance(timings, dict):
        for key, value in timings.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {fmt(v)} s" for k, v in value.items())
            else:
                value = f"{fmt(value)} s"
            rows.append((f"time ({key})", value))
    modes = manifest.get("modes")
    if modes:
        rows.append(("modes", ", ".join(f"{k}: {v}" for k, v in modes.items())))
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


# -- sweeps ---------------------------------------------------------------------------------------
def sweep_part(path: Path, title: str | None = None, *, cutoff: float | None = None) -> Part:
    """The part of one sweep directory: phase diagrams as in its ``plots/``, tasks, config."""
    sweep = SweepDir(path)
    meta = sweep.read_meta()
    base = sweep.base_config()
    name = title or base.get("name") or path.name
    part = Part(id=slug(str(name)), title=str(name), kind="sweep", path=str(path))
    part.tasks = _tasks(meta)
    part.provenance = _sweep_provenance(meta, path)
    part.config_text = to_toml(base) if base else ""
    grid = sweep.grid()
    if grid:
        lines = [f"{k} = {toml_value(v)}" for k, v in grid.items()]
        part.arm_configs.append(("grid", "the swept keys", lines))
    if not sweep.results.exists():
        part.sentences.append("No results.parquet yet: no task has finished.")
        return part
    results, theory = sweep.read_results(), sweep.read_theory()
    keys = phase.swept_keys(results, list(grid) or None)
    T = int(results["generation"].max())
    n_seeds = results["seed"].nunique() if "seed" in results else 1
    part.description.append(
        f"{len(keys)} swept key(s) ({', '.join(keys) or 'none'}), {n_seeds} seed(s); figures at "
        f"the last generation, {T}, averaging replicate chains and seeds."
    )
    if len(keys) > 2:
        part.phase_note = (
            f"Heatmaps show {keys[0]} against {keys[1]}, averaging over {', '.join(keys[2:])}."
        )
    metrics = list(dict.fromkeys(results["metric"]))
    part.phase = _phase_figures(part.id, results, theory, keys, metrics)
    if "trace_ratio" in metrics and keys:
        cells = phase.cell_means(results, "trace_ratio", keys, None)
        part.sentences += fnd.sweep_sentences(cells, keys, T)
    _sweep_theory(part, results, theory, keys, cutoff)
    return part


def _phase_figures(
    part_id: str,
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    keys: list[str],
    metrics: list[str],
) -> list[Figure]:
    out = []
    for metric in metrics:
        if len(keys) >= 2:
            fig = phase.plot_phase(results, theory, metric, keys[:2])
            caption = "Colour: the simulation's mean over replicate chains and seeds."
            if phase.has_theory(theory, metric, keys[:2], None):
                caption += " Dashed white contours: the theory, at the labelled levels."
        elif len(keys) == 1:
            fig = phase.plot_line(results, theory, metric, keys[0])
            caption = (
                "Mean over replicate chains and seeds, with the 95% confidence interval of the "
                "mean (Student t); theory dashed."
            )
        else:
            continue
        out.append(_figure(f"{part_id}-phase-{metric}", str(metric), fig, caption))
    return out


def sweep_comparison(results: pd.DataFrame, theory: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per (keys..., arm, generation, metric): :func:`~madloop.tables.summarize` of the
    simulation over seeds × chains next to the theory (its mean over seeds); only where both
    exist."""
    group = [*keys, "arm", "generation", "metric"]
    values = theory.drop(columns="value", errors="ignore").rename(columns={"theory": "value"})
    th = summarize(values, keys=group)
    th = th[[*group, "mean"]].rename(columns={"mean": "theory"})
    return summarize(results, keys=group).drop(columns="theory").merge(th, on=group, how="inner")


def _sweep_theory(
    part: Part,
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    keys: list[str],
    cutoff: float | None,
) -> None:
    if theory is None or theory.empty:
        part.theory_note = "No theory.parquet: no closed form to compare with."
        return
    merged = sweep_comparison(results, theory, keys)
    if merged.empty:
        part.theory_note = "theory.parquet matches no simulated cell."
        return
    # one comparison per grid point, arm, generation and metric: label grid points as "arms"
    if keys:
        label = merged[keys].astype(str).agg(", ".join, axis=1)
        merged["arm"] = merged["arm"].astype(str) + " @ " + label
    columns = ["arm", "generation", "metric", "mean", "std_error", "theory", "q05", "q95"]
    theory_summary(part, fnd.findings(merged[columns], cutoff))
    part.departures = part.departures[:20]


def _tasks(meta: dict[str, Any]) -> dict[str, Any]:
    tasks = meta.get("tasks")
    if not tasks:
        return {}
    if isinstance(tasks, dict):
        tasks = [
            {"task": k, **(v if isinstance(v, dict) else {"status": v})} for k, v in tasks.items()
        ]
    tasks = [t for t in tasks if isinstance(t, dict)]
    counts: dict[str, int] = {}
    for t in tasks:
        status = str(t.get("status", "unknown"))
        counts[status] = counts.get(status, 0) + 1
    columns: list[str] = []
    for t in tasks:
        for k, v in t.items():
            if k not in columns and not isinstance(v, dict | list):
                columns.append(k)
    failed = [t for t in tasks if t.get("error")]
    shown = (failed + [t for t in tasks if not t.get("error")])[:40]
    rows = [[_cell(t.get(c)) for c in columns] for t in shown]
    return {
        "counts": counts,
        "total": len(tasks),
        "columns": columns,
        "rows": rows,
        "more": max(0, len(tasks) - len(shown)),
        "failed": len(failed),
    }


def _cell(value: Any, limit: int = 240) -> str:
    text = "" if value is None else fmt(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sweep_provenance(meta: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("directory", str(path))]
    for key, value in meta.items():
        if key in {"tasks", "config", "grid"}:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        rows.append((key, str(value)))
    return rows
