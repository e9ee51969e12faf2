"""The README figures of the neural examples, from their run directories.

    madloop run examples/mad-ddpm-2d.toml --out runs/mad-ddpm-2d
    madloop run examples/mad-digits.toml --out runs/mad-digits
    python docs/make_neural_figures.py

writes docs/figures/{name}-metrics.png (mean over replicates per arm) and copies chosen sample
galleries to docs/figures/{name}-{arm}-gen{t}.png.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures"
PANELS = {
    "mad-ddpm-2d": ["precision", "recall", "modes_covered", "high_quality"],
    "mad-digits": ["precision", "recall", "fd", "class_entropy"],
}


def metrics_figure(name: str, run: Path) -> Path:
    summary = pd.read_csv(run / "summary.csv")
    metrics = PANELS[name]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.0), dpi=110)
    for ax, metric in zip(axes, metrics, strict=True):
        rows = summary[summary["metric"] == metric]
        for i, (arm, g) in enumerate(rows.groupby("arm", sort=False)):
            g = g.sort_values("generation")
            ax.plot(g["generation"], g["mean"], marker="o", ms=3, color=f"C{i}", label=arm)
            if g["n"].max() > 1:
                ax.fill_between(g["generation"], g["q05"], g["q95"], color=f"C{i}", alpha=0.15)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = OUT / f"{name}-metrics.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in PANELS:
        run = ROOT / "runs" / name
        if not (run / "summary.csv").exists():
            print(f"skip {name}: no {run}/summary.csv", file=sys.stderr)
            continue
        print(metrics_figure(name, run))
        last = int(pd.read_csv(run / "summary.csv")["generation"].max())
        for arm, gen in [("base", 1), ("base", last), ("guided", last), ("fresh", last)]:
            src = run / "plots" / "samples" / f"{arm}_gen{gen:03d}.png"
            if src.exists():
                dst = OUT / f"{name}-{arm}-gen{gen}.png"
                shutil.copyfile(src, dst)
                print(dst)


if __name__ == "__main__":
    main()
