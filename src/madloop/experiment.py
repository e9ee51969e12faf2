"""Running an experiment: every arm of a validated config, its tables and its directory.

Configs, their validation and arms live in :mod:`madloop.config`; the tables in
:mod:`madloop.tables`; the directory layout in :mod:`madloop.storage`; closed forms in
:mod:`madloop.theory`. This module builds each arm's engine, runs it with checkpoints, and
assembles the :class:`RunResult`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from madloop.config import Arm, ConfigError, ExperimentConfig, make_regime, parse
from madloop.engines import build_engine, real_source
from madloop.floor import engine_floor
from madloop.galleries import gallery_generations, write_gallery
from madloop.glossary import as_dict as glossary_dict
from madloop.loop import Engine, GenerationRecord
from madloop.storage import write_atomic, write_json, write_parquet
from madloop.storage.environment import git_commit, versions
from madloop.storage.layout import CACHE, CHECKPOINTS, MANIFEST, METRICS, PROVENANCE, SUMMARY
from madloop.storage.lock import DirectoryLock, DirectoryLocked
from madloop.tables import RecordColumns, Strings, Table, long_columns, summarize, summarize_table
from madloop.theory import predictions_frame, predictions_table

if TYPE_CHECKING:
    import pandas as pd


# -- running --------------------------------------------------------------------------------------
class FrameField:
    """A :class:`RunResult` table: held as given (a DataFrame, or a :class:`madloop.tables.Table`
    as a run builds it) and read as a DataFrame, made on first read (a command that only writes
    the tables never imports pandas)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = getattr(obj, self.slot)
        if isinstance(value, Table):
            value = value.frame()
            setattr(obj, self.slot, value)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, value)


class RunResult:
    """The tables of a run. ``metrics``: long table (arm, generation, replicate, metric, value);
    ``summary``: per arm, generation and metric; ``provenance``: training-set make-up (each a
    pandas DataFrame)."""

    metrics = FrameField()
    summary = FrameField()
    provenance = FrameField()

    def __init__(
        self,
        config: ExperimentConfig | None,  # None: reopened by :func:`load`, not validating here
        metrics: pd.DataFrame | Table,
        summary: pd.DataFrame | Table,
        provenance: pd.DataFrame | Table,
        manifest: dict[str, Any] | None = None,
        out: Path | None = None,
    ) -> None:
        self.config = config
        self.metrics, self.summary, self.provenance = metrics, summary, provenance
        self.manifest = {} if manifest is None else manifest
        self.out = out

    def __repr__(self) -> str:
        name = self.manifest.get("name") or getattr(self.config, "name", None)
        return f"RunResult(name={name!r}, out={str(self.out) if self.out else None!r})"

    def table(self, name: str) -> Table:
        """``metrics``, ``summary`` or ``provenance`` as a :class:`madloop.tables.Table` (what
        the run directory is written from)."""
        value = getattr(self, "_" + name)
        return value if isinstance(value, Table) else Table.of_frame(value)

    def write_plots(
        self,
        figures: str | os.PathLike | None = None,
        fmt: str = "png",
        *,
        draw: Callable[[Path, str | os.PathLike | None, str], dict[str, float]] | None = None,
    ) -> dict[str, float]:
        """Draw ``plots/`` of the run directory from its summary (the CLI does this after a run;
        the run itself draws nothing) and record the time in the manifest; with ``figures``, the
        same figures as ``fmt`` (png, svg, pdf) into that folder too. ``draw(out, figures, fmt)``
        replaces :func:`madloop.report.plots.write_run_plots` (the CLI's drawing process)."""
        if self.out is None:
            raise ValueError("this run has no directory: pass out= to madloop.run")
        if draw is None:
            from madloop.report.plots import write_run_plots as draw

        timings = draw(self.out, figures, fmt)
        self.manifest.setdefault("timings_s", {}).update(timings)
        write_json(self.out / MANIFEST, self.manifest)
        return timings

    def plot(self, metric: str, ax: Any = None) -> Any:
        """Draw ``metric`` on ``ax`` (a new figure's axes when None) and return the Axes: per
        arm the mean over chains, its 95% confidence interval, the chains' 5-95% spread, theory
        dashed and the real-data floor (generation 0) dotted."""
        from madloop.report.plots import metric_title, plot_metric

        if metric not in set(self.summary["metric"]):
            known = ", ".join(dict.fromkeys(self.summary["metric"]))
            raise ValueError(f"metric {metric!r} is not in this run (it has: {known})")
        if ax is None:
            from matplotlib.figure import Figure

            ax = Figure(figsize=(6.4, 4.0)).add_subplot()
        plot_metric(self.summary, metric, ax)
        ax.set_title(metric_title(metric), fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        return ax

    def report(self, path: str | os.PathLike | None = None) -> Path:
        """Write the HTML report of this run's directory to ``path`` (default
        ``out/report.html``); returns where it went."""
        if self.out is None:
            raise ValueError("this run has no directory: pass out= to madloop.run")
        from madloop.report.html import build_report

        return build_report(self.out, path)

    def _repr_html_(self) -> str:
        """A notebook's view: per arm and metric, the last generation's mean with its 95%
        interval, the real-data floor and theory."""
        name = self.manifest.get("name") or getattr(self.config, "name", None) or "run"
        return summary_html(self.summary, str(name))


def summary_html(summary: pd.DataFrame, name: str) -> str:
    """A compact HTML table of a summary's last generation per arm (see ``_repr_html_``)."""
    import html

    import pandas as pd

    if summary.empty:
        return f"<p><b>{html.escape(name)}</b>: no metrics</p>"
    trained = summary[summary["generation"] > 0]
    last = trained[trained["generation"] == trained.groupby("arm")["generation"].transform("max")]
    floor = summary[summary["generation"] == 0].set_index(["arm", "metric"])["mean"].to_dict()

    def cell(x: Any) -> str:
        return f"{float(x):.4g}" if pd.notna(x) else ""

    rows = []
    for r in last.itertuples():
        low, high = getattr(r, "ci_low", np.nan), getattr(r, "ci_high", np.nan)  # old runs lack
        ci = f"{cell(low)} to {cell(high)}" if pd.notna(low) else ""
        theory = getattr(r, "theory", np.nan)
        values = [r.arm, r.metric, int(r.generation), cell(r.mean), ci,
                  cell(floor.get((r.arm, r.metric))), cell(theory)]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in values) + "</tr>")
    head = ["arm", "metric", "generation", "mean", "95% CI of the mean", "real data", "theory"]
    return (
        f"<p><b>{html.escape(name)}</b>: {summary['arm'].nunique()} arm(s), last generation</p>"
        "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )  # fmt: skip


def load(run_dir: str | os.PathLike) -> RunResult:
    """Reopen a run directory as a :class:`RunResult` (its tables, manifest and config), e.g.
    ``madloop.load("runs/mad-gaussian").plot("trace_ratio")`` in a notebook."""
    import pandas as pd

    from madloop.storage import RunDir

    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    if not rd.exists():
        raise ConfigError([f"{run_dir}: not a run directory (no summary.csv or metrics.parquet)"])
    manifest = rd.read_manifest() if rd.manifest.exists() else {}
    config = None
    if manifest.get("config"):
        try:
            config, _ = parse(manifest["config"])
        except ConfigError as err:  # e.g. a family registered by code not imported here
            warnings.warn(f"{run_dir}: its config does not validate here ({err})", stacklevel=2)
    metrics = rd.read_metrics() if rd.metrics.exists() else pd.DataFrame()
    summary = rd.read_summary() if rd.summary.exists() else summarize(metrics)
    provenance = pd.read_csv(rd.provenance) if rd.provenance.exists() else pd.DataFrame()
    return RunResult(config, metrics, summary, provenance, manifest, run_dir)


def theory_frame(arms: list[Arm]) -> pd.DataFrame:
    """Closed-form expectations per arm (label), generation and metric, from every registered
    predictor that applies (:mod:`madloop.theory`; the web pool registers its own)."""
    return predictions_frame(theory_inputs(arms))


def theory_table(arms: list[Arm]) -> Table:
    """:func:`theory_frame` as a :class:`madloop.tables.Table`."""
    return predictions_table(theory_inputs(arms))


def theory_inputs(arms: list[Arm]) -> Iterable[tuple[str, Any, Any, Any]]:
    """What the predictors read of each arm: (name, config, real-source factory, regime)."""
    return (
        (arm.name, arm.config, lambda c=arm.config: real_source(c), make_regime(arm.config.loop))
        for arm in arms
    )


Progress = Callable[[str, int, int], None]  # (arm, generation, generations)


Log = Callable[[str], None]


def run(
    config: Any,
    *,
    out: str | os.PathLike | None = None,
    seed: int | None = None,
    generations: int | None = None,
    replicates: int | None = None,
    progress: Progress | None = None,
    resume: bool | None = None,
    keep_checkpoints: int = 2,
    checkpoint_every: int | None = None,
    log: Log | None = None,
    checkpoints: str | os.PathLike | None = None,
    on_summary: Callable[[Path], None] | None = None,
) -> RunResult:
    """Run every arm of an experiment; return its tables, and write them to ``out`` if given.

    ``config`` is a TOML path, a dict or an :class:`ExperimentConfig`. With ``out``, each arm is
    checkpointed under ``out/checkpoints/`` (see :mod:`madloop.checkpoint`), keeping the newest
    ``keep_checkpoints``: every ``checkpoint_every`` generations and at its end, or with
    ``checkpoint_every=None`` (the default) after the first generation and then whenever the time
    since the last checkpoint is 20 times what it took (checkpoints cost at most 5% of the run:
    every generation of a slow model, every few dozen of a fast loop;
    :class:`madloop.checkpoint.Cadence`).
    ``resume=True`` continues each arm from its newest intact checkpoint (finished arms are not
    recomputed) and gives the numbers of an uninterrupted run, bit for bit; ``resume=False`` (what
    ``madloop run`` passes without ``--resume``) refuses a run directory that already holds
    checkpoints; ``None`` starts afresh, removing them. ``log`` receives notes (resumes,
    rejected checkpoints, stopped chains). ``checkpoints`` (without ``out``) checkpoints into
    that folder without writing a run directory: a sweep task's, which resumes mid-task.
    ``on_summary(out)`` is called once ``out/summary.csv`` is written, before the metric table
    and the manifest (the CLI's drawing process starts on the figures then).
    """
    from madloop.checkpoint import run_has_checkpoints

    base, arms = parse(config, seed=seed, generations=generations, replicates=replicates)
    problems = []
    if keep_checkpoints < 1:
        problems.append(f"--keep-checkpoints: must be >= 1, got {keep_checkpoints}")
    if checkpoint_every is not None and checkpoint_every < 1:
        problems.append(f"--checkpoint-every: must be >= 1, got {checkpoint_every}")
    if problems:
        raise ConfigError(problems)
    log = log or (lambda msg: None)
    started = time.time()
    out = Path(out) if out is not None else None
    dirs = RunDirs.of(out, checkpoints)
    if out is not None and resume is False and run_has_checkpoints(out):
        raise ConfigError(
            [
                f"--out: {out} already holds the checkpoints of a run; pass --resume to continue "
                "it, or give a new --out to start afresh"
            ]
        )
    with contextlib.ExitStack() as stack:
        if dirs.checkpoints is not None:
            try:
                stack.enter_context(DirectoryLock(out or dirs.checkpoints, what="run"))
            except DirectoryLocked as err:
                raise ConfigError([f"--out: {err}"]) from None
            if resume is None:  # a fresh run: old checkpoints must never mix with new ones
                shutil.rmtree(dirs.checkpoints, ignore_errors=True)
        result = _run_arms(
            base, arms, dirs, started, resume, keep_checkpoints, checkpoint_every, progress, log
        )
        if out is not None:
            write_run(result, Path(out), on_summary=on_summary)
    return result


@dataclass(frozen=True)
class RunDirs:
    """Where a run writes: its directory (tables, galleries, the data cache) and its
    checkpoints (``out/checkpoints``, or a folder of their own for a sweep task)."""

    out: Path | None
    checkpoints: Path | None

    @classmethod
    def of(cls, out: Path | None, checkpoints: str | os.PathLike | None) -> RunDirs:
        if out is not None:
            return cls(out, out / CHECKPOINTS)
        return cls(None, Path(checkpoints) if checkpoints is not None else None)


def _run_arms(
    base: ExperimentConfig,
    arms: list[Arm],
    dirs: RunDirs,
    started: float,
    resume: bool | None,
    keep_checkpoints: int,
    checkpoint_every: int | None,
    progress: Progress | None,
    log: Log,
) -> RunResult:
    frames, prov, timings, modes, resumed, failures = [], [], {}, {}, {}, []
    for arm in arms:
        t0 = time.perf_counter()
        engine, columns, start = _run_arm(
            arm, dirs, resume, keep_checkpoints, checkpoint_every, progress, log
        )
        modes[arm.name] = "exact" if engine.exact else "sample"
        if resume:
            resumed[arm.name] = start
        floor = engine_floor(engine, {n for c in columns.values() for n in c.values})
        for label in engine.labels:
            failures += columns[label].failures()
            if any(n in floor for n in columns[label].values):
                frames.append(floor_table(label, floor, columns[label]))
            frames.append(columns[label].long_table())
            prov.append(columns[label].provenance_table())
        timings[arm.name] = round(time.perf_counter() - t0, 4)
    extra: dict[str, Any] = {"failures": failures}
    if resume:
        extra["resumed_from"] = resumed
    return assemble_result(base, arms, frames, prov, modes, timings, started, extra)


def floor_table(label: str, floor: dict[str, Any], columns: RecordColumns) -> Table:
    """The generation-0 rows of one label (:mod:`madloop.floor`), its metrics in its order."""
    names = [n for n in columns.values if n in floor]
    return long_columns(
        label, [SimpleNamespace(generation=0, metrics={n: floor[n] for n in names})]
    )


def bias_texts(arms: list[Arm]) -> dict[str, str]:
    """Each label's sampling bias in both forms (``λ = 0.5 (guidance w = 1)``); a web-pool
    lineage with a bias of its own gets that one."""
    out = {}
    for arm in arms:
        cfg = arm.config
        out[arm.name] = cfg.bias_text()
        lineages = getattr(cfg.loop, "lineages", None) or []
        for lin in lineages:
            lam = cfg.sampling.bias if lin.bias is None else lin.bias
            text = cfg.model.bias_knob.describe(lam)
            out[arm.name if len(lineages) == 1 else f"{arm.name}:{lin.name}"] = text
    return out


def assemble_result(
    base: ExperimentConfig,
    arms: list[Arm],
    frames: list[Table | pd.DataFrame],
    prov: list[Table | pd.DataFrame],
    modes: dict[str, str],
    timings: dict[str, float],
    started: float,
    extra: dict[str, Any] | None = None,
) -> RunResult:
    """The run's tables and manifest from each arm's records (shared by every engine)."""
    metrics = Table.concat([as_table(f) for f in frames])
    summary = with_bias(summarize_table(metrics, theory_table(arms)), bias_texts(arms))
    provenance = Table.concat([as_table(p) for p in prov])
    names = summary.column("metric") if summary.typed else summary.frame()["metric"].to_numpy()
    known = glossary_dict()
    manifest = {
        "name": base.name,
        "seed": base.seed,
        "config": {**base.to_dict()},
        "arms": {a.name: a.config.to_dict() for a in arms},
        "bias": {a.name: a.config.bias_entry() for a in arms},  # λ and the family's own knob
        "modes": modes,
        "versions": versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "timings_s": {"arms": timings, "total": round(time.time() - started, 4)},
        "glossary": {m: known[m] for m in dict.fromkeys(names) if m in known},
        **(extra or {}),
    }
    return RunResult(base, metrics, summary, provenance, manifest)


def as_table(table: Table | pd.DataFrame) -> Table:
    """A DataFrame (an engine's own table) as a :class:`madloop.tables.Table`; a Table as is."""
    return table if isinstance(table, Table) else Table.of_frame(table)


def with_bias(summary: Table, texts: dict[str, str]) -> Table:
    """The summary with its ``bias`` column: each arm's sampling bias in both forms (an object
    column, empty for a label without one)."""
    if not summary.typed:
        frame = summary.frame()
        frame["bias"] = frame["arm"].map(texts).astype(object)
        return Table.of_frame(frame)
    arm = summary.columns["arm"]  # type: ignore[index]
    assert isinstance(arm, Strings)
    per_label = np.asarray([texts.get(a, np.nan) for a in arm.labels] or [np.nan], dtype=object)
    return Table({**summary.columns, "bias": per_label[arm.codes]})  # type: ignore[dict-item]


def _run_arm(
    arm: Arm,
    dirs: RunDirs,
    resume: bool | None,
    keep: int,
    every: int | None,
    progress: Progress | None,
    log: Log,
) -> tuple[Engine, dict[str, RecordColumns], int]:
    """One arm, on the engine its regime names: restore it from its checkpoints if asked, run
    what is left, checkpoint it (every ``every`` generations, or by :class:`Cadence` when None)
    and write its galleries. Its
    records are kept column-wise per label (memory stays flat over a long run)."""
    from madloop.checkpoint import ArmCheckpoints, Cadence

    engine = build_engine(arm)
    out = dirs.out
    if out is not None and hasattr(engine.real, "cache_dir"):
        engine.real.cache_dir = out / CACHE  # e.g. the image metrics' feature network
    T = arm.config.generations
    sources = getattr(engine, "source_names", None)  # the pool names its lineages
    columns = {label: RecordColumns(label, T, sources) for label in engine.labels}
    ckpt = None
    if dirs.checkpoints is not None:
        ckpt = ArmCheckpoints(
            dirs.checkpoints,
            arm.name,
            {k: v for k, v in arm.config.to_dict().items() if k != "tracking"},  # no number's
            keep=keep,
            log=log,
            extra={"versions": versions()},
        )
    if ckpt is not None and not engine.checkpointable:
        log(
            f"arm '{arm.name}': family '{arm.config.model.family}' has no get_state(); "
            "not checkpointed"
            + (", so --resume restarts this arm from generation 1" if resume else "")
        )
        ckpt = None
    if ckpt is not None and resume:
        for rec in _restore(arm, engine, ckpt, progress, log):
            columns[rec.arm].add(rec)
    start = engine.generation
    cadence = Cadence(every)
    while engine.generation < T and engine.stopped is None:
        recs = engine.step()
        t = engine.generation
        if t == 1 and start == 0:
            _say_if_unmeasured(arm, recs, log)
        for rec in recs:
            columns[rec.arm].add(rec)
            for r, why in rec.failures.items():
                log(f"arm '{rec.arm}': chain {r} stopped at generation {t}: {why}")
        if out is not None and t in gallery_generations(T):
            write_gallery(engine, out)
        if ckpt is not None:
            ckpt.save_records(recs)
            last = t >= T or engine.stopped is not None
            if cadence.due(t, last=last):
                started = time.perf_counter()
                ckpt.save(engine, finished=last)
                cadence.saved(started)
        if progress is not None:
            progress(arm.name, t, T)
    return engine, columns, start


def _say_if_unmeasured(arm: Arm, recs: list[GenerationRecord], log: Log) -> None:
    """No metric suite measured generation 1: say so (a table of provenance only is no result)."""
    if any(rec.metrics for rec in recs) or any(rec.failures for rec in recs):
        return
    cfg = arm.config
    message = (
        f"arm '{arm.name}': no metric applies to family '{cfg.model.family}' on data "
        f"'{cfg.data.source}' (its samples are not real-valued vectors, and it has no moments(), "
        "log_prob() or a suite of its own); summary.csv will hold no metrics. See "
        "docs/own-model.md for what each capability measures"
    )
    log(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _restore(
    arm: Arm, engine: Engine, ckpt: Any, progress: Progress | None, log: Log
) -> list[GenerationRecord]:
    """Restore ``engine`` from its newest intact checkpoint; the records so far (none without
    one). Says per arm (and per label, for an engine of several) where it goes on."""
    from madloop.checkpoint import CheckpointError

    T = arm.config.generations
    try:
        restored = ckpt.restore(engine)
    except CheckpointError as err:
        raise ConfigError([f"--resume: {err}"]) from None
    if restored is None:
        return []
    g = restored.generation
    if g > T:
        raise ConfigError(
            [
                f"generations: arm '{arm.name}' is already at generation {g}; ask for >= {g} "
                "or use a new --out"
            ]
        )
    done = g >= T or engine.stopped is not None
    log(
        f"arm '{arm.name}': finished at generation {g}; not recomputed"
        if done
        else f"arm '{arm.name}': resuming after generation {g}"
    )
    if len(engine.labels) > 1:
        for label in engine.labels:
            last = max((r.generation for r in restored.records if r.arm == label), default=0)
            log(f"arm '{arm.name}': {label} restored at generation {last}")
    if progress is not None:
        for t in sorted({rec.generation for rec in restored.records}):
            progress(arm.name, t, T)
    return restored.records


def write_run(
    result: RunResult, out: Path, *, on_summary: Callable[[Path], None] | None = None
) -> None:
    """The run's tables and manifest (no figures: :meth:`RunResult.write_plots` draws them);
    the summary first, then ``on_summary(out)``: the figures need nothing else."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SUMMARY, result.table("summary").csv_text())
    if on_summary is not None:
        on_summary(out)
    write_parquet(result.table("metrics"), out / METRICS)
    write_atomic(out / PROVENANCE, result.table("provenance").csv_text())
    write_json(out / MANIFEST, result.manifest)
    result.out = out
