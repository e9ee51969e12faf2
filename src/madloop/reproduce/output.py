"""Writing a reproduction directory: comparison.csv, curves.csv, reproduction.json, the figures
and the markdown table (the layout is in :mod:`madloop.storage.layout`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from madloop.report.plots import save_figure
from madloop.report.reproduction import markdown_table, study_figure
from madloop.storage import write_atomic, write_json
from madloop.storage.layout import COMPARISON, CURVES, FIGURES, REPRODUCTION


def _merged(path: Path, frame: pd.DataFrame, studies: set[str]) -> pd.DataFrame:
    """``frame`` plus the rows of other studies already in ``path`` (so running one study into
    a directory of all of them replaces that study's rows only)."""
    if not path.exists():
        return frame
    old = pd.read_csv(path)
    old = old[~old["study"].isin(studies)]
    return pd.concat([old, frame], ignore_index=True) if len(old) else frame


def write_outputs(
    result: Any, out: Path, *, quick: bool, markdown: str | os.PathLike | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names = {o.study.name for o in result.outcomes}
    comparison = _merged(out / COMPARISON, result.comparison, names)
    write_atomic(out / COMPARISON, comparison.to_csv(index=False))
    curves = pd.concat([o.curves for o in result.outcomes], ignore_index=True)
    curves = _merged(out / CURVES, curves, names)
    write_atomic(out / CURVES, curves.to_csv(index=False))
    meta: dict[str, Any] = {"studies": {}}
    if (out / REPRODUCTION).exists():
        from madloop.storage import read_json

        meta = read_json(out / REPRODUCTION)
    for o in result.outcomes:
        info = o.study.study
        meta["studies"][info.name] = {
            "paper": info.paper,
            "checks": info.checks,
            "notes": info.notes,
            "quick": quick,
            "seconds": round(o.seconds, 2),
            "rows": int(len(o.comparison)),
            "agree": int(o.comparison["agrees"].sum()),
            "load_average": o.load_average,
        }
    write_json(out / REPRODUCTION, meta)
    (out / FIGURES).mkdir(exist_ok=True)
    for o in result.outcomes:
        fig = study_figure(o.curves, o.comparison, o.study.name)
        save_figure(fig, out / FIGURES / f"{o.study.name}.png", dpi=100)
    md = Path(markdown) if markdown is not None else out / "reproductions.md"
    figures = os.path.relpath(out / FIGURES, md.parent)
    write_atomic(md, markdown_table(comparison, meta, figures=figures), fsync=False)
