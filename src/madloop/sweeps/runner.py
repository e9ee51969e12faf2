"""Running a sweep: tasks on an executor, each written atomically as it finishes, resumable
mid-task, gathered into one table (see :mod:`madloop.sweeps`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from madloop.config import (
    ConfigError,
)
from madloop.executors import Executor, TaskResult, make_executor
from madloop.experiment import run
from madloop.storage import read_json, write_atomic, write_json, write_parquet
from madloop.storage.environment import git_commit, versions
from madloop.storage.files import StorageFull
from madloop.storage.layout import CHECKPOINTS, SWEEP_SUMMARY
from madloop.storage.lock import DirectoryLock, DirectoryLocked
from madloop.sweeps.plan import METRIC_COLUMNS, THEORY_COLUMNS, SweepPlan, Task, plan
from madloop.tables import sweep_summary


# -- one task (runs in a worker) ------------------------------------------------------------------
@dataclass
class TaskOutput:
    """What a worker sends back: the task's tables (the driver writes them, so workers of a
    multi-machine cluster need no shared disk)."""

    metrics: pd.DataFrame
    theory: pd.DataFrame
    modes: dict[str, str]
    resumed_from: dict[str, int] = field(default_factory=dict)  # arm -> generation it went on


def run_task(task: Task) -> TaskOutput:
    """Run one task's config (every arm). Top-level, so every executor can pickle it.

    With ``task.checkpoints`` every arm checkpoints there (the default cadence) and continues from
    its newest checkpoint (bit for bit as an uninterrupted task); checkpoints another config
    made (the grid's base changed) are discarded and the task starts over. The families the
    driver registered with :func:`madloop.register_family` are registered here first."""
    from madloop.models.contract import install_registrations

    install_registrations(task.families)
    if task.checkpoints is None:
        result = run(task.config)
    else:
        try:
            result = run(task.config, checkpoints=task.checkpoints, resume=True)
        except ConfigError as err:
            if not any(p.startswith("--resume:") for p in err.problems):
                raise
            result = run(task.config, checkpoints=task.checkpoints, resume=None)
    summary = result.summary
    theory = summary.loc[summary["theory"].notna(), THEORY_COLUMNS].reset_index(drop=True)
    return TaskOutput(
        result.metrics[METRIC_COLUMNS],
        theory,
        dict(result.manifest["modes"]),
        dict(result.manifest.get("resumed_from", {})),
    )


# -- the sweep directory --------------------------------------------------------------------------
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def finished(out: Path, task: Task) -> bool:
    """Whether ``task`` has finished in ``out`` with the same config (a resume skips it)."""
    path = out / "tasks" / task.id / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("status") == "done" and _canonical(manifest.get("config")) == _canonical(
        task.config
    )


def write_task(out: Path, task: Task, result: TaskResult[TaskOutput]) -> None:
    """The task's Parquet files, then its manifest (last: its presence marks the task done)."""
    assert result.value is not None
    where = out / "tasks" / task.id
    write_parquet(result.value.metrics, where / "metrics.parquet")
    if not result.value.theory.empty:
        write_parquet(result.value.theory, where / "theory.parquet")
    manifest = {
        "status": "done",
        "id": task.id,
        "point": task.point,
        "seed": task.seed,
        "task_seed": task.task_seed,
        "config": task.config,
        "modes": result.value.modes,
        "resumed_from": result.value.resumed_from,
        "seconds": round(result.seconds, 4),
        "worker": result.worker,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
    }
    write_atomic(where / "manifest.json", json.dumps(manifest, indent=2, default=str))
    shutil.rmtree(where / CHECKPOINTS, ignore_errors=True)  # finished: no longer needed


def _with_keys(frame: pd.DataFrame, task: Task) -> pd.DataFrame:
    cols = {k: _column_value(v) for k, v in task.point.items()}
    return frame.assign(**cols, seed=task.seed)[[*task.point, "seed", *frame.columns]]


def _column_value(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else json.dumps(value)


def gather(out: Path, tasks: Iterable[Task], name: str, columns: list[str]) -> pd.DataFrame:
    """One table from the finished tasks' ``name`` files, in grid order."""
    frames = []
    keys: list[str] = []
    for task in tasks:
        keys = list(task.point)
        path = out / "tasks" / task.id / name
        if path.exists():
            frames.append(_with_keys(pd.read_parquet(path), task))
    if not frames:
        return pd.DataFrame(columns=[*keys, "seed", *columns])
    return pd.concat(frames, ignore_index=True)


@dataclass
class SweepResult:
    """A finished sweep: ``results`` (the whole table), ``theory``, and per-task ``status``
    (``done`` / ``reused`` / ``failed``) with ``errors`` for the failed ones."""

    plan: SweepPlan
    results: pd.DataFrame
    theory: pd.DataFrame
    status: dict[str, str]
    errors: dict[str, str]
    out: Path
    manifest: dict[str, Any]

    @property
    def summary(self) -> pd.DataFrame:
        """Per (swept keys..., arm, generation, metric): mean, its 95% interval and the spread
        over every seed x chain of a cell (``sweep_summary.csv``; :func:`~madloop.tables.
        sweep_summary`)."""
        return sweep_summary(self.results, self.theory, self.plan.keys)

    def write_plots(
        self,
        generation: int | None = None,
        figures: str | os.PathLike | None = None,
        fmt: str = "png",
    ) -> dict[str, float]:
        """Draw the phase diagrams under ``plots/`` (at ``generation``, default each task's last;
        the CLI does this after a sweep, the sweep itself draws nothing); with ``figures``, also
        as ``fmt`` (png, svg, pdf) into that folder."""
        from madloop.report.phase import write_sweep_plots

        if self.results.empty:
            return {}
        timings = write_sweep_plots(self.out, generation=generation, figures=figures, fmt=fmt)
        self.manifest.setdefault("timings_s", {}).update(timings)
        doc = read_json(self.out / "sweep.json")
        doc.setdefault("timings_s", {}).update(timings)
        write_json(self.out / "sweep.json", doc)
        return timings

    @property
    def ran(self) -> int:
        return sum(s != "reused" for s in self.status.values())

    @property
    def reused(self) -> int:
        return sum(s == "reused" for s in self.status.values())


Progress = Callable[[TaskResult, int, int], None]  # (result, finished so far, tasks to run)


def default_out(name: str) -> Path:
    return Path("runs") / f"{name}-sweep"


def sweep(
    config: Any,
    *,
    out: str | os.PathLike | None = None,
    executor: str | Executor = "local",
    workers: int | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    on_start: Callable[[SweepPlan, int], None] | None = None,
) -> SweepResult:
    """Run every task of a sweep that is not finished yet and gather the sweep's tables.

    Parameters
    ----------
    config : path, dict
        A TOML config with a ``[sweep]`` table (see the module docstring).
    out : path, default=``runs/{name}-sweep``
        The sweep directory.
    executor : {"local", "ray", "serial"} or Executor, default="local"
        ``local``: a process pool of ``workers`` processes; ``ray``: the Ray cluster at
        ``address``, or a local Ray instance with ``workers`` CPUs.
    resume : bool, default=True
        Skip tasks already finished in ``out`` with the same config. ``False`` removes
        ``out/tasks`` and the gathered tables first and runs everything.
    progress : callable, optional
        Called as ``progress(result, finished, to_run)`` after every task that ran.

    Returns
    -------
    SweepResult
        ``results`` is what ``out/results.parquet`` holds. A failed task is in ``errors``; it
        stops nothing, and a later run (resume) retries it.
    """
    started = time.time()
    plan_ = plan(config)
    out = Path(out) if out is not None else default_out(plan_.name)
    lock = DirectoryLock(out, what="sweep")  # a second sweep on this directory is refused
    try:
        lock.acquire()
    except DirectoryLocked as err:
        raise ConfigError([f"--out: {err}"]) from None
    try:
        return _sweep_locked(
            plan_, out, executor, workers, address, resume, progress, on_start, started,
        )  # fmt: skip
    finally:
        lock.release()


def _sweep_locked(
    plan_: SweepPlan,
    out: Path,
    executor: str | Executor,
    workers: int | None,
    address: str | None,
    resume: bool,
    progress: Progress | None,
    on_start: Callable[[SweepPlan, int], None] | None,
    started: float,
) -> SweepResult:
    """:func:`sweep` once it holds the directory's lock."""
    if not resume:
        for stale in ("tasks", "plots"):
            shutil.rmtree(out / stale, ignore_errors=True)
        for stale in ("results.parquet", "theory.parquet", "sweep.json", SWEEP_SUMMARY):
            (out / stale).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    status = {t.id: "reused" for t in plan_.tasks if finished(out, t)}
    todo = [t for t in plan_.tasks if t.id not in status]
    ex = make_executor(executor, workers=workers, address=address)
    errors: dict[str, str] = {}
    runs: dict[str, dict[str, Any]] = {}
    manifest = _manifest(plan_, ex, started)
    _write_sweep_json(out, plan_, manifest, status, errors, runs)
    if on_start is not None:
        on_start(plan_, len(todo))
    t_run = time.perf_counter()
    _run_tasks(out, plan_, ex, todo, status, errors, runs, manifest, progress)
    run_wall = time.perf_counter() - t_run
    results = gather(out, plan_.tasks, "metrics.parquet", METRIC_COLUMNS)
    theory = gather(out, plan_.tasks, "theory.parquet", THEORY_COLUMNS)
    write_parquet(results, out / "results.parquet")
    write_atomic(
        out / SWEEP_SUMMARY, sweep_summary(results, theory, plan_.keys).to_csv(index=False)
    )
    if not theory.empty:
        write_parquet(theory, out / "theory.parquet")
    else:
        (out / "theory.parquet").unlink(missing_ok=True)
    manifest["stale_tasks"] = _stale_tasks(out, plan_)
    manifest["timings_s"] = {
        "run_wall": round(run_wall, 4),
        "task_sum": round(sum(r["seconds"] for r in runs.values() if _finite(r["seconds"])), 4),
    }
    manifest["timings_s"]["total"] = round(time.time() - started, 4)
    _write_sweep_json(out, plan_, manifest, status, errors, runs)
    return SweepResult(plan_, results, theory, status, errors, out, manifest)


def _run_tasks(
    out: Path,
    plan_: SweepPlan,
    ex: Executor,
    todo: list[Task],
    status: dict[str, str],
    errors: dict[str, str],
    runs: dict[str, dict[str, Any]],
    manifest: dict[str, Any],
    progress: Progress | None,
) -> None:
    """Run ``todo`` on ``ex``; write each finished task as it arrives, a status snapshot of
    sweep.json now and then (not per task)."""
    by_id = {t.id: t for t in plan_.tasks}
    last_save = time.monotonic()
    where = {t.id: str((out / "tasks" / t.id / CHECKPOINTS).resolve()) for t in todo}
    from madloop.models.contract import registrations_payload

    families = registrations_payload()  # user families travel with each task, by value
    todo = [dataclasses.replace(t, checkpoints=where[t.id], families=families) for t in todo]
    for n, result in enumerate(ex.map(run_task, todo), start=1):
        task = by_id[result.task_id]
        runs[task.id] = {"seconds": round(result.seconds, 4), "worker": result.worker}
        if result.ok:
            write_task(out, task, result)
            status[task.id] = "done"
        elif (result.error or "").startswith("StorageFull:"):  # no task can finish: stop
            _write_sweep_json(out, plan_, manifest, status, errors, runs)
            message = (result.error or "").removeprefix("StorageFull:").strip()
            raise StorageFull(f"{message} (task {task.id})")
        else:
            status[task.id] = "failed"
            errors[task.id] = result.error or "unknown error"
            runs[task.id]["traceback"] = result.traceback
        if progress is not None:
            progress(result, n, len(todo))
        if time.monotonic() - last_save > 5.0:
            _write_sweep_json(out, plan_, manifest, status, errors, runs)
            last_save = time.monotonic()


def _stale_tasks(out: Path, plan_: SweepPlan) -> list[str]:
    """Task folders from an older grid: a glob over tasks/ still sees them."""
    known = {t.id for t in plan_.tasks}
    return sorted(
        str(m.parent.relative_to(out / "tasks"))
        for m in (out / "tasks").glob("**/manifest.json")
        if str(m.parent.relative_to(out / "tasks")) not in known
    )


def _finite(x: float) -> bool:
    return isinstance(x, float | int) and math.isfinite(x)


def _manifest(plan_: SweepPlan, ex: Executor, started: float) -> dict[str, Any]:
    return {
        "name": plan_.name,
        "seed": plan_.seed,
        "config": plan_.raw,
        "grid": plan_.grid,
        "seeds": plan_.seeds,
        "executor": repr(ex),
        "warnings": plan_.warnings,
        "versions": versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
    }


def _write_sweep_json(
    out: Path,
    plan_: SweepPlan,
    manifest: dict[str, Any],
    status: Mapping[str, str],
    errors: Mapping[str, str],
    runs: Mapping[str, Mapping[str, Any]],
) -> None:
    tasks = []
    for t in plan_.tasks:
        tasks.append(
            {
                "id": t.id,
                "point": t.point,
                "seed": t.seed,
                "task_seed": t.task_seed,
                "status": status.get(t.id, "pending"),
                "error": errors.get(t.id),
                **runs.get(t.id, {}),
            }
        )
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task["status"]] = counts.get(task["status"], 0) + 1
    doc = {**manifest, "counts": counts, "tasks": tasks}
    write_atomic(out / "sweep.json", json.dumps(doc, indent=2, default=str))
