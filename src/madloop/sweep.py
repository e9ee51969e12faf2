"""Sweeps: a grid of configs x seeds, run on an executor, gathered into one table.

A config's ``[sweep]`` table names the grid::

    [sweep]
    seeds = 3                                   # every point K times
    [sweep.grid]
    "sampling.bias" = [1.0, 0.9, 0.8]           # dotted config keys -> lists of values
    "loop.real_size" = [0, 10, 50, 100]

A *task* is one point of the grid plus one seed index: the base config with the point's values
set (arms stay arms inside every task) and ``seed`` replaced by a seed derived from the task's
identity, ``SeedSequence(study seed, spawn_key=(hash of the sorted point, seed index))``. So a
task's numbers depend on what it is, never on when or where it ran: any executor, any worker
count, a resume, a grid that grew a value, all give bit-identical tables.

The sweep directory (``madloop sweep --out DIR``)::

    DIR/sweep.json            base config, grid, seeds, every task with status, error, timings
    DIR/tasks/sampling.bias=0.9/loop.real_size=10/seed=0/
        metrics.parquet       arm, generation, replicate, metric, value (written atomically)
        theory.parquet        arm, generation, metric, theory (where a closed form exists)
        manifest.json         the task's config, point, seeds, timings; written last: a task
                              is finished when its manifest is there and names the same config
    DIR/results.parquet       swept keys (dotted names) + seed, arm, generation, replicate,
                              metric, value: the whole sweep, in grid order
    DIR/theory.parquet        swept keys + seed, arm, generation, metric, theory
    DIR/plots/                phase diagrams (madloop.report.phase)

``tasks/`` is hive-partitioned, so DuckDB (``read_parquet('DIR/tasks/**/metrics.parquet',
hive_partitioning = true)``), pyarrow/pandas and polars read it back with the swept keys as
columns; ``results.parquet`` is the same table in one file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
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
from urllib.parse import quote

import numpy as np
import pandas as pd

from madloop.config import (
    TOP_LEVEL,
    ConfigError,
    deep_merge,
    flatten,
    load_config,
    nest_dotted,
    regime_configs,
    resolve_arms,
)
from madloop.executors import Executor, TaskResult, make_executor
from madloop.experiment import run
from madloop.storage import read_json, write_atomic, write_json, write_parquet
from madloop.storage.environment import git_commit, versions
from madloop.storage.layout import CHECKPOINTS
from madloop.storage.lock import DirectoryLock, DirectoryLocked

#: top-level keys a grid may set besides the tables' fields (seeds come from ``seeds = K``)
SWEEPABLE_TOP = ("generations", "replicates", "include_base")
TABLES = ("data", "model", "sampling", "loop")
MAX_LISTED = 20  # invalid points listed by name before "... and N more"

METRIC_COLUMNS = ["arm", "generation", "replicate", "metric", "value"]
THEORY_COLUMNS = ["arm", "generation", "metric", "theory"]


# -- tasks ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Task:
    """One point of the grid with one seed index; ``config`` is the raw config the task runs."""

    id: str  # its partition path: "sampling.bias=0.9/loop.real_size=10/seed=0"
    point: dict[str, Any]  # swept key -> value, in grid order
    seed: int  # seed index, 0..seeds-1
    task_seed: int  # the config seed this task runs with
    config: dict[str, Any]
    #: where the task checkpoints each generation while it runs (set by :func:`sweep`): a sweep
    #: killed mid-task continues the task from there, not from scratch
    checkpoints: str | None = None

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.point.items()) or "(no grid)"


@dataclass
class SweepPlan:
    """A validated sweep: its base config, grid, seeds and tasks in grid order."""

    name: str
    seed: int
    raw: dict[str, Any]  # the config as given (with its [sweep] table)
    grid: dict[str, list[Any]]
    seeds: int
    tasks: list[Task]
    warnings: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return list(self.grid)


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _segment(value: Any) -> str:
    """A value as a hive partition segment that DuckDB, pyarrow and polars parse back."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:  # a list (a per-generation size schedule, say): its JSON text
        text = json.dumps(value, separators=(",", ":"))
    return quote(text, safe=".-_+")


def task_seed(study_seed: int, point: Mapping[str, Any], seed_index: int) -> int:
    """The config seed of a task: a function of the study seed, the point and the seed index.

    The point is hashed with its keys sorted, so reordering the grid's keys or values, or adding
    a value, never changes an existing task's numbers.
    """
    canonical = json.dumps(sorted(point.items()), separators=(",", ":"), default=str)
    digest = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "little")
    seq = np.random.SeedSequence(study_seed, spawn_key=(digest, seed_index))
    return int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1))  # a config seed is < 2**63


def _flat_grid(raw: Mapping[str, Any]) -> tuple[dict[str, list[Any]], int]:
    table = raw.get("sweep") or {}
    grid = flatten(table.get("grid", {}) or {}) if isinstance(table, Mapping) else {}
    return grid, int(table.get("seeds", 1)) if isinstance(table, Mapping) else 1


def _field_names(raw: Mapping[str, Any], table: str, grid: Mapping[str, list[Any]]) -> set[str]:
    """Fields the ``[table]`` accepts for every choice of family/source/regime the sweep uses."""
    from madloop.data import load_sources
    from madloop.models.base import load_families

    registry, selector, default = {
        "data": (load_sources(), "source", None),
        "model": (load_families(), "family", None),
        "loop": (regime_configs(), "regime", "fully-synthetic"),
    }.get(table, (None, None, None))
    if registry is None:
        from madloop.config import SamplingConfig

        return set(SamplingConfig.model_fields)
    choices = {c for c in grid.get(f"{table}.{selector}", []) if isinstance(c, str)}
    base = (raw.get(table) or {}).get(selector, default)
    choices |= {base} if base is not None else set()
    names: set[str] = set()
    for choice in choices:
        spec = registry.get(choice)
        if spec is not None:
            cls = spec.config if hasattr(spec, "config") else spec
            names |= set(cls.model_fields)
    return names


def _key_problems(raw: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> list[str]:
    problems = []
    for key in grid:
        head, _, rest = key.partition(".")
        where = f"sweep.grid.{key}"
        if head in ("seed", "arms", "name", "sweep"):
            fix = {"seed": "use `seeds = K` in [sweep]"}.get(head, "it cannot vary in a sweep")
            problems.append(f"{where}: '{head}' cannot be swept ({fix})")
        elif head in TABLES:
            fields = _field_names(nest_dotted(raw), head, grid)
            if not rest:
                problems.append(f"{where}: name a field of [{head}], e.g. '{head}.<field>'")
            elif fields and rest.split(".")[0] not in fields:
                match = difflib.get_close_matches(rest, sorted(fields), n=1, cutoff=0.5)
                hint = f"; did you mean '{head}.{match[0]}'?" if match else ""
                problems.append(
                    f"{where}: not a config key{hint} (fields of [{head}]: "
                    f"{', '.join(sorted(fields))})"
                )
        elif head not in SWEEPABLE_TOP or rest:
            options = [*SWEEPABLE_TOP, *(f"{t}.<field>" for t in TABLES)]
            match = difflib.get_close_matches(key, [*SWEEPABLE_TOP, *TOP_LEVEL], n=1, cutoff=0.6)
            hint = f"; did you mean '{match[0]}'?" if match else ""
            problems.append(f"{where}: not a config key{hint} (sweepable: {', '.join(options)})")
    return problems


def plan(config: Any) -> SweepPlan:
    """Expand and validate a sweep: every grid key must name a config field, and every point's
    config (all its arms) must validate; invalid points are listed by name. Nothing runs.

    ``config``: a TOML path or a raw config dict with a ``[sweep]`` table (without one, the sweep
    is the base config alone, ``seeds = 1``).
    """
    raw = load_config(config)
    base_raw = {k: v for k, v in raw.items() if k != "sweep"}
    try:  # the top level and the [sweep] table itself (types, empty lists, unknown keys)
        base, _ = _parse_base(raw)
    except ConfigError as err:
        # a bad grid value makes the base invalid only through [sweep]; report those first
        sweep_problems = [p for p in err.problems if p.startswith("sweep")]
        if sweep_problems:
            raise ConfigError(sweep_problems) from None
        base = None
    grid, seeds = _flat_grid(raw)
    problems = _key_problems(raw, grid)
    if problems:
        raise ConfigError(problems)
    study_seed = int(raw.get("seed", 0)) if base is None else base.seed
    name = str(raw.get("name", "experiment")) if base is None else base.name
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    tasks: list[Task] = []
    invalid: list[str] = []
    warnings: list[str] = []
    for point in points:
        point_raw = deep_merge(nest_dotted(base_raw), nest_dotted(point))
        for section, key in (("model", "family"), ("data", "source")):
            # a swept family/source drops the base's fields that belong to the old one
            swept = point.get(f"{section}.{key}")
            if swept is not None and swept != (base_raw.get(section) or {}).get(key):
                point_raw[section] = nest_dotted(point)[section]
        label = ", ".join(f"{k}={_show(v)}" for k, v in point.items())
        try:
            arms = resolve_arms(point_raw)
        except ConfigError as err:
            invalid.extend(f"sweep point ({label}): {p}" for p in err.problems)
            continue
        for arm in arms[1:] if arms[0].name == "base" else arms:
            for key, value in point.items():
                if _lookup(arm.config.to_dict(), key) != value:
                    warnings.append(
                        f"arm '{arm.name}' overrides swept key {key}: it runs with its own value"
                    )
        for s in range(seeds):
            seed = task_seed(study_seed, point, s)
            tid = "/".join(
                [*(f"{quote(k, safe='.-_')}={_segment(v)}" for k, v in point.items()), f"seed={s}"]
            )
            tasks.append(Task(tid, point, s, seed, {**point_raw, "seed": seed}))
    if invalid:
        more = len(invalid) - MAX_LISTED
        raise ConfigError(invalid[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else []))
    return SweepPlan(name, study_seed, raw, grid, seeds, tasks, sorted(set(warnings)))


def _parse_base(raw: Mapping[str, Any]) -> tuple[Any, Any]:
    from madloop.config import parse

    return parse(raw)


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


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

    With ``task.checkpoints`` every arm checkpoints each generation there and continues from
    its newest checkpoint (bit for bit as an uninterrupted task); checkpoints another config
    made (the grid's base changed) are discarded and the task starts over."""
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

    def write_plots(self, generation: int | None = None) -> dict[str, float]:
        """Draw the phase diagrams under ``plots/`` (at ``generation``, default each task's last;
        the CLI does this after a sweep, the sweep itself draws nothing)."""
        from madloop.report.phase import write_sweep_plots

        if self.results.empty:
            return {}
        timings = write_sweep_plots(self.out, generation=generation)
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
        for stale in ("results.parquet", "theory.parquet", "sweep.json"):
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
    todo = [dataclasses.replace(t, checkpoints=where[t.id]) for t in todo]
    for n, result in enumerate(ex.map(run_task, todo), start=1):
        task = by_id[result.task_id]
        runs[task.id] = {"seconds": round(result.seconds, 4), "worker": result.worker}
        if result.ok:
            write_task(out, task, result)
            status[task.id] = "done"
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
