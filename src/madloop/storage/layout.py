"""The run directory and the sweep directory: every file name, in one place.

A **run directory** (``madloop run CONFIG --out DIR``)::

    DIR/metrics.parquet     arm, generation, replicate, metric, value (the long table)
    DIR/summary.csv         per arm, generation, metric: mean, std_error, median, q05, q95, n,
                            ci_low, ci_high (the 95% t interval of the mean), theory
                            (:func:`madloop.tables.summarize`), bias (λ and the family's own
                            knob: ``λ = 0.5 (guidance w = 1)``); generation 0 is the real-data
                            floor of the sample-based metrics (:mod:`madloop.floor`)
    DIR/provenance.csv      every training set's make-up by source and origin generation
    DIR/manifest.json       config, arms, modes, versions, seed, timings (see MANIFEST_KEYS)
    DIR/plots/              metric figures; plots/samples/ the galleries
    DIR/checkpoints/        one folder per arm (:mod:`madloop.checkpoint`)
    DIR/cache/              what a data source caches (e.g. the image metrics' feature network)
    DIR/.madloop.lock       held while a run writes here (:mod:`madloop.storage.lock`)

A **sweep directory** (``madloop sweep CONFIG --out DIR``)::

    DIR/sweep.json          base config, grid, seeds, every task with status, error, timings
    DIR/tasks/<key=value>/.../seed=<i>/
        metrics.parquet     the task's long table
        theory.parquet      arm, generation, metric, theory (where a closed form exists)
        checkpoints/        the task's generation checkpoints while it runs (mid-task resume)
        manifest.json       written last: a task is finished once it is there
    DIR/results.parquet     swept keys + seed + the long table, every task, in grid order
    DIR/theory.parquet      swept keys + seed + the theory table
    DIR/sweep_summary.csv   per swept keys, arm, generation, metric: the run summary's columns
                            over every seed x chain of a cell (:func:`madloop.tables.sweep_summary`)
    DIR/plots/              phase diagrams
    DIR/.madloop.lock       held while a sweep runs here

A **reproduction directory** (``madloop reproduce NAME --out DIR``)::

    DIR/comparison.csv      one row per check: study, quantity, generation, reference,
                            reference_source, measured, std_error, tolerance, agrees, ...
    DIR/curves.csv          the measured and reference curves of each study's figure
    DIR/reproduction.json   the studies (paper, what is checked), quick or full, seconds
    DIR/figures/NAME.png    per study: our curve beside the reference
    DIR/runs/NAME/          each study's run directory

Readers go through :class:`RunDir` / :class:`SweepDir` instead of spelling file names, so the
format has one owner. Nothing here imports the loop: the report reads directories with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madloop.storage.files import read_json

METRICS = "metrics.parquet"
SUMMARY = "summary.csv"
PROVENANCE = "provenance.csv"
MANIFEST = "manifest.json"
PLOTS = "plots"
SAMPLES = "plots/samples"
CHECKPOINTS = "checkpoints"
CACHE = "cache"
LOCK = ".madloop.lock"

SWEEP_JSON = "sweep.json"
TASKS = "tasks"
RESULTS = "results.parquet"
THEORY = "theory.parquet"
SWEEP_SUMMARY = "sweep_summary.csv"

COMPARISON = "comparison.csv"
CURVES = "curves.csv"
REPRODUCTION = "reproduction.json"
FIGURES = "figures"

METRIC_COLUMNS = ["arm", "generation", "replicate", "metric", "value"]
THEORY_COLUMNS = ["arm", "generation", "metric", "theory"]
SUMMARY_COLUMNS = [
    "arm", "generation", "metric", "mean", "std_error", "median", "q05", "q95", "n", "ci_low",
    "ci_high", "theory",
]  # fmt: skip
PROVENANCE_COLUMNS = [
    "arm", "generation", "source", "origin_generation", "count_mean", "count_min", "count_max",
]  # fmt: skip

#: the keys of a run's manifest.json (``failures`` and ``resumed_from`` when they apply)
MANIFEST_KEYS = (
    "name", "seed", "config", "arms", "modes", "versions", "git_commit", "command", "started",
    "timings_s", "glossary", "failures", "resumed_from",
)  # fmt: skip
#: the keys of a sweep's sweep.json
SWEEP_KEYS = (
    "name", "seed", "config", "grid", "seeds", "executor", "warnings", "versions", "git_commit",
    "command", "started", "stale_tasks", "timings_s", "counts", "tasks",
)  # fmt: skip


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    provenance = property(lambda self: self.path / PROVENANCE)
    manifest = property(lambda self: self.path / MANIFEST)
    plots = property(lambda self: self.path / PLOTS)
    samples = property(lambda self: self.path / SAMPLES)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    cache = property(lambda self: self.path / CACHE)
    lock = property(lambda self: self.path / LOCK)

    def exists(self) -> bool:
        """Whether ``path`` looks like a run directory (it has a summary or a long table)."""
        return self.summary.exists() or self.metrics.exists()

    def read_manifest(self) -> dict[str, Any]:
        return read_json(self.manifest)

    def read_summary(self) -> Any:
        """summary.csv as a DataFrame (pandas is imported here, not with this module)."""
        import pandas as pd

        return pd.read_csv(self.summary)

    def read_metrics(self) -> Any:
        """metrics.parquet, the long table, as a DataFrame."""
        import pandas as pd

        return pd.read_parquet(self.metrics)


@dataclass(frozen=True)
class SweepDir:
    """The files of one sweep directory."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    sweep_json = property(lambda self: self.path / SWEEP_JSON)
    tasks = property(lambda self: self.path / TASKS)
    results = property(lambda self: self.path / RESULTS)
    theory = property(lambda self: self.path / THEORY)
    summary = property(lambda self: self.path / SWEEP_SUMMARY)
    plots = property(lambda self: self.path / PLOTS)
    lock = property(lambda self: self.path / LOCK)

    def task(self, task_id: str) -> RunDir:
        """A task's folder: a run directory of its own (tables, checkpoints, manifest)."""
        return RunDir(self.tasks / task_id)

    def exists(self) -> bool:
        return self.results.exists() or self.sweep_json.exists()

    def read_meta(self) -> dict[str, Any]:
        return read_json(self.sweep_json)

    def base_config(self) -> dict[str, Any]:
        """The sweep's base config as given (``config`` in sweep.json)."""
        base = self.read_meta().get("config")
        return base if isinstance(base, dict) else {}

    def grid(self) -> dict[str, list[Any]]:
        """The swept keys and their values, in the sweep's order (``grid`` in sweep.json)."""
        grid = self.read_meta().get("grid")
        return grid if isinstance(grid, dict) else {}

    def read_results(self) -> Any:
        """results.parquet as a DataFrame (pandas is imported here, not with this module)."""
        import pandas as pd

        return pd.read_parquet(self.results)

    def read_theory(self) -> Any:
        """theory.parquet as a DataFrame, or None when the sweep has no closed form."""
        import pandas as pd

        return pd.read_parquet(self.theory) if self.theory.exists() else None
