"""The web-pool phase diagram: a metric over (adoption, detector TPR) with the theory's boundary.

Both axes are shares that matter most near 1, so they are drawn in "nines", -log10(1 - x):
0.9 and 0.99 are one unit apart, as are 0.99 and 0.999. Used by ``benchmarks/web_pool_phase.py``;
the sweep module's generic phase plots (when present) draw the same data from ``results.parquet``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

CAP = 0.999  # where "nines" stop: a share of 1 is drawn at 3 nines


def nines(x: np.ndarray | float) -> np.ndarray:
    """-log10(1 - x), capped at 3 (x = 0.999)."""
    return -np.log10(1.0 - np.minimum(np.asarray(x, dtype=float), CAP))


def _edges(centres: np.ndarray) -> np.ndarray:
    mid = (centres[1:] + centres[:-1]) / 2
    first = centres[0] - (mid[0] - centres[0]) if centres.size > 1 else centres[0] - 0.5
    last = centres[-1] + (centres[-1] - mid[-1]) if centres.size > 1 else centres[-1] + 0.5
    return np.concatenate([[first], mid, [last]])


def plot_pool_phase(
    cells: pd.DataFrame,
    boundaries: Mapping[str, pd.DataFrame],
    path: str | os.PathLike,
    *,
    level: float,
    title: str,
    value_label: str = "mean_error_sq",
) -> Path:
    """Heatmap of ``cells`` (columns ``adoption``, ``tpr``, ``value``; averaged per cell) relative
    to ``level`` (e.g. the fresh-data mean error), with one line per boundary (columns
    ``adoption``, ``critical_tpr``). Written atomically to ``path``."""
    grid = cells.groupby(["tpr", "adoption"])["value"].mean().unstack("adoption")
    a, t = grid.columns.to_numpy(float), grid.index.to_numpy(float)
    ratio = grid.to_numpy(float) / level
    fig, ax = plt.subplots(figsize=(7.2, 5.0), dpi=110)
    finite = ratio[np.isfinite(ratio) & (ratio > 0)]
    norm = LogNorm(vmin=max(finite.min(), 1e-3), vmax=max(finite.max(), 2.0))
    mesh = ax.pcolormesh(_edges(nines(a)), _edges(nines(t)), ratio, norm=norm, cmap="magma_r")
    for i in range(t.size):
        for j in range(a.size):
            ax.text(
                nines(a[j]), nines(t[i]), f"{ratio[i, j]:.3g}", ha="center", va="center",
                fontsize=6.5, color="white" if ratio[i, j] > np.sqrt(norm.vmax) else "black",
            )  # fmt: skip
    styles = ["-", "--", ":", "-."]
    for k, (label, b) in enumerate(boundaries.items()):
        b = b.sort_values("adoption")
        y = b["critical_tpr"].to_numpy(float)
        ax.plot(nines(b["adoption"]), nines(np.nan_to_num(y, nan=CAP)), color="deepskyblue",
                ls=styles[k % 4], lw=2.0, label=label)  # fmt: skip
    ticks_a = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    ticks_t = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999]
    ax.set_xticks(nines(ticks_a), [f"{v:g}" for v in ticks_a], fontsize=7)
    ax.set_yticks(nines(ticks_t), [f"{v:g}" for v in ticks_t], fontsize=7)
    ax.set_xlim(_edges(nines(a))[[0, -1]])
    ax.set_ylim(_edges(nines(t))[[0, -1]])
    ax.set_xlabel("adoption: generated share of new content")
    ax.set_ylabel("detector true positive rate")
    fig.colorbar(mesh, ax=ax, label=f"{value_label} / fresh-data level")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp)
    os.replace(tmp, path)
    plt.close(fig)
    return path
