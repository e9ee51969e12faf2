"""Phase diagrams of a sweep: a metric at one generation over two swept keys, as a heatmap per arm,
with the closed-form theory drawn as contours on the same colour levels; or a line over one key.

Reads the sweep-directory tables only: ``results.parquet`` (swept keys as dotted-name columns next
to seed, arm, generation, replicate, metric, value) and ``theory.parquet`` (swept keys, seed, arm,
generation, metric, theory). Cells average over replicates and seeds.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator  # noqa: E402

from madloop.report.plots import LABELS, LOG_SCALE  # noqa: E402

RESULT_COLUMNS = {
    "seed",
    "arm",
    "generation",
    "replicate",
    "metric",
    "value",
    "theory",
    "task",
    "task_id",
    "status",
}


def swept_keys(results: pd.DataFrame, grid: list[str] | None = None) -> list[str]:
    """The swept keys that take more than one value: the sweep's grid keys when it names them,
    else every column that is not a standard one (seed, arm, generation, ...)."""
    if grid:
        keys = [k for k in grid if k in results.columns]
    else:
        keys = [c for c in results.columns if c not in RESULT_COLUMNS]
    return [k for k in keys if results[k].astype(str).nunique() > 1]


def _sorted_values(series: pd.Series) -> list:
    values = series.dropna().unique().tolist()
    try:
        return sorted(values, key=float)
    except (TypeError, ValueError):
        return sorted(values, key=str)


def cell_means(
    results: pd.DataFrame, metric: str, keys: list[str], generation: int
) -> pd.DataFrame:
    """Per (keys..., arm): mean, std_error and n of ``metric`` at ``generation`` over replicates
    and seeds."""
    rows = results[(results["metric"] == metric) & (results["generation"] == generation)]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, "arm", "mean", "std_error", "n"])
    g = rows.groupby([*keys, "arm"], sort=False, dropna=False)["value"]
    out = g.agg(mean="mean", std="std", n="size").reset_index()
    out["std_error"] = out["std"] / np.sqrt(out["n"])
    return out.drop(columns="std")


def theory_means(theory: pd.DataFrame | None, metric: str, keys: list[str], generation: int):
    if theory is None or theory.empty or not set(keys) <= set(theory.columns):
        return None
    rows = theory[(theory["metric"] == metric) & (theory["generation"] == generation)]
    if rows.empty:
        return None
    return rows.groupby([*keys, "arm"], sort=False, dropna=False)["theory"].mean().reset_index()


def _grid(frame: pd.DataFrame, column: str, x: str, y: str, xs: list, ys: list) -> np.ndarray:
    table = frame.pivot_table(index=y, columns=x, values=column, aggfunc="mean")
    table = table.reindex(index=ys, columns=xs)
    return table.to_numpy(float)


def _norm(metric: str, values: np.ndarray) -> Normalize:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Normalize(0, 1)
    lo, hi = float(finite.min()), float(finite.max())
    if metric in LOG_SCALE and lo > 0:
        if hi <= lo:
            hi = lo * 1.01
        return LogNorm(lo, hi)
    if hi <= lo:
        hi = lo + 1e-12
    return Normalize(lo, hi)


TRACE_LEVELS = np.array([0.25, 0.5, 0.9])  # a quarter, half (collapse), 90% of the variance kept


def _levels(norm: Normalize, metric: str = "") -> np.ndarray:
    if metric == "trace_ratio":
        levels = TRACE_LEVELS
    elif isinstance(norm, LogNorm):
        levels = LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(norm.vmin, norm.vmax)
    else:
        levels = MaxNLocator(6).tick_values(norm.vmin, norm.vmax)
    return levels[(levels > norm.vmin) & (levels < norm.vmax)]


def _label(v: object) -> str:
    if isinstance(v, float | np.floating):
        return f"{v:g}"
    return str(v)


def plot_phase(
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    metric: str,
    keys: list[str],
    generation: int,
) -> plt.Figure:
    """A heatmap of ``metric`` at ``generation`` over keys[0] (x) and keys[1] (y), one panel per
    arm, other swept keys averaged; dashed white contours: the theory at a few labelled levels."""
    x, y = keys[0], keys[1]
    cells = cell_means(results, metric, [x, y], generation)
    th = theory_means(theory, metric, [x, y], generation)
    xs, ys = _sorted_values(results[x]), _sorted_values(results[y])
    arms = list(dict.fromkeys(cells["arm"]))
    values = cells["mean"].to_numpy(float)
    norm = _norm(metric, values)
    fig, axes = plt.subplots(
        1, len(arms), figsize=(0.6 + 4.4 * len(arms), 3.8), dpi=100, squeeze=False
    )
    image = None
    for ax, arm in zip(axes[0], arms, strict=True):
        Z = _grid(cells[cells["arm"] == arm], "mean", x, y, xs, ys)
        image = ax.imshow(Z, origin="lower", aspect="auto", cmap="viridis", norm=norm)
        if Z.size <= 64:
            for (i, j), v in np.ndenumerate(Z):
                if np.isfinite(v):
                    shade = norm(v)
                    ax.text(
                        j,
                        i,
                        f"{v:.2g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if shade > 0.6 else "white",
                    )
        if th is not None:
            TZ = _grid(th[th["arm"] == arm], "theory", x, y, xs, ys)
            levels = _levels(norm, metric)
            if np.isfinite(TZ).sum() >= 4 and min(TZ.shape) >= 2 and levels.size:
                cs = ax.contour(
                    np.arange(len(xs)),
                    np.arange(len(ys)),
                    TZ,
                    levels=levels,
                    colors="white",
                    linestyles="--",
                    linewidths=1.0,
                    norm=norm,
                )
                ax.clabel(cs, fontsize=6, fmt="%.2g")
        ax.set_xticks(range(len(xs)), [_label(v) for v in xs], fontsize=7)
        ax.set_yticks(range(len(ys)), [_label(v) for v in ys], fontsize=7)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(arm if len(arms) > 1 else "", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label=LABELS.get(metric, metric), shrink=0.9)
    fig.suptitle(f"{metric} at generation {generation}", fontsize=10)
    return fig


def plot_line(
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    metric: str,
    key: str,
    generation: int,
) -> plt.Figure:
    """``metric`` at ``generation`` against one swept key: mean ± 2 standard errors per arm,
    theory dashed."""
    cells = cell_means(results, metric, [key], generation)
    th = theory_means(theory, metric, [key], generation)
    xs = _sorted_values(results[key])
    numeric = all(isinstance(v, int | float | np.number) for v in xs)
    pos = {v: (float(v) if numeric else i) for i, v in enumerate(xs)}
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
    for i, (arm, g) in enumerate(cells.groupby("arm", sort=False)):
        g = g.assign(_x=g[key].map(pos)).sort_values("_x")
        color = f"C{i % 10}"
        ax.errorbar(
            g["_x"],
            g["mean"],
            yerr=2 * g["std_error"].fillna(0),
            color=color,
            marker="o",
            ms=3,
            capsize=2,
            lw=1.4,
            label=str(arm),
        )
        if th is not None:
            t = th[th["arm"] == arm].assign(_x=lambda f: f[key].map(pos)).sort_values("_x")
            ax.plot(t["_x"], t["theory"], color=color, ls="--", lw=1.1, label=f"{arm} (theory)")
    if not numeric:
        ax.set_xticks(range(len(xs)), [_label(v) for v in xs])
    finite = cells["mean"].to_numpy(float)
    finite = finite[np.isfinite(finite)]
    if metric in LOG_SCALE and finite.size and finite.min() > 0:
        ax.set_yscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.set_title(f"{metric} at generation {generation}: mean ± 2 s.e., theory dashed", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
