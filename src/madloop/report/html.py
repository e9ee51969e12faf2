"""``madloop report DIR``: one self-contained HTML page for a run directory, a sweep directory, or
a folder of them (e.g. ``runs/demo`` with ``gaussian/``, ``phase/``, ``images/``).

Self-contained means the page opens from disk with no network: every figure is an inline base64
PNG, styles and the one small script (click a figure to zoom) are inline, and nothing is fetched.
Each part of the page appears only when its files exist (galleries when ``plots/samples/`` has
them, phase diagrams for sweeps, theory where ``summary.csv`` has it), so a run of any family, or a
sweep, renders without special cases. The parts are made in :mod:`madloop.report.parts`, from
files read through :mod:`madloop.storage`: the report never imports the loop.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from madloop.report.parts import Part, run_part, sweep_part
from madloop.report.plots import check_format, save_figure
from madloop.storage import RunDir, SweepDir, write_atomic
from madloop.storage.layout import COMPARISON, MANIFEST, RESULTS, SUMMARY, SWEEP_JSON

TEMPLATES = Path(__file__).parent / "templates"


class ReportError(ValueError):
    """DIR is not something a report can be made of; the message says what was expected."""


def kind_of(path: Path) -> str | None:
    """ "run", "sweep", "reproduction" (``madloop reproduce``'s comparison.csv), "collection"
    (a folder of runs / sweeps) or None."""
    if (path / COMPARISON).is_file():
        return "reproduction"
    if SweepDir(path).exists():
        return "sweep"
    if RunDir(path).exists():
        return "run"
    if path.is_dir() and any(kind_of(p) in ("run", "sweep") for p in _subdirs(path)):
        return "collection"
    return None


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stamp(path: Path) -> float:
    for name in (MANIFEST, SWEEP_JSON, SUMMARY, RESULTS):
        if (path / name).exists():
            return (path / name).stat().st_mtime
    return path.stat().st_mtime


def parts_of(path: Path, *, cutoff: float | None = None) -> list[Part]:
    """The parts of the page for ``path``: one for a run or a sweep, one per member of a folder
    of them (oldest first)."""
    kind = kind_of(path)
    if kind == "reproduction":
        from madloop.report.reproduction import reproduction_part

        return [reproduction_part(path)]  # each study's run: `madloop report DIR/runs/NAME`
    if kind == "run":
        return [run_part(path, cutoff=cutoff)]
    if kind == "sweep":
        return [sweep_part(path, cutoff=cutoff)]
    if kind == "collection":
        parts = []
        for sub in sorted(_subdirs(path), key=_stamp):
            k = kind_of(sub)
            if k == "run":
                parts.append(run_part(sub, sub.name, cutoff=cutoff))
            elif k == "sweep":
                parts.append(sweep_part(sub, sub.name, cutoff=cutoff))
        seen: set[str] = set()
        for p in parts:  # unique anchors
            while p.id in seen:
                p.id += "-x"
            seen.add(p.id)
        return parts
    raise ReportError(
        f"{path}: not a run directory (summary.csv / metrics.parquet), a sweep directory "
        "(results.parquet / sweep.json) or a folder of them; run `madloop run CONFIG --out DIR` "
        "first"
    )


def render(parts: list[Part], title: str, notes: list[str] | None = None) -> str:
    """The page's HTML text."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    return template.render(
        title=title,
        parts=parts,
        notes=notes or [],
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        css=(TEMPLATES / "report.css").read_text(),
        js=(TEMPLATES / "report.js").read_text(),
    )


def build_report(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    figures: str | os.PathLike | None = None,
    cutoff: float | None = None,
    notes: list[str] | None = None,
    fmt: str = "png",
) -> Path:
    """Write the report of the run / sweep / folder at ``path`` to ``out`` (default
    ``path/report.html``); with ``figures``, also write every figure there as ``fmt`` (png, the
    bytes inlined in the page; svg or pdf, drawn again as vectors)."""
    check_format(fmt)
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such directory")
    parts = parts_of(path, cutoff=cutoff)
    out = Path(out) if out is not None else path / "report.html"
    page = render(parts, title or f"madloop report: {path.name}", notes)
    write_atomic(out, page, fsync=False)
    if figures is not None:
        folder = Path(figures)
        folder.mkdir(parents=True, exist_ok=True)
        for part in parts:
            for fig in part.figures:
                if fmt != "png" and fig.figure is not None:
                    save_figure(fig.figure, folder / f"{fig.name}.{fmt}")
                    continue
                data = base64.b64decode(fig.uri.split(",", 1)[1])
                write_atomic(folder / f"{fig.name}.png", data, fsync=False)
    return out


__all__ = ["ReportError", "build_report", "kind_of", "parts_of", "render"]
