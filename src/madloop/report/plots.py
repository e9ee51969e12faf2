"""Per-metric figures: the mean over replicates with a 5-95% band, and the theory curve."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LOG_SCALE = {"trace_ratio", "mean_error_sq", "kl_divergence", "wasserstein2"}
LABELS = {
    "mean_error_sq": r"$\|\mu_t-\mu_0\|^2$",
    "trace_ratio": r"tr $\Sigma_t$ / tr $\Sigma_0$",
    "log_det_change": r"log det $\Sigma_t$ - log det $\Sigma_0$",
    "wasserstein2": r"$W_2$ to the real law",
    "kl_divergence": r"KL(real $\|$ model)",
}


def plot_metric(summary: pd.DataFrame, metric: str, ax: plt.Axes) -> None:
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


def plot_metrics(summary: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """One PNG per metric under ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in summary["metric"].unique():
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        plot_metric(summary, metric, ax)
        ax.set_title(f"{metric}: mean, 5-95% band, theory dashed", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / f"{metric}.png"
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
        fig.savefig(tmp)
        os.replace(tmp, path)
        plt.close(fig)
        paths.append(path)
    return paths
