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

from madloop.sweeps.plan import SweepPlan, Task, plan, task_seed
from madloop.sweeps.runner import (
    SweepResult,
    TaskOutput,
    default_out,
    finished,
    gather,
    run_task,
    sweep,
)

__all__ = [
    "SweepPlan",
    "SweepResult",
    "Task",
    "TaskOutput",
    "default_out",
    "finished",
    "gather",
    "plan",
    "run_task",
    "sweep",
    "task_seed",
]
