"""The reproduction part of the report: the comparison table (each row green or red) and each
study's figure, our curve beside the reference. Read from a reproduction directory
(``comparison.csv``, ``curves.csv``, ``reproduction.json``; :mod:`madloop.storage.layout`),
never from the loop; :mod:`madloop.reproduce` draws the same figures when it writes them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from madloop.report.gallery import data_uri
from madloop.report.parts import Figure as PageFigure
from madloop.report.parts import Part, fmt
from madloop.report.plots import figure_png
from madloop.storage import read_json
from madloop.storage.layout import COMPARISON, CURVES, REPRODUCTION


def is_reproduction(path: Path) -> bool:
    return (path / COMPARISON).is_file()


def _curve_panel(ax: Any, frame: pd.DataFrame, rows: pd.DataFrame) -> None:
    for i, (arm, g) in enumerate(frame.groupby("arm", sort=False)):
        color = f"C{i % 10}"
        m = g[g["series"] == "measured"].sort_values("x")
        r = g[g["series"] == "reference"].sort_values("x")
        x, y, se = m["x"].to_numpy(float), m["y"].to_numpy(float), m["std_error"].to_numpy(float)
        ax.plot(x, y, color=color, lw=1.5, marker="o" if len(x) < 12 else None, ms=3,
                label=f"{arm} measured")  # fmt: skip
        ok = np.isfinite(se)
        ax.fill_between(x[ok], (y - 2 * se)[ok], (y + 2 * se)[ok], color=color, alpha=0.18, lw=0)
        if len(r):
            style = "--" if len(r) > 1 else "none"
            ax.plot(r["x"], r["y"], color=color, ls=style, marker="x", ms=5 if len(r) < 12 else 0,
                    lw=1.2, label=f"{arm} reference")  # fmt: skip
    if frame["xlabel"].iloc[0] == "generation":
        checked = rows[np.isfinite(rows["measured"].to_numpy(float))]
        ax.errorbar(
            checked["generation"],
            checked["measured"],
            yerr=checked["tolerance"],
            fmt="none",
            ecolor="k",
            elinewidth=1,
            capsize=3,
            label="checked ± tolerance",
        )
    ax.set_xlabel(str(frame["xlabel"].iloc[0]))
    ax.set_ylabel(str(frame["ylabel"].iloc[0]))


def _dot_panel(ax: Any, rows: pd.DataFrame) -> None:
    """Rows without a curve (thresholds): measured ± tolerance beside the reference."""
    y = np.arange(len(rows))
    ax.errorbar(rows["measured"], y, xerr=rows["tolerance"], fmt="o", color="C0", capsize=3,
                label="measured ± tolerance")  # fmt: skip
    ax.plot(rows["reference"], y, "x", color="C3", ms=8, label="reference")
    ax.set_yticks(y, [q[:38] for q in rows["quantity"]], fontsize=6)
    ax.set_ylim(-0.7, len(rows) - 0.3)


def study_figure(curves: pd.DataFrame, comparison: pd.DataFrame, name: str) -> Figure:
    """One panel per ``panel`` of the study: measured (solid, ±2 s.e. band) and reference
    (dashed) curves with the checked rows' tolerances, or a dot plot for rows without a curve."""
    panels = list(dict.fromkeys(comparison["panel"]))
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * nrows), dpi=100)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        rows = comparison[comparison["panel"] == panel]
        frame = curves[curves["panel"] == panel] if len(curves) else curves
        if len(frame):
            _curve_panel(ax, frame, rows)
        else:
            _dot_panel(ax, rows)
        bad = int((~rows["agrees"].astype(bool)).sum())
        verdict = "agrees" if not bad else f"{bad} row(s) disagree"
        ax.set_title(f"{panel[:48]}\n({verdict})", fontsize=8, color="k" if not bad else "C3")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{name}: measured (solid) vs reference (dashed / x)", fontsize=10)
    fig.tight_layout()
    return fig


def read_comparison(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path / COMPARISON)
    frame["agrees"] = frame["agrees"].astype(str).str.lower().isin(["true", "1"])
    return frame


def reproduction_part(path: Path, title: str | None = None) -> Part:
    """The first part of a reproduction directory's page."""
    comparison = read_comparison(path)
    curves = pd.read_csv(path / CURVES) if (path / CURVES).exists() else pd.DataFrame()
    meta = read_json(path / REPRODUCTION) if (path / REPRODUCTION).exists() else {"studies": {}}
    part = Part(id="comparison", title=title or "Reproductions", kind="reproduction",
                path=str(path))  # fmt: skip
    good = int(comparison["agrees"].sum())
    part.sentences.append(f"{good} of {len(comparison)} rows agree with their reference.")
    for study, rows in comparison.groupby("study", sort=False):
        info = meta["studies"].get(study, {})
        mode = "quick" if info.get("quick") else "full"
        part.description.append(
            f"{study}: {info.get('paper', '')}; checks {info.get('checks', '')} "
            f"({mode} mode, {info.get('seconds', float('nan')):.0f} s; its run: "
            f"`madloop report {path / 'runs' / str(study)}`)."
        )
        for r in rows.itertuples():
            part.comparison.append({
                "study": study, "quantity": r.quantity, "generation": str(r.generation),
                "relation": {"equal": "=", "below": "<", "above": ">"}.get(r.relation, "="),
                "reference": fmt(r.reference), "source": r.reference_source,
                "measured": fmt(r.measured), "std_error": fmt(r.std_error),
                "tolerance": fmt(r.tolerance), "why": r.tolerance_why,
                "agrees": "agrees" if r.agrees else "disagrees",
            })  # fmt: skip
        fig = study_figure(curves[curves["study"] == study] if len(curves) else curves, rows, study)
        part.curves.append(
            PageFigure(
                f"reproduce-{study}",
                study,
                data_uri(figure_png(fig)),
                "Measured mean (solid, ±2 s.e. band), the reference dashed "
                "(x marks), the checked rows with their tolerance.",
            )
        )
    return part


def markdown_table(comparison: pd.DataFrame, meta: dict[str, Any], *, figures: str) -> str:
    """docs/reproductions.md: one table of every row, then the figures."""
    lines = [
        "# Reproductions",
        "",
        "Written by `madloop reproduce`; do not edit by hand. Each row: the paper's quantity, its "
        "reference (closed form or the paper's number), ours ± standard error, the tolerance and "
        "whether they agree (relation `=`: within the tolerance; `<` / `>`: beyond it).",
        "",
        "Regenerate with `madloop reproduce --all --quick --out docs/reproductions --markdown "
        "docs/reproductions.md` (drop `--quick` for the full sizes); `madloop reproduce --list` "
        "names the studies, each one file in `src/madloop/studies/`.",
        "",
        "| study | paper | quantity | gen | reference | ours ± s.e. | tolerance | agrees |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rel = {"equal": "=", "below": "<", "above": ">"}

    def cell(text: Any) -> str:  # a | inside a cell (||μ||) would split the table's columns
        return str(text).replace("|", "\\|")

    for r in comparison.itertuples():
        paper = meta["studies"].get(r.study, {}).get("paper", "").split(",")[0]
        ours = fmt(r.measured) + (f" ± {fmt(r.std_error)}" if np.isfinite(r.std_error) else "")
        lines.append(
            f"| {r.study} | {cell(paper)} | {cell(r.quantity)} | {r.generation} | "
            f"{rel[r.relation]} {fmt(r.reference)} ({cell(r.reference_source)}) | {ours} | "
            f"{fmt(r.tolerance)} | "
            f"{'yes' if r.agrees else '**no**'} |"
        )
    lines += ["", "Time per study (wall clock) and the 1-minute load average after it:", "",
              "| study | mode | seconds | rows agreeing | load average |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, info in meta["studies"].items():
        lines.append(
            f"| {name} | {'quick' if info.get('quick') else 'full'} | {info.get('seconds')} | "
            f"{info.get('agree')}/{info.get('rows')} | {info.get('load_average')} |"
        )
    lines.append("")
    for name in meta["studies"]:
        lines += [f"![{name}]({figures}/{name}.png)", ""]
    return "\n".join(lines)
