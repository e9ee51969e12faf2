"""Per-metric figures: the mean over replicates with a 5-95% band, and the theory curve.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, so no global figure state)
and written through :func:`madloop.storage.atomic_path`: a reader never sees half a PNG.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from madloop.storage import RunDir, atomic_path

LOG_SCALE = {"trace_ratio", "mean_error_sq", "kl_divergence", "wasserstein2"}
LABELS = {
    "mean_error_sq": r"$\|\mu_t-\mu_0\|^2$",
    "trace_ratio": r"tr $\Sigma_t$ / tr $\Sigma_0$",
    "log_det_change": r"log det $\Sigma_t$ - log det $\Sigma_0$",
    "wasserstein2": r"$W_2$ to the real law",
    "kl_divergence": r"KL(real $\|$ model)",
}


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


def plot_metric(summary: pd.DataFrame, metric: str, ax: Axes) -> None:
    """One metric of a summary table on ``ax``: per arm the mean, the 5-95% band, theory dashed."""
    rows = summary[summary["metric"] == metric]
    for i, (arm, g) in enumerate(rows.groupby("arm", sort=False)):
        g = g.sort_values("generation")
        color = f"C{i % 10}"
        x = g["generation"].to_numpy()
        ax.plot(x, g["mean"], color=color, label=f"{arm}", lw=1.6)
        lo, hi = g["q05"].to_numpy(float), g["q95"].to_numpy(float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.15, lw=0)
        if "theory" in g and np.isfinite(g["theory"].to_numpy(float)).any():
            ax.plot(x, g["theory"], color=color, ls="--", lw=1.2, label=f"{arm} (theory)")
    positive = rows[["mean", "q05"]].to_numpy(float)
    if metric in LOG_SCALE and np.all(positive[np.isfinite(positive)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.grid(alpha=0.3)


def metric_figure(summary: pd.DataFrame, metric: str) -> Figure:
    """The figure of one metric as it is written to a run's ``plots/{metric}.png``."""
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    plot_metric(summary, metric, ax)
    ax.set_title(f"{metric}: mean, 5-95% band, theory dashed", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_metrics(summary: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """One PNG per metric under ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [
        save_figure(metric_figure(summary, metric), out / f"{metric}.png")
        for metric in summary["metric"].unique()
    ]


def write_run_plots(run_dir: str | os.PathLike) -> dict[str, float]:
    """Draw a run directory's ``plots/{metric}.png`` from its ``summary.csv``.

    Returns ``{"plots": seconds}``, for the manifest's ``timings_s``.
    """
    run = RunDir(run_dir)
    t0 = time.perf_counter()
    plot_metrics(run.read_summary(), run.plots)
    return {"plots": round(time.perf_counter() - t0, 4)}
