"""``madloop report DIR``: one self-contained HTML page for a run directory, a sweep directory, or
a folder of them (e.g. ``runs/demo`` with ``gaussian/``, ``phase/``, ``images/``).

Self-contained means the page opens from disk with no network: every figure is an inline base64
PNG, styles and the one small script (click a figure to zoom) are inline, and nothing is fetched.
Each part of the page appears only when its files exist (galleries when ``plots/samples/`` has
them, phase diagrams for sweeps, theory where ``summary.csv`` has it), so a run of any family, or a
sweep, renders without special cases.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from madloop.report import findings as fnd

TEMPLATES = Path(__file__).parent / "templates"
GALLERY_PATTERN = re.compile(
    r"^(?P<arm>.+)_gen(?P<gen>\d{3,})(?P<suffix>[^.]*)\.(?P<ext>png|svg|txt|jpg|jpeg)$"
)
GALLERY_COLUMNS = 6  # generations shown per arm: the first, the last and a log-spaced few between
TEXT_LIMIT = 3000  # characters of a text excerpt
IMAGE_LIMIT = 600_000  # bytes; larger gallery images are re-encoded smaller


class ReportError(ValueError):
    """DIR is not something a report can be made of; the message says what was expected."""


# -- what a directory is --------------------------------------------------------------------------
def kind_of(path: Path) -> str | None:
    """ "run", "sweep", "collection" (a folder of runs / sweeps) or None."""
    if (path / "results.parquet").exists() or (path / "sweep.json").exists():
        return "sweep"
    if (path / "summary.csv").exists() or (path / "metrics.parquet").exists():
        return "run"
    if path.is_dir() and any(kind_of(p) in ("run", "sweep") for p in _subdirs(path)):
        return "collection"
    return None


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stamp(path: Path) -> float:
    for name in ("manifest.json", "sweep.json", "summary.csv", "results.parquet"):
        if (path / name).exists():
            return (path / name).stat().st_mtime
    return path.stat().st_mtime


# -- small helpers --------------------------------------------------------------------------------
def png_data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _shrink(data: bytes) -> bytes:
    """Re-encode a large gallery image at most 1024 px wide, so the page stays small."""
    if len(data) <= IMAGE_LIMIT:
        return data
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.thumbnail((1024, 1024))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _width(data: bytes) -> int:
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).size[0]
    except OSError:
        return 0


def write_atomic(path: Path, data: bytes | str) -> None:
    """Temp file beside ``path``, then rename: a reader never sees half a page. (The report does
    not import the experiment module, which pulls in the loop.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def to_toml(config: dict[str, Any]) -> str:
    """A config dict as TOML-looking text: scalars first, then one [table] per mapping."""
    lines, tables = [], []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif key != "arms":
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines).strip()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(base: dict[str, Any], arm: dict[str, Any]) -> list[str]:
    """``key = value`` lines where an arm's resolved config differs from the base config."""
    b, a = _flatten(base), _flatten(arm)
    skip = {"arms", "name"}
    return [
        f"{k} = {_toml_value(v)}" for k, v in a.items() if k not in skip and b.get(k, object()) != v
    ]


def describe_arm(config: dict[str, Any]) -> str:
    """One line: what this arm's loop does."""
    loop, model = config.get("loop", {}), config.get("model", {})
    data, sampling = config.get("data", {}), config.get("sampling", {})
    parts = [str(loop.get("regime", "?"))]
    fam = str(model.get("family", "?"))
    if model.get("mode"):
        fam += f" ({model['mode']})"
    parts.append(f"{fam} on {data.get('source', '?')}")
    if "bias" in sampling:
        parts.append(f"bias λ = {sampling['bias']}")
    if "real_size" in loop or "synthetic_size" in loop:
        parts.append(
            f"{loop.get('real_size', 0)} real + {loop.get('synthetic_size', 0)} synthetic per "
            "generation"
        )
    return ", ".join(parts)


# -- the page's parts -----------------------------------------------------------------------------
@dataclass
class Figure:
    name: str  # file-name stem when figures are also written out
    title: str
    uri: str
    caption: str = ""


@dataclass
class Part:
    id: str
    title: str
    kind: str  # "run" | "sweep"
    path: str
    description: list[str] = field(default_factory=list)
    arms: list[dict[str, Any]] = field(default_factory=list)  # arm, verdict, what, sentences
    sentences: list[str] = field(default_factory=list)
    theory_note: str = ""
    departures: list[dict[str, str]] = field(default_factory=list)
    curves: list[Figure] = field(default_factory=list)
    last_table: list[dict[str, str]] = field(default_factory=list)
    galleries: list[dict[str, Any]] = field(default_factory=list)
    phase: list[Figure] = field(default_factory=list)
    phase_note: str = ""
    provenance: list[tuple[str, str]] = field(default_factory=list)
    config_text: str = ""
    arm_configs: list[tuple[str, str, list[str]]] = field(default_factory=list)
    tasks: dict[str, Any] = field(default_factory=dict)

    @property
    def figures(self) -> list[Figure]:
        return self.curves + self.phase

    @property
    def sections(self) -> list[tuple[str, str]]:
        """(section key, heading) of the sections this part has, in page order."""
        out = [("summary", "What happened")]
        if self.curves:
            out.append(("metrics", "Metrics over generations"))
        if self.galleries:
            out.append(("galleries", "Samples by generation"))
        if self.phase:
            out.append(("phase", "Phase diagrams"))
        if self.tasks:
            out.append(("tasks", "Tasks"))
        out.append(("config", "Config and provenance"))
        return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "part"


# -- runs -----------------------------------------------------------------------------------------
def _run_summary(path: Path) -> pd.DataFrame:
    if (path / "summary.csv").exists():
        summary = pd.read_csv(path / "summary.csv")
        for column in ("std_error", "median", "q05", "q95", "n", "theory"):
            if column not in summary:  # an older or foreign summary: show what it has
                summary[column] = summary["mean"] if column == "median" else np.nan
        summary["theory"] = pd.to_numeric(summary["theory"], errors="coerce")
        return summary
    # a run without summary.csv: the same statistics from the long table (no theory column)
    metrics = pd.read_parquet(path / "metrics.parquet")
    g = metrics.groupby(["arm", "generation", "metric"], sort=False)["value"]
    out = g.agg(
        mean="mean",
        std="std",
        median="median",
        q05=lambda v: v.quantile(0.05),
        q95=lambda v: v.quantile(0.95),
        n="size",
    ).reset_index()
    out["std_error"] = out.pop("std") / np.sqrt(out["n"])
    out["theory"] = np.nan
    return out


def run_part(path: Path, title: str | None = None, *, cutoff: float | None = None) -> Part:
    from madloop.report.plots import plot_metric

    manifest = _read_json(path / "manifest.json")
    summary = _run_summary(path)
    name = title or manifest.get("name") or path.name
    part = Part(id=_slug(str(name)), title=str(name), kind="run", path=str(path))
    arms_cfg: dict[str, dict[str, Any]] = manifest.get("arms", {}) or {}

    # summary
    T = int(summary["generation"].max()) if len(summary) else 0
    chains = pd.to_numeric(summary["n"], errors="coerce").max() if len(summary) else np.nan
    each = f", {int(chains)} replicate chains each" if np.isfinite(chains) else ""
    part.description.append(f"{summary['arm'].nunique()} arm(s), {T} generations{each}.")
    found = fnd.findings(summary, cutoff)
    for arm in found.arms:
        what = describe_arm(arms_cfg[arm.arm]) if arm.arm in arms_cfg else ""
        part.arms.append(
            {"arm": arm.arm, "verdict": arm.verdict, "what": what, "sentences": arm.sentences}
        )
    _theory_summary(part, found)

    # curves
    import matplotlib.pyplot as plt

    zed = fnd.with_z(summary)
    for metric in summary["metric"].unique():
        fig, ax = plt.subplots(figsize=(6.4, 3.7))
        plot_metric(summary, metric, ax)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        has_theory = np.isfinite(
            pd.to_numeric(summary.loc[summary["metric"] == metric, "theory"], errors="coerce")
        ).any()
        caption = "Mean over replicate chains (line) and 5-95% of chains (band)"
        caption += "; theory dashed." if has_theory else "."
        part.curves.append(
            Figure(f"{part.id}-{metric}", str(metric), png_data_uri(figure_png(fig)), caption)
        )
    last = zed[zed["generation"] == zed.groupby("arm")["generation"].transform("max")]
    for row in last.itertuples():
        flagged = np.isfinite(row.z) and abs(row.z) > found.cutoff
        part.last_table.append(
            {
                "arm": str(row.arm),
                "metric": str(row.metric),
                "generation": str(int(row.generation)),
                "mean": _fmt(row.mean),
                "std_error": _fmt(row.std_error),
                "band": f"{_fmt(row.q05)} to {_fmt(row.q95)}",
                "theory": _fmt(float(row.theory)) if np.isfinite(row.theory) else "",
                "z": f"{row.z:+.1f}" if np.isfinite(row.z) else "",
                "flag": "flag" if flagged else "",
            }
        )

    part.galleries = galleries(path / "plots" / "samples")

    # config and provenance
    part.provenance = _provenance_rows(manifest, path)
    config = manifest.get("config", {})
    part.config_text = to_toml(config) if config else ""
    for arm, cfg in arms_cfg.items():
        part.arm_configs.append((arm, describe_arm(cfg), config_diff(config, cfg)))
    return part


def _theory_summary(part: Part, found: fnd.Findings) -> None:
    if not found.comparisons:
        part.theory_note = "No closed-form theory applies to this run, so nothing is compared."
        return
    flagged = found.flagged
    why = "Bonferroni: 1% chance of any false flag" if found.automatic else "as asked"
    part.theory_note = (
        f"{found.comparisons} (arm, generation, metric) means were compared with theory; a "
        f"difference counts when it exceeds k = {found.cutoff:.2f} standard errors ({why}). "
    )
    if not flagged:
        part.theory_note += "None does: the simulation agrees with theory everywhere."
    else:
        part.theory_note += (
            f"{sum(d.flagged for d in flagged)} do, in {len(flagged)} series (below). A flag is "
            "either a real departure or a mean over too few replicate chains of a heavy-tailed "
            "metric, whose standard error is then itself unreliable: more replicates tell them "
            "apart."
        )
    for d in flagged:
        part.departures.append(
            {
                "arm": d.arm,
                "metric": d.metric,
                "flagged": f"{d.flagged} of {d.compared}",
                "worst": str(d.worst_generation),
                "mean": _fmt(d.mean),
                "theory": _fmt(d.theory),
                "z": f"{d.worst_z:+.1f}",
            }
        )


def _provenance_rows(manifest: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("directory", str(path))]
    versions = manifest.get("versions", {}) or {}
    config = manifest.get("config", {}) or {}
    for label, value in (
        ("name", manifest.get("name")),
        ("madloop", versions.get("madloop")),
        ("seed", manifest.get("seed")),
        ("generations", config.get("generations")),
        ("replicates", config.get("replicates")),
        ("git commit", manifest.get("git_commit")),
        ("started", manifest.get("started")),
        ("command", manifest.get("command")),
    ):
        if value is not None:
            rows.append((label, str(value)))
    timings = manifest.get("timings_s", {}) or {}
    if isinstance(timings, dict):
        for key, value in timings.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k} {_fmt(v)} s" for k, v in value.items())
            else:
                value = f"{_fmt(value)} s"
            rows.append((f"time ({key})", value))
    modes = manifest.get("modes")
    if modes:
        rows.append(("modes", ", ".join(f"{k}: {v}" for k, v in modes.items())))
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def _pick_generations(gens: list[int], n: int = GALLERY_COLUMNS) -> list[int]:
    gens = sorted(set(gens))
    if len(gens) <= n:
        return gens
    picks = {gens[0], gens[-1]}
    # log-spaced targets between the first and last
    for target in np.geomspace(max(gens[0], 1), gens[-1], n)[1:-1]:
        picks.add(min(gens, key=lambda g: abs(np.log(max(g, 1)) - np.log(target))))
    return sorted(picks)[:n]


def galleries(folder: Path) -> list[dict[str, Any]]:
    """Per arm: the gallery files by generation (images inline, text excerpts as text)."""
    if not folder.is_dir():
        return []
    found: dict[str, dict[int, list[dict[str, str]]]] = {}
    for file in sorted(folder.iterdir()):
        m = GALLERY_PATTERN.match(file.name)
        if not m:
            continue
        arm, gen, ext = m["arm"], int(m["gen"]), m["ext"]
        item: dict[str, str] = {"suffix": m["suffix"].strip("_-")}
        if ext == "txt":
            text = file.read_text(errors="replace")
            item["text"] = text[:TEXT_LIMIT] + ("\n…" if len(text) > TEXT_LIMIT else "")
        elif ext == "svg":
            item["uri"] = png_data_uri(file.read_bytes(), "image/svg+xml")
        else:
            mime = "image/png" if ext == "png" else "image/jpeg"
            data = file.read_bytes()
            item["uri"] = png_data_uri(_shrink(data) if mime == "image/png" else data, mime)
            item["pixel"] = "pixel" if _width(data) <= 320 else ""  # upscale sharp, not blurred
        found.setdefault(arm, {}).setdefault(gen, []).append(item)
    out = []
    for arm, by_gen in found.items():
        gens = _pick_generations(list(by_gen))
        out.append({"arm": arm, "columns": [{"generation": g, "items": by_gen[g]} for g in gens]})
    return out


# -- sweeps ---------------------------------------------------------------------------------------
def sweep_part(path: Path, title: str | None = None, *, cutoff: float | None = None) -> Part:
    from madloop.report import heatmaps

    meta = _read_json(path / "sweep.json")
    base = meta.get("base") or meta.get("base_config") or meta.get("config") or {}
    name = title or (base.get("name") if isinstance(base, dict) else None) or path.name
    part = Part(id=_slug(str(name)), title=str(name), kind="sweep", path=str(path))
    part.tasks = _tasks(meta)
    part.provenance = _sweep_provenance(meta, path)
    if isinstance(base, dict) and base:
        part.config_text = to_toml(base)
    grid = meta.get("grid") or {}
    if isinstance(grid, dict) and grid:
        part.arm_configs.append(
            ("grid", "the swept keys", [f"{k} = {_toml_value(v)}" for k, v in grid.items()])
        )

    if not (path / "results.parquet").exists():
        part.sentences.append("No results.parquet yet: no task has finished.")
        return part
    results = pd.read_parquet(path / "results.parquet")
    theory = (
        pd.read_parquet(path / "theory.parquet") if (path / "theory.parquet").exists() else None
    )
    order = list(grid) if isinstance(grid, dict) else None
    keys = heatmaps.swept_keys(results, order)
    T = int(results["generation"].max())
    n_seeds = results["seed"].nunique() if "seed" in results else 1
    part.description.append(
        f"{len(keys)} swept key(s) ({', '.join(keys) or 'none'}), {n_seeds} seed(s); figures at "
        f"the last generation, {T}, averaging replicate chains and seeds."
    )
    if len(keys) > 2:
        part.phase_note = (
            f"Heatmaps show {keys[0]} against {keys[1]}, averaging over {', '.join(keys[2:])}."
        )
    metrics = list(dict.fromkeys(results["metric"]))
    for metric in metrics:
        if len(keys) >= 2:
            fig = heatmaps.plot_phase(results, theory, metric, keys[:2], T)
            caption = "Colour: the simulation's mean over replicate chains and seeds."
            if heatmaps.theory_means(theory, metric, keys[:2], T) is not None:
                caption += " Dashed white contours: the theory, at the labelled levels."
        elif len(keys) == 1:
            fig = heatmaps.plot_line(results, theory, metric, keys[0], T)
            caption = "Mean over replicate chains and seeds, ± 2 standard errors."
        else:
            continue
        part.phase.append(
            Figure(f"{part.id}-phase-{metric}", str(metric), png_data_uri(figure_png(fig)), caption)
        )

    # summary: where it collapsed, and how far from theory
    if "trace_ratio" in metrics and keys:
        cells = heatmaps.cell_means(results, "trace_ratio", keys, T)
        part.sentences += fnd.sweep_sentences(cells, keys, T)
    _sweep_theory(part, results, theory, keys, cutoff)
    return part


def _sweep_theory(
    part: Part,
    results: pd.DataFrame,
    theory: pd.DataFrame | None,
    keys: list[str],
    cutoff: float | None,
) -> None:
    if theory is None or theory.empty:
        part.theory_note = "No theory.parquet: no closed form to compare with."
        return
    group = [*keys, "arm", "generation", "metric"]
    g = results.groupby(group, dropna=False)["value"]
    sim = g.agg(mean="mean", std="std", n="size").reset_index()
    sim["std_error"] = sim["std"] / np.sqrt(sim["n"])
    th = theory.groupby(group, dropna=False)["theory"].mean().reset_index()
    merged = sim.merge(th, on=group, how="inner")
    if merged.empty:
        part.theory_note = "theory.parquet matches no simulated cell."
        return
    # one comparison per grid point, arm, generation and metric: label grid points as "arms"
    label = merged[keys].astype(str).agg(", ".join, axis=1) if keys else ""
    merged["arm"] = merged["arm"].astype(str) + (" @ " + label if keys else "")
    merged["q05"] = merged["q95"] = np.nan
    found = fnd.findings(
        merged[["arm", "generation", "metric", "mean", "std_error", "theory", "q05", "q95"]], cutoff
    )
    _theory_summary(part, found)
    part.departures = part.departures[:20]


def _tasks(meta: dict[str, Any]) -> dict[str, Any]:
    tasks = meta.get("tasks")
    if not tasks:
        return {}
    if isinstance(tasks, dict):
        tasks = [
            {"task": k, **(v if isinstance(v, dict) else {"status": v})} for k, v in tasks.items()
        ]
    tasks = [t for t in tasks if isinstance(t, dict)]
    counts: dict[str, int] = {}
    for t in tasks:
        status = str(t.get("status", "unknown"))
        counts[status] = counts.get(status, 0) + 1
    columns: list[str] = []
    for t in tasks:
        for k, v in t.items():
            if k not in columns and not isinstance(v, dict | list):
                columns.append(k)
    failed = [t for t in tasks if t.get("error")]
    shown = (failed + [t for t in tasks if not t.get("error")])[:40]
    rows = [[_cell(t.get(c)) for c in columns] for t in shown]
    return {
        "counts": counts,
        "total": len(tasks),
        "columns": columns,
        "rows": rows,
        "more": max(0, len(tasks) - len(shown)),
        "failed": len(failed),
    }


def _cell(value: Any, limit: int = 240) -> str:
    text = "" if value is None else _fmt(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sweep_provenance(meta: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("directory", str(path))]
    for key, value in meta.items():
        if key in {"tasks", "base", "base_config", "config", "grid"}:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        rows.append((key, str(value)))
    return rows


# -- the page -------------------------------------------------------------------------------------
def parts_of(path: Path, *, cutoff: float | None = None) -> list[Part]:
    kind = kind_of(path)
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
) -> Path:
    """Write the report of the run / sweep / folder at ``path`` to ``out`` (default
    ``path/report.html``); with ``figures``, also write every figure there as a PNG."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such directory")
    parts = parts_of(path, cutoff=cutoff)
    out = Path(out) if out is not None else path / "report.html"
    page = render(parts, title or f"madloop report: {path.name}", notes)
    write_atomic(out, page)
    if figures is not None:
        folder = Path(figures)
        folder.mkdir(parents=True, exist_ok=True)
        for part in parts:
            for fig in part.figures:
                data = base64.b64decode(fig.uri.split(",", 1)[1])
                write_atomic(folder / f"{fig.name}.png", data)
    return out


__all__ = ["ReportError", "build_report", "kind_of", "parts_of", "render"]
