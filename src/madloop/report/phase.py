"""Phase diagrams of a sweep (the only ones): where, over two swept keys, does the loop collapse?

- :func:`heatmap`: the mean of a metric (over replicates, seeds and the other swept keys) at one
  generation, over two swept keys, with the closed-form theory drawn as labelled contours at
  :func:`contour_levels`, and optionally boundary lines on top (the web pool's critical TPR).
- :func:`line_plot`: the same over one swept key, one line per value of a second key (or per
  arm), with standard-error bars and the theory dashed.

Every cell statistic comes from :func:`madloop.tables.summarize`, so a stopped chain (NaN from
its failure on) counts here as in ``summary.csv``. Built on these two:

- :func:`plot_phase_diagrams` / :func:`write_sweep_plots` write a sweep's ``plots/``:
  ``heatmap_{metric}[_{arm}].png`` for the first two swept keys (y = the first, x = the second)
  and ``line_{metric}_by_{key}[_{arm}].png`` for each swept key (the arm suffix only when the
  sweep has several arms; with one swept key, one line plot per metric holds every arm);
- :func:`plot_phase` / :func:`plot_line`: the report's figure of a metric (a panel per arm);
- :func:`plot_pool_phase`: the web-pool diagram over (adoption, detector TPR) with its theory
  boundaries (``benchmarks/web_pool_phase.py``).

Inputs are the sweep's ``results.parquet`` / ``theory.parquet`` tables, so this module never
imports the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from madloop.report.plots import LABELS, LOG_SCALE, check_format, save_figure
from madloop.storage import SweepDir
from madloop.tables import summarize

MAX_ANNOTATED = 144  # cells: beyond this the numbers would not be readable
CAP = 0.999  # where "nines" stop: a share of 1 is drawn at 3 nines
#: columns of results.parquet / theory.parquet that are not swept keys
RESULT_COLUMNS = {
    "seed", "arm", "generation", "replicate", "metric", "value", "theory", "task", "task_id",
    "status",
}  # fmt: skip


# -- the cells ------------------------------------------------------------------------------------
def swept_keys(results: pd.DataFrame, grid: Sequence[str] | None = None) -> list[str]:
    """The swept keys that take more than one value: the sweep's grid keys when it names them,
    else every column that is not a standard one (seed, arm, generation, ...)."""
    if grid:
        keys = [k for k in grid if k in results.columns]
    else:
        keys = [c for c in results.columns if c not in RESULT_COLUMNS]
    return [k for k in keys if results[k].astype(str).nunique() > 1]


def at_generation(frame: pd.DataFrame, generation: int | None, keys: Sequence[str]) -> pd.DataFrame:
    """Rows at ``generation``; None: each task's (point, seed, arm) last generation."""
    if frame.empty:
        return frame
    if generation is not None:
        return frame[frame["generation"] == generation]
    group = [k for k in (*keys, "seed", "arm") if k in frame.columns]
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
    """:func:`~madloop.tables.summarize` of ``column`` per (y, x) at ``generation``, over
    replicates, seeds and any other swept key, sorted by (y, x). Works on ``results``
    (``value``) and ``theory`` (``column="theory"``)."""
    keys = list(keys) if keys is not None else [k for k in (x, y) if k]
    rows = results[results["metric"] == metric]
    if arm is not None:
        rows = rows[rows["arm"] == arm]
    rows = at_generation(rows, generation, keys)
    by = [k for k in (y, x) if k]
    if column != "value":
        rows = rows.drop(columns="value", errors="ignore").rename(columns={column: "value"})
    table = summarize(rows, keys=by)
    return table.drop(columns="theory").sort_values(by).reset_index(drop=True)


def cell_means(
    results: pd.DataFrame, metric: str, keys: Sequence[str], generation: int | None
) -> pd.DataFrame:
    """Per (keys..., arm): the :func:`~madloop.tables.summarize` statistics (mean, std_error,
    n, ...) of ``metric`` at ``generation`` over replicates and seeds."""
    keys = list(keys)
    rows = at_generation(results[results["metric"] == metric], generation, keys)
    return summarize(rows, keys=[*keys, "arm"]).drop(columns="theory")


def has_theory(
    theory: pd.DataFrame | None, metric: str, keys: Sequence[str], generation: int | None
) -> bool:
    """Whether ``theory`` has finite values of ``metric`` at ``generation`` over ``keys``."""
    if theory is None or theory.empty or not set(keys) <= set(theory.columns):
        return False
    rows = at_generation(theory[theory["metric"] == metric], generation, keys)
    return bool(np.isfinite(rows["theory"].to_numpy(float)).any())


def contour_levels(T: np.ndarray, n: int = 4) -> np.ndarray:
    """Levels at quantiles of the theory's values (rounded to 2 significant digits), so contours
    spread over the grid even when the values span orders of magnitude in one corner."""
    q = np.quantile(T[np.isfinite(T)], np.linspace(0, 1, n + 2)[1:-1])
    rounded = np.array([float(f"{v:.2g}") for v in q])
    inside = rounded[(rounded > np.nanmin(T)) & (rounded < np.nanmax(T))]
    return np.unique(inside)


def nines(x: np.ndarray | float) -> np.ndarray:
    """-log10(1 - x), capped at 3 (x = 0.999): shares that matter most near 1 (0.9 and 0.99 are
    one unit apart, as are 0.99 and 0.999)."""
    return -np.log10(1.0 - np.minimum(np.asarray(x, dtype=float), CAP))


# -- drawing --------------------------------------------------------------------------------------
def _ticks(values: np.ndarray) -> list[str]:
    return [f"{v:g}" if isinstance(v, int | float | np.number) else str(v) for v in values]


def _norm(metric: str, finite: np.ndarray) -> tuple[Normalize | None, bool]:
    log = metric in LOG_SCALE and finite.size > 0 and finite.min() > 0
    if log and finite.max() > finite.min():
        return LogNorm(finite.min(), finite.max()), True
    return None, log


def _annotate(ax: Axes, Z: np.ndarray, log: bool) -> None:
    finite = Z[np.isfinite(Z)]
    if Z.size > MAX_ANNOTATED or not finite.size:
        return
    mid = np.nanmedian(np.log(finite) if log else finite)
    for (i, j), v in np.ndenumerate(Z):
        if np.isfinite(v):
            dark = (np.log(v) if log else v) < mid
            color = "white" if dark else "black"
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color=color)


def _contours(ax: Axes, T: np.ndarray) -> None:
    """The theory as dashed white contours (with a dark halo, visible over bright cells)."""
    levels = contour_levels(T) if np.isfinite(T).all() and np.ptp(T) > 0 else np.array([])
    if not levels.size:
        return
    cs = ax.contour(
        np.arange(T.shape[1]), np.arange(T.shape[0]), T, levels=levels,
        colors="white", linewidths=1.0, linestyles="--",
    )  # fmt: skip
    cs.set(path_effects=[patheffects.withStroke(linewidth=2.4, foreground="black")])
    for label in ax.clabel(cs, fontsize=7, fmt="%.3g", colors="white"):
        label.set_path_effects([patheffects.withStroke(linewidth=2, foreground="black")])


def _boundaries(
    ax: Axes,
    boundaries: Mapping[str, pd.DataFrame],
    x: str,
    y: str,
    xs: np.ndarray,
    ys: np.ndarray,
    warp: Callable[[np.ndarray], np.ndarray],
) -> None:
    """Lines (columns ``x``, ``y`` in key units) on the cell grid: positions interpolated in
    ``warp``'s units between cell centres; a NaN or off-grid ``y`` is drawn at the top edge."""
    wx, wy = warp(np.asarray(xs, float)), warp(np.asarray(ys, float))
    for k, (label, b) in enumerate(boundaries.items()):
        b = b.sort_values(x)
        bx = np.interp(warp(b[x].to_numpy(float)), wx, np.arange(wx.size))
        yv = b[y].to_numpy(float)
        by = np.full(yv.size, wy.size - 0.5)
        ok = np.isfinite(yv) & (yv <= ys.max())
        by[ok] = np.interp(warp(yv[ok]), wy, np.arange(wy.size))
        style = ["-", "--", ":", "-."][k % 4]
        ax.plot(bx, by, color="deepskyblue", ls=style, lw=2.0, label=label)
    ax.set_ylim(-0.5, wy.size - 0.5)
    ax.legend(fontsize=7, loc="upper left")


def heatmap(
    results: pd.DataFrame,
    metric: str,
    x: str,
    y: str,
    *,
    ax: Axes,
    keys: Sequence[str] | None = None,
    theory: pd.DataFrame | None = None,
    arm: str | None = None,
    generation: int | None = None,
    relative_to: float | None = None,
    boundaries: Mapping[str, pd.DataFrame] | None = None,
    warp: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Colorbar:
    """Cells: the mean of ``metric`` over (y, x) (divided by ``relative_to`` when given);
    contours: the theory, where it has values; ``boundaries``: label -> frame with columns
    ``x`` and ``y``, drawn as lines (interpolated in ``warp``'s units, default linear; numeric
    keys only). Returns the colour bar."""
    table = phase_table(results, metric, x, y, keys=keys, arm=arm, generation=generation)
    grid = table.pivot(index=y, columns=x, values="mean")
    scale = 1.0 if relative_to is None else float(relative_to)
    Z = grid.to_numpy(float) / scale
    norm, log = _norm(metric, Z[np.isfinite(Z)])
    image = ax.imshow(Z, origin="lower", aspect="auto", cmap="viridis", norm=norm)
    label = LABELS.get(metric, metric)
    cbar = ax.figure.colorbar(image, ax=ax, label=label if relative_to is None else None)
    ax.set_xticks(range(Z.shape[1]), _ticks(grid.columns.to_numpy()))
    ax.set_yticks(range(Z.shape[0]), _ticks(grid.index.to_numpy()))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    _annotate(ax, Z, log)
    if theory is not None and not theory.empty and min(Z.shape) >= 2:
        th = phase_table(
            theory, metric, x, y, keys=keys, arm=arm, generation=generation, column="theory"
        )
        T = th.pivot(index=y, columns=x, values="mean").reindex(
            index=grid.index, columns=grid.columns
        )
        _contours(ax, T.to_numpy(float) / scale)
    if boundaries:
        xs, ys = grid.columns.to_numpy(), grid.index.to_numpy()
        _boundaries(ax, boundaries, x, y, xs, ys, warp or (lambda v: v))
    return cbar


def line_plot(
    results: pd.DataFrame,
    metric: str,
    x: str,
    *,
    ax: Axes,
    hue: str | None = None,
    keys: Sequence[str] | None = None,
    theory: pd.DataFrame | None = None,
    arm: str | None = None,
    generation: int | None = None,
) -> None:
    """``metric`` against swept key ``x``, one line per value of ``hue`` (a swept key or
    ``"arm"``), the mean over seeds x chains with its 95% confidence interval (Student t);
    theory dashed in the same colour."""
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
        name = f"{level:g}" if isinstance(level, int | float | np.number) else str(level)
        ax.errorbar(
            pos, t["mean"], yerr=mean_error_bars(t), color=color, marker="o", ms=3, capsize=2,
            lw=1.4, label=f"{hue_col}={name}",
        )  # fmt: skip
        if th is not None:
            rows_th = th[th[hue_col] == level] if hue_col in th else th
            tt = phase_table(rows_th, metric, x, keys=keys, generation=generation, column="theory")
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


def mean_error_bars(t: pd.DataFrame) -> np.ndarray:
    """(2, k) error bars from the mean to ``ci_low`` / ``ci_high`` (0 where there is none)."""
    mean = t["mean"].to_numpy(float)
    low = np.nan_to_num(mean - t["ci_low"].to_numpy(float), nan=0.0, posinf=0.0, neginf=0.0)
    high = np.nan_to_num(t["ci_high"].to_numpy(float) - mean, nan=0.0, posinf=0.0, neginf=0.0)
    return np.stack([np.maximum(low, 0.0), np.maximum(high, 0.0)])


# -- figures --------------------------------------------------------------------------------------
def _gen_label(generation: int | None) -> str:
    return "last generation" if generation is None else f"generation {generation}"


def _arms(results: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(results["arm"]))


def plot_phase(
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    metric: str,
    keys: Sequence[str],
    generation: int | None = None,
) -> Figure:
    """The report's phase diagram of ``metric``: one :func:`heatmap` panel per arm over keys[0]
    (y) and keys[1] (x), as in ``plots/heatmap_*.png``; other swept keys averaged."""
    keys = list(keys)
    arms = _arms(results)
    fig = Figure(figsize=(0.6 + 5.6 * len(arms), 4.6), dpi=100)
    for i, arm in enumerate(arms, start=1):
        ax = fig.add_subplot(1, len(arms), i)
        heatmap(
            results, metric, keys[1], keys[0], ax=ax, keys=keys, theory=theory, arm=arm,
            generation=generation,
        )  # fmt: skip
        ax.set_title(arm if len(arms) > 1 else "", fontsize=9)
    fig.suptitle(f"{metric} at the {_gen_label(generation)}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_line(
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    metric: str,
    key: str,
    generation: int | None = None,
) -> Figure:
    """``metric`` against one swept key, a line per arm (mean with its 95% confidence interval),
    theory dashed: the report's figure when one key is swept."""
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot()
    line_plot(results, metric, key, ax=ax, keys=[key], theory=theory, generation=generation)
    ax.set_title(f"{metric}, {_gen_label(generation)}: mean +- s.e.; theory dashed", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _heatmap_figure(
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    metric: str,
    keys: list[str],
    arm: str,
    generation: int | None,
) -> Figure:
    fig = Figure(figsize=(6.4, 4.8), dpi=110)
    ax = fig.add_subplot()
    heatmap(
        results, metric, keys[1], keys[0], ax=ax, keys=keys, theory=theory, arm=arm,
        generation=generation,
    )  # fmt: skip
    others = keys[2:]
    note = f"; mean over {', '.join(others)}" if others else ""
    title = f"{metric} ({arm}), {_gen_label(generation)}{note}"
    if theory is not None and not theory.empty:
        title += "\ncells: simulation mean; dashed contours: theory"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _line_figure(
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    metric: str,
    keys: list[str],
    key: str,
    arm: str | None,
    generation: int | None,
) -> Figure:
    hue = next((k for k in keys if k != key), None)
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    line_plot(
        results, metric, key, ax=ax, hue=hue, keys=keys, theory=theory, arm=arm,
        generation=generation,
    )  # fmt: skip
    who = f" ({arm})" if arm else ""
    title = f"{metric}{who}, {_gen_label(generation)}: mean +- s.e.; theory dashed"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_phase_diagrams(
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    keys: Sequence[str],
    out: str | os.PathLike,
    *,
    generation: int | None = None,
    fmt: str = "png",
) -> list[Path]:
    """Heatmaps over the first two swept keys and line plots over each, for every metric and
    arm, into ``out`` as ``fmt`` (png, svg, pdf); returns the paths (none when nothing was
    swept)."""
    out = Path(out)
    keys = list(keys)
    if not keys or results.empty:
        return []
    out.mkdir(parents=True, exist_ok=True)
    arms = _arms(results)
    paths = []
    for metric in dict.fromkeys(results["metric"]):
        for arm in arms:
            suffix = f"_{arm}" if len(arms) > 1 else ""
            if len(keys) >= 2:
                fig = _heatmap_figure(results, theory, metric, keys, arm, generation)
                paths.append(save_figure(fig, out / f"heatmap_{metric}{suffix}.{fmt}"))
            if len(keys) == 1 and arm != arms[0]:
                continue  # one swept key: a single line plot with every arm as a line
            line_arm = arm if len(keys) > 1 else None
            for key in keys:
                fig = _line_figure(results, theory, metric, keys, key, line_arm, generation)
                name = f"line_{metric}_by_{key}{suffix if line_arm else ''}.{fmt}"
                paths.append(save_figure(fig, out / name))
    return paths


def write_sweep_plots(
    sweep_dir: str | os.PathLike,
    generation: int | None = None,
    figures: str | os.PathLike | None = None,
    fmt: str = "png",
) -> dict[str, float]:
    """Draw a sweep directory's ``plots/`` (:func:`plot_phase_diagrams`) from its
    results.parquet, theory.parquet and the grid in sweep.json; ``generation`` None: each task's
    last; with ``figures``, the same figures as ``fmt`` into that folder too. Returns
    ``{"plots": seconds}``, for the sweep's ``timings_s``."""
    check_format(fmt)
    sweep = SweepDir(sweep_dir)
    t0 = time.perf_counter()
    if sweep.results.exists():
        results, theory, keys = sweep.read_results(), sweep.read_theory(), list(sweep.grid())
        plot_phase_diagrams(results, theory, keys, sweep.plots, generation=generation)
        if figures is not None:
            plot_phase_diagrams(results, theory, keys, figures, generation=generation, fmt=fmt)
    return {"plots": round(time.perf_counter() - t0, 4)}


def plot_pool_phase(
    cells: pd.DataFrame,
    boundaries: Mapping[str, pd.DataFrame],
    path: str | os.PathLike,
    *,
    level: float,
    title: str,
    value_label: str = "mean_error_sq",
) -> Path:
    """The web-pool phase diagram: a :func:`heatmap` of ``cells`` (columns ``adoption``,
    ``tpr``, ``value``; averaged per cell) relative to ``level`` (e.g. the fresh-data mean
    error), with one line per boundary (columns ``adoption``, ``critical_tpr``) placed in
    "nines" (:func:`nines`). Written atomically to ``path``."""
    frame = cells[["adoption", "tpr", "value"]].assign(
        metric=value_label, arm="pool", generation=0, seed=0
    )
    lines = {k: b.rename(columns={"critical_tpr": "tpr"}) for k, b in boundaries.items()}
    fig = Figure(figsize=(7.2, 5.0), dpi=110)
    ax = fig.add_subplot()
    cbar = heatmap(
        frame, value_label, "adoption", "tpr", ax=ax, keys=["adoption", "tpr"], generation=0,
        relative_to=level, boundaries=lines, warp=nines,
    )  # fmt: skip
    cbar.set_label(f"{value_label} / fresh-data level")
    ax.set_xlabel("adoption: generated share of new content")
    ax.set_ylabel("detector true positive rate")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
