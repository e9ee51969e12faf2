"""Per-metric figures: the mean over replicate chains, the 95% confidence interval of that mean
(darker band), the 5-95% spread of the chains themselves (lighter band), the theory curve
(dashed) and the real-data floor (dotted: generation 0, a perfect model's value).

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, so no global figure state)
and written through :func:`madloop.storage.atomic_path`: a reader never sees half a PNG.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullLocator

from madloop.glossary import GLOSSARY, METRICS
from madloop.storage import RunDir, atomic_path
from madloop.tables import Table, read_csv_table

if TYPE_CHECKING:
    import pandas as pd

LOG_SCALE = {"trace_ratio", "mean_error_sq", "kl_divergence", "wasserstein2"}
#: axis labels, from the glossary (one home for what a metric means)
LABELS = {m.name: m.axis_label for m in METRICS}
FIGURE_FORMATS = ("png", "svg", "pdf")
#: zlib level of a run's PNGs: the same pixels, files ~10% larger, 17% less time drawing than
#: the default 6 (measured on the five Gaussian figures)
FAST_PNG = 1
CI_ALPHA, SPREAD_ALPHA = 0.35, 0.12  # the interval of the mean darker, the chains' spread lighter


class PlainLogFormatter(LogFormatter):
    """A log axis labelled ``0.6``, ``2``, ``1e-05``: matplotlib chooses which ticks get a label,
    the text is ``%g``."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def save_figure(fig: Figure, path: str | os.PathLike, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` atomically (the format from the suffix); returns the path."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, **savefig)
    return path


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """``fig`` as PNG bytes (for inlining in a page)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_metric(summary: pd.DataFrame | Table, metric: str, ax: Axes) -> Axes:
    """One metric of a summary table (a DataFrame or a :class:`madloop.tables.Table`) on
    ``ax``: per arm the mean (line), the 95% interval of the mean (``ci_low``..``ci_high``,
    darker band), the 5-95% of chains (``q05``..``q95``, lighter band), theory dashed, and the
    real-data floor (generation 0) dotted; the legend names each style once. Returns ``ax``."""
    cols = summary_columns(summary)
    rows = np.flatnonzero(cols["metric"] == metric)
    styles: set[str] = set()
    arms = cols["arm"][rows]
    for i, arm in enumerate(dict.fromkeys(arms)):
        mine = rows[arms == arm]
        mine = mine[np.argsort(cols["generation"][mine], kind="stable")]
        gens = cols["generation"][mine]
        floor, mine = mine[gens == 0], mine[gens > 0]
        color = f"C{i % 10}"
        x = cols["generation"][mine]
        ax.plot(x, cols["mean"][mine], color=color, label=f"{arm}", lw=1.6)
        for lo_col, hi_col, alpha, style in (
            ("q05", "q95", SPREAD_ALPHA, "spread"),
            ("ci_low", "ci_high", CI_ALPHA, "ci"),
        ):
            if lo_col not in cols:  # a summary written before the interval columns
                continue
            lo, hi = cols[lo_col][mine], cols[hi_col][mine]
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=alpha, lw=0)
                styles.add(style)
        if "theory" in cols and np.isfinite(cols["theory"][mine]).any():
            ax.plot(x, cols["theory"][mine], color=color, ls="--", lw=1.2)
            styles.add("theory")
        if floor.size and np.isfinite(cols["mean"][floor[0]]):
            ax.axhline(float(cols["mean"][floor[0]]), color=color, ls=":", lw=1.3)
            styles.add("floor")
    positive = np.concatenate([cols["mean"][rows], cols["q05"][rows]])
    if metric in LOG_SCALE and np.all(positive[np.isfinite(positive)] > 0):
        ax.set_yscale("log")
        # plain numbers (0.6, 2, 1e-05), not mathtext: as readable, and typesetting every
        # minor label was most of the time of drawing a log-scale figure
        ax.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
        shown = np.concatenate([cols[c][rows] for c in ("q05", "q95", "mean")])
        shown = shown[np.isfinite(shown) & (shown > 0)]
        if shown.size and np.log10(shown.max() / shown.min()) > 2:
            # over more than two decades the minor ticks get no labels, only marks, and each
            # tick costs a millisecond to draw: the decades alone
            ax.yaxis.set_minor_locator(NullLocator())
    _style_legend(ax, styles)
    ax.set_xlabel("generation")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    return ax


#: the summary columns a figure reads, with their types
_NUMERIC = ("mean", "q05", "q95", "ci_low", "ci_high", "theory")


def summary_columns(summary: pd.DataFrame | Table) -> dict[str, np.ndarray]:
    """The columns a figure reads, as numpy arrays (floats for the statistics)."""
    if isinstance(summary, Table):
        names, get = summary.names, summary.column
    else:
        names, get = list(summary.columns), lambda c: summary[c].to_numpy()
    cols = {c: get(c) for c in ("arm", "metric", "generation") if c in names}
    cols["generation"] = np.asarray(cols["generation"], dtype=np.int64)
    for c in _NUMERIC:
        if c in names:
            cols[c] = np.asarray(get(c), dtype=float)
    return cols


def summary_metrics(summary: pd.DataFrame | Table) -> list[str]:
    """The summary's metrics, in the order they first appear."""
    metric = summary.column("metric") if isinstance(summary, Table) else summary["metric"]
    return list(dict.fromkeys(metric))


def _style_legend(ax: Axes, styles: set[str]) -> None:
    """Grey legend entries saying what each band and line is (the arms have their colours):
    empty artists, so they show in any ``ax.legend()`` and leave the axis limits alone."""
    grey = "0.35"
    if "ci" in styles:
        ax.fill_between([], [], [], color=grey, alpha=CI_ALPHA, lw=0, label="95% CI of the mean")
    if "spread" in styles:
        ax.fill_between([], [], [], color=grey, alpha=SPREAD_ALPHA, lw=0, label="5-95% of chains")
    if "theory" in styles:
        ax.plot([], [], color=grey, ls="--", lw=1.2, label="theory")
    if "floor" in styles:
        ax.plot([], [], color=grey, ls=":", lw=1.3, label="real data (generation 0)")


def metric_title(metric: str) -> str:
    """A figure title: the metric and which way is better (from the glossary)."""
    m = GLOSSARY.get(metric)
    return f"{metric} ({m.better} is better)" if m is not None else metric


def metric_figure(summary: pd.DataFrame | Table, metric: str) -> Figure:
    """The figure of one metric as it is written to a run's ``plots/{metric}.png``."""
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    plot_metric(summary, metric, ax)
    # a fixed title position (y given): placing it automatically measures the tick labels
    ax.set_title(metric_title(metric), fontsize=10, y=1.0, pad=6.0)
    ax.legend(fontsize=7, ncol=2)
    # fixed margins, not tight_layout: laying out measures every tick label in an extra draw,
    # which was half the time of writing a run's plots; these fit the labels of every metric
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.92)
    return fig


def plot_metrics(
    summary: pd.DataFrame | Table,
    out: str | os.PathLike,
    fmt: str = "png",
    metrics: Sequence[str] | None = None,
) -> list[Path]:
    """One figure per metric (``metrics``, default every metric of the summary) under ``out``,
    as ``fmt`` (png, svg or pdf); returns the paths."""
    check_format(fmt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fast = {"pil_kwargs": {"compress_level": FAST_PNG}} if fmt == "png" else {}
    return [
        save_figure(metric_figure(summary, metric), out / f"{metric}.{fmt}", **fast)
        for metric in (summary_metrics(summary) if metrics is None else metrics)
    ]


def check_format(fmt: str) -> None:
    """A figure format matplotlib writes here, or ValueError naming the choices."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {', '.join(FIGURE_FORMATS)}")


def write_run_plots(
    run_dir: str | os.PathLike, figures: str | os.PathLike | None = None, fmt: str = "png"
) -> dict[str, float]:
    """Draw a run directory's ``plots/{metric}.png`` from its ``summary.csv``, and with
    ``figures`` the same figures as ``fmt`` into that folder (for a paper: svg or pdf).

    Returns ``{"plots": seconds}``, for the manifest's ``timings_s``.
    """
    check_format(fmt)
    t0 = time.perf_counter()
    summary = read_csv_table(RunDir(run_dir).summary)
    draw_run_figures(summary, run_dir, figures, fmt)
    return {"plots": round(time.perf_counter() - t0, 4)}


def draw_run_figures(
    summary: pd.DataFrame | Table,
    run_dir: str | os.PathLike,
    figures: str | os.PathLike | None = None,
    fmt: str = "png",
    metrics: Sequence[str] | None = None,
) -> None:
    """What :func:`write_run_plots` draws from ``summary``, for ``metrics`` (default all)."""
    plot_metrics(summary, RunDir(run_dir).plots, metrics=metrics)
    if figures is not None:
        plot_metrics(summary, figures, fmt, metrics=metrics)
