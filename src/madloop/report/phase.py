"""Phase diagrams of a sweep: where, over two swept keys, does the loop collapse?

- :func:`heatmap`: the mean of a metric (over replicates and seeds) at one generation, over two
  swept keys, with the closed-form theory drawn as labelled contours where it has values.
- :func:`line_plot`: the same over one swept key, one line per value of a second key (or per
  arm), with standard-error bars and the theory dashed.

:func:`plot_phase_diagrams` writes them for every metric into a sweep's ``plots/``:
``heatmap_{metric}[_{arm}].png`` for the first two swept keys and ``line_{metric}_by_{key}
[_{arm}].png`` for each swept key (the arm suffix only when the sweep has several arms; with one
swept key, one line plot per metric holds every arm). Inputs are
the sweep's ``results.parquet`` / ``theory.parquet`` tables, so this module never imports the loop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from madloop.report.plots import LABELS, LOG_SCALE  # noqa: E402

MAX_ANNOTATED = 144  # cells: beyond this the numbers would not be readable


def at_generation(frame: pd.DataFrame, generation: int | None, keys: Sequence[str]) -> pd.DataFrame:
    """Rows at ``generation``; None: each task's (point, seed, arm) last generation."""
    if frame.empty:
        return frame
    if generation is not None:
        return frame[frame["generation"] == generation]
    group = [*keys, "seed", "arm"]
    last = frame.groupby(group, sort=False, dropna=False)["generation"].transform("max")
    return frame[frame["generation"] == last]


def phase_table(
    results: pd.DataFrame,
    metric: str,
    x: str,
    y: str | None = None,
    *,
    keys: Sequence[str] | None = None,
    arm: str | None = None,
    generation: int | None = None,
    column: str = "value",
) -> pd.DataFrame:
    """Mean, standard error and n of ``column`` per (y, x) at ``generation``, over replicates,
    seeds and any other swept key. Works on ``results`` (``value``) and ``theory``."""
    keys = list(keys) if keys is not None else [k for k in (x, y) if k]
    rows = results[results["metric"] == metric]
    if arm is not None:
        rows = rows[rows["arm"] == arm]
    rows = at_generation(rows, generation, keys)
    by = [k for k in (y, x) if k]
    g = rows.groupby(by, sort=True)[column]
    out = g.agg(mean="mean", std="std", n="size").reset_index()
    out["std_error"] = out["std"] / np.sqrt(out["n"])
    return out.drop(columns="std")


def _ticks(values: np.ndarray) -> list[str]:
    return [f"{v:g}" if isinstance(v, int | float | np.number) else str(v) for v in values]


def contour_levels(T: np.ndarray, n: int = 4) -> np.ndarray:
    """Levels at quantiles of the theory's values (rounded to 2 significant digits), so contours
    spread over the grid even when the values span orders of magnitude in one corner."""
    q = np.quantile(T[np.isfinite(T)], np.linspace(0, 1, n + 2)[1:-1])
    rounded = np.array([float(f"{v:.2g}") for v in q])
    inside = rounded[(rounded > np.nanmin(T)) & (rounded < np.nanmax(T))]
    return np.unique(inside)


def heatmap(
    results: pd.DataFrame,
    metric: str,
    x: str,
    y: str,
    *,
    ax: plt.Axes,
    keys: Sequence[str] | None = None,
    theory: pd.DataFrame | None = None,
    arm: str | None = None,
    generation: int | None = None,
) -> None:
    """Cells: the mean of ``metric`` over (y, x); contours: the theory, where it has values."""
    table = phase_table(results, metric, x, y, keys=keys, arm=arm, generation=generation)
    grid = table.pivot(index=y, columns=x, values="mean")
    Z = grid.to_numpy(float)
    finite = Z[np.isfinite(Z)]
    log = metric in LOG_SCALE and finite.size > 0 and finite.min() > 0
    if log and finite.max() > finite.min():
        norm = LogNorm(finite.min(), finite.max())
    else:
        norm = None
    image = ax.imshow(Z, origin="lower", aspect="auto", cmap="viridis", norm=norm)
    ax.figure.colorbar(image, ax=ax, label=LABELS.get(metric, metric))
    ax.set_xticks(range(Z.shape[1]), _ticks(grid.columns.to_numpy()))
    ax.set_yticks(range(Z.shape[0]), _ticks(grid.index.to_numpy()))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if Z.size <= MAX_ANNOTATED:
        mid = np.nanmedian(np.log(finite) if log else finite) if finite.size else 0.0
        for (i, j), v in np.ndenumerate(Z):
            if np.isfinite(v):
                dark = (np.log(v) if log else v) < mid
                ax.text(
                    j,
                    i,
                    f"{v:.3g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    if theory is not None and not theory.empty and min(Z.shape) >= 2:
        th = phase_table(
            theory, metric, x, y, keys=keys, arm=arm, generation=generation, column="theory"
        )
        T = (
            th.pivot(index=y, columns=x, values="mean")
            .reindex(index=grid.index, columns=grid.columns)
            .to_numpy(float)
        )
        ok = np.isfinite(T)
        levels = contour_levels(T) if ok.all() and np.ptp(T) > 0 else np.array([])
        if levels.size:
            cs = ax.contour(
                np.arange(Z.shape[1]),
                np.arange(Z.shape[0]),
                T,
                levels=levels,
                colors="white",
                linewidths=1.0,
                linestyles="--",
            )
            # a dark halo keeps white contours visible over the bright end of the colour map
            cs.set(path_effects=[patheffects.withStroke(linewidth=2.4, foreground="black")])
            labels = ax.clabel(cs, fontsize=7, fmt="%.3g", colors="white")
            for label in labels:
                label.set_path_effects([patheffects.withStroke(linewidth=2, foreground="black")])


def line_plot(
    results: pd.DataFrame,
    metric: str,
    x: str,
    *,
    ax: plt.Axes,
    hue: str | None = None,
    keys: Sequence[str] | None = None,
    theory: pd.DataFrame | None = None,
    arm: str | None = None,
    generation: int | None = None,
) -> None:
    """``metric`` against swept key ``x``, one line per value of ``hue`` (a swept key or
    ``"arm"``), mean +- one standard error; theory dashed in the same colour."""
    keys = list(keys) if keys is not None else [x]
    hue_col = hue or "arm"
    sub = results if arm is None else results[results["arm"] == arm]
    th = None
    if theory is not None and not theory.empty:
        th = theory if arm is None else theory[theory["arm"] == arm]
    for i, (level, rows) in enumerate(sub.groupby(hue_col, sort=True)):
        t = phase_table(rows, metric, x, keys=keys, generation=generation)
        if t.empty:
            continue
        color = f"C{i % 10}"
        xs = t[x].to_numpy()
        numeric = np.issubdtype(np.asarray(xs).dtype, np.number)
        pos = xs if numeric else np.arange(len(xs))
        ax.errorbar(
            pos,
            t["mean"],
            yerr=t["std_error"],
            color=color,
            marker="o",
            ms=3,
            capsize=2,
            lw=1.4,
            label=f"{hue_col}={level:g}"
            if isinstance(level, int | float | np.number)
            else f"{hue_col}={level}",
        )
        if th is not None:
            tt = phase_table(
                th[th[hue_col] == level] if hue_col in th else th,
                metric,
                x,
                keys=keys,
                generation=generation,
                column="theory",
            )
            if not tt.empty and np.isfinite(tt["mean"]).all():
                tpos = tt[x].to_numpy() if numeric else np.arange(len(tt))
                ax.plot(tpos, tt["mean"], color=color, ls="--", lw=1.0)
        if not numeric:
            ax.set_xticks(pos, _ticks(xs))
    vals = sub.loc[sub["metric"] == metric, "value"].to_numpy(float)
    vals = vals[np.isfinite(vals)]
    if metric in LOG_SCALE and vals.size and vals.min() > 0:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.grid(alpha=0.3)


def _save(fig: plt.Figure, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    plt.close(fig)
    return path


def _gen_label(generation: int | None) -> str:
    return "last generation" if generation is None else f"generation {generation}"


def plot_phase_diagrams(
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    keys: Sequence[str],
    out: str | os.PathLike,
    *,
    generation: int | None = None,
) -> list[Path]:
    """Heatmaps over the first two swept keys and line plots over each, for every metric and
    arm, into ``out``; returns the paths (none when nothing was swept)."""
    out = Path(out)
    keys = list(keys)
    if not keys or results.empty:
        return []
    out.mkdir(parents=True, exist_ok=True)
    arms = list(dict.fromkeys(results["arm"]))
    paths = []
    for metric in dict.fromkeys(results["metric"]):
        for arm in arms:
            suffix = f"_{arm}" if len(arms) > 1 else ""
            others = keys[2:]
            note = f"; mean over {', '.join(others)}" if others else ""
            if len(keys) >= 2:
                fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
                heatmap(
                    results,
                    metric,
                    keys[1],
                    keys[0],
                    ax=ax,
                    keys=keys,
                    theory=theory,
                    arm=arm,
                    generation=generation,
                )
                title = f"{metric} ({arm}), {_gen_label(generation)}{note}"
                if theory is not None and not theory.empty:
                    title += "\ncells: simulation mean; dashed contours: theory"
                ax.set_title(title, fontsize=9)
                fig.tight_layout()
                paths.append(_save(fig, out / f"heatmap_{metric}{suffix}.png"))
            if len(keys) == 1 and arm != arms[0]:
                continue  # one swept key: a single line plot with every arm as a line
            for key in keys:
                hue = next((k for k in keys if k != key), None)
                line_arm = arm if hue else None
                fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
                line_plot(
                    results,
                    metric,
                    key,
                    ax=ax,
                    hue=hue,
                    keys=keys,
                    theory=theory,
                    arm=line_arm,
                    generation=generation,
                )
                who = f" ({line_arm})" if line_arm else ""
                ax.set_title(
                    f"{metric}{who}, {_gen_label(generation)}: mean +- s.e.; theory dashed",
                    fontsize=9,
                )
                ax.legend(fontsize=7, ncol=2)
                fig.tight_layout()
                name = f"line_{metric}_by_{key}{suffix if line_arm else ''}.png"
                paths.append(_save(fig, out / name))
    return paths
