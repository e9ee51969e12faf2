"""The README figure of ``loop.preprocess``: variance over generations with and without a clip.

    python docs/make_preprocessing_figure.py          # runs examples/preprocessing.toml in memory

writes docs/figures/preprocessing.png: the mean trace ratio tr Σ_t / tr Σ_0 over the replicate
chains per arm (no processing; clip k = 2; clip k = 2 with λ = 0.9), the 5-95% band, and the
theory dashed (λ^(t-1) without steps; c(2, 2)^t λ^(t-1) with the clip, madloop.theory.preprocess).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from madloop.experiment import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures" / "preprocessing.png"
LABELS = {"base": "no processing", "clip": "clip k = 2", "clip-biased": "clip k = 2, λ = 0.9"}


def main() -> None:
    summary = run(ROOT / "examples" / "preprocessing.toml").summary
    rows = summary[summary["metric"] == "trace_ratio"]
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=120)
    for i, (arm, g) in enumerate(rows.groupby("arm", sort=False)):
        g = g.sort_values("generation")
        color = f"C{i}"
        ax.plot(g["generation"], g["mean"], marker="o", ms=3, color=color, label=LABELS[arm])
        ax.fill_between(g["generation"], g["q05"], g["q95"], color=color, alpha=0.15)
        ax.plot(g["generation"], g["theory"], ls="--", color=color, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel("tr Σ_t / tr Σ_0")
    ax.set_title("Clipping outliers every generation (theory dashed)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT)
    plt.close(fig)
    print(OUT)


if __name__ == "__main__":
    main()
