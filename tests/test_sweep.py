"""Sweeps: identity seeds, executors agree bit for bit, resume after SIGKILL, failures, tables."""

from __future__ import annotations

import copy
import glob
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from madloop.cli import app
from madloop.config import ConfigError
from madloop.executors import LocalExecutor, RayExecutor, SerialExecutor
from madloop.sweeps import plan, sweep, task_seed

ROOT = Path(__file__).resolve().parents[1]
SORT = ["sampling.bias", "loop.real_size", "seed", "arm", "generation", "replicate", "metric"]


def small(**top) -> dict:
    """2 x 2 grid x 2 seeds = 8 tasks of a tiny exact Gaussian fresh-data loop."""
    cfg = {
        "name": "tiny",
        "seed": 11,
        "generations": 4,
        "replicates": 3,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "gaussian", "mode": "exact"},
        "loop": {"regime": "fresh-data", "real_size": 10, "synthetic_size": 20},
        "sweep": {"seeds": 2, "grid": {"sampling.bias": [1.0, 0.8], "loop.real_size": [5, 40]}},
    }
    cfg.update(top)
    return cfg


def sorted_table(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(SORT).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The small sweep run serially, in this process: what every executor must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    res = sweep(small(), out=out, executor="serial")
    assert res.errors == {} and len(res.status) == 8
    return sorted_table(pd.read_parquet(out / "results.parquet"))


# -- seeds ----------------------------------------------------------------------------------------
def test_task_seed_depends_on_identity_only():
    a = task_seed(3, {"sampling.bias": 0.9, "loop.real_size": 10}, 0)
    assert a == task_seed(3, {"loop.real_size": 10, "sampling.bias": 0.9}, 0)  # key order
    assert 0 <= a < 2**63
    others = {
        task_seed(4, {"sampling.bias": 0.9, "loop.real_size": 10}, 0),  # study seed
        task_seed(3, {"sampling.bias": 0.9, "loop.real_size": 10}, 1),  # seed index
        task_seed(3, {"sampling.bias": 0.8, "loop.real_size": 10}, 0),  # point
        task_seed(3, {"sampling.bias": 0.9, "loop.real_size": 11}, 0),
    }
    assert a not in others and len(others) == 4


def test_plan_expands_grid_in_order_and_keeps_arms():
    cfg = small(arms=[{"name": "biased", "sampling.bias": 0.5}])
    p = plan(cfg)
    assert p.keys == ["sampling.bias", "loop.real_size"]
    assert [t.id for t in p.tasks[:3]] == [
        "sampling.bias=1.0/loop.real_size=5/seed=0",
        "sampling.bias=1.0/loop.real_size=5/seed=1",
        "sampling.bias=1.0/loop.real_size=40/seed=0",
    ]
    t = p.tasks[3]
    assert t.config["loop"]["real_size"] == 40 and t.config["sampling"]["bias"] == 1.0
    assert t.config["seed"] == t.task_seed == task_seed(11, t.point, t.seed)
    assert "sweep" not in t.config and t.config["arms"] == cfg["arms"]
    # the arm sets a swept key itself: it keeps its own value, and the plan says so
    assert p.warnings == [
        "arm 'biased' overrides swept key sampling.bias: it runs with its own value"
    ]


def test_reordering_the_grid_changes_no_number(reference, tmp_path):
    cfg = small()
    cfg["sweep"]["grid"] = {"loop.real_size": [40, 5], "sampling.bias": [0.8, 1.0]}
    res = sweep(cfg, out=tmp_path, executor="serial")
    pd.testing.assert_frame_equal(sorted_table(res.results)[reference.columns], reference)
    # and the numbers differ between points and seeds (the comparison has teeth)
    final = reference[(reference.metric == "trace_ratio") & (reference.generation == 4)]
    assert final.groupby(["sampling.bias", "loop.real_size", "seed"])["value"].sum().nunique() == 8


# -- executors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_local_pool_matches_serial(reference, tmp_path, workers):
    res = sweep(small(), out=tmp_path, executor="local", workers=workers)
    assert res.errors == {} and res.ran == 8
    got = sorted_table(pd.read_parquet(tmp_path / "results.parquet"))
    pd.testing.assert_frame_equal(got, reference)
    pids = {json.loads(p.read_text())["worker"] for p in tmp_path.glob("tasks/**/manifest.json")}
    assert len(pids) == workers and all(not p.endswith(f":{os.getpid()}") for p in pids)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_matches_serial(reference, tmp_path, ray_session):
    res = sweep(small(), out=tmp_path, executor="ray", workers=2)
    assert res.errors == {} and res.ran == 8
    assert ray_session.is_initialized()  # it used the session it found and left it running
    got = sorted_table(pd.read_parquet(tmp_path / "results.parquet"))
    pd.testing.assert_frame_equal(got, reference)
    # a task that raises on Ray is an error result too (this module travels by value: Ray's
    # workers cannot import a test file)
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    results = list(RayExecutor().map(_explode, [1, 2]))
    assert sorted(r.error for r in results) == ["ValueError: task 1", "ValueError: task 2"]


def _explode(x: int) -> int:
    raise ValueError(f"task {x}")


@pytest.mark.parametrize("executor", [SerialExecutor(), LocalExecutor(2)], ids=["serial", "local"])
def test_executor_reports_errors_and_timings(executor):
    results = {r.task_id: r for r in executor.map(_square_or_fail, [1, 2, 3, 4])}
    assert {k: r.value for k, r in results.items() if r.ok} == {"0": 1, "1": 4, "3": 16}
    bad = results["2"]
    assert not bad.ok and bad.error == "ZeroDivisionError: 3 is unlucky"
    assert "Traceback" in bad.traceback and "_square_or_fail" in bad.traceback
    assert all(r.seconds >= 0 and r.worker for r in results.values())


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ZeroDivisionError("3 is unlucky")
    return x * x


@dataclass(frozen=True)
class Doomed:
    """A task wrapped so that it raises in the worker when ``fail`` is set."""

    id: str
    fn: object
    task: object
    fail: bool


def _run_doomed(item: Doomed):
    if item.fail:
        raise RuntimeError(f"injected failure in {item.id}")
    return item.fn(item.task)


class FailSome:
    """An executor that makes chosen tasks raise, around a real process pool."""

    def __init__(self, inner, fail_ids):
        self.inner, self.fail_ids = inner, set(fail_ids)

    def map(self, fn, tasks):
        doomed = [Doomed(t.id, fn, t, t.id in self.fail_ids) for t in tasks]
        return self.inner.map(_run_doomed, doomed)


def test_failed_task_is_reported_and_the_rest_complete(reference, tmp_path):
    victim = "sampling.bias=0.8/loop.real_size=5/seed=1"
    res = sweep(small(), out=tmp_path, executor=FailSome(LocalExecutor(2), [victim]))
    assert res.errors == {victim: f"RuntimeError: injected failure in {victim}"}
    assert res.status[victim] == "failed" and sum(s == "done" for s in res.status.values()) == 7
    assert not (tmp_path / "tasks" / victim / "manifest.json").exists()
    doc = json.loads((tmp_path / "sweep.json").read_text())
    entry = next(t for t in doc["tasks"] if t["id"] == victim)
    assert entry["status"] == "failed" and "injected failure" in entry["traceback"]
    assert doc["counts"] == {"done": 7, "failed": 1}
    expected = reference[
        ~((reference["sampling.bias"] == 0.8) & (reference["loop.real_size"] == 5))
        | (reference["seed"] != 1)
    ].reset_index(drop=True)
    pd.testing.assert_frame_equal(sorted_table(res.results), expected)
    # a resume retries the failed task only, and the table is whole again
    again = sweep(small(), out=tmp_path, executor="serial")
    assert again.ran == 1 and again.status[victim] == "done" and again.reused == 7
    pd.testing.assert_frame_equal(sorted_table(again.results), reference)


# -- resume ---------------------------------------------------------------------------------------
def slow_config(path: Path) -> Path:
    cfg = small(generations=60, replicates=20)
    cfg["sweep"]["grid"]["sampling.bias"] = [1.0, 0.9, 0.8]  # 12 tasks of ~0.2 s
    lines = [
        'name = "slow"',
        "seed = 5",
        "generations = 60",
        "replicates = 20",
        "[data]\nsource = 'gaussian'\ndim = 2",
        "[model]\nfamily = 'gaussian'\nmode = 'exact'",
        "[loop]\nregime = 'fresh-data'\nreal_size = 10\nsynthetic_size = 20",
        "[sweep]\nseeds = 2",
        "[sweep.grid]",
        '"sampling.bias" = [1.0, 0.9, 0.8]',
        '"loop.real_size" = [5, 40]',
    ]
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text())["sweep"]["grid"] == cfg["sweep"]["grid"]
    return path


def test_sigkill_then_resume_runs_only_the_missing_tasks(tmp_path):
    config = slow_config(tmp_path / "slow.toml")
    out = tmp_path / "sweep"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "madloop.cli", "sweep", str(config), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "1", "--quiet"],
        env=env,
        start_new_session=True,  # its own process group: the pool's workers die with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    try:
        # glob.glob, not Path.glob: running tasks' checkpoint folders come and go mid-walk
        while len(glob.glob(f"{out}/tasks/**/manifest.json", recursive=True)) < 3:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no task finished in 60 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {p.parent: p.stat().st_mtime_ns for p in out.glob("tasks/**/manifest.json")}
    assert 3 <= len(done_before) < 12
    assert not (out / "results.parquet").exists()

    res = sweep(config, out=out, executor="local", workers=2)
    assert res.reused == len(done_before) and res.ran == 12 - len(done_before)
    assert res.errors == {}
    for task_dir, mtime in done_before.items():  # finished tasks were not run again
        assert (task_dir / "manifest.json").stat().st_mtime_ns == mtime

    fresh = sweep(config, out=tmp_path / "fresh", executor="serial")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "results.parquet"),
        pd.read_parquet(tmp_path / "fresh/results.parquet"),
    )
    assert len(fresh.results) == 12 * 60 * 20 * 5


def test_fresh_reruns_and_changed_config_is_not_reused(tmp_path):
    first = sweep(small(), out=tmp_path, executor="serial")
    assert first.ran == 8
    assert sweep(small(), out=tmp_path, executor="serial").reused == 8
    assert sweep(small(), out=tmp_path, executor="serial", resume=False).ran == 8
    changed = sweep(small(generations=3), out=tmp_path, executor="serial")
    assert changed.ran == 8 and changed.results["generation"].max() == 3
    grown = small(generations=3)
    grown["sweep"]["grid"]["loop.real_size"] = [5, 40, 80]  # a new value: only its tasks run
    assert sweep(grown, out=tmp_path, executor="serial").ran == 4
    shrunk = small(generations=3)
    shrunk["sweep"]["grid"]["loop.real_size"] = [5]
    res = sweep(shrunk, out=tmp_path, executor="serial")
    assert res.ran == 0 and len(res.manifest["stale_tasks"]) == 8
    assert set(res.results["loop.real_size"]) == {5}


# -- the tables -----------------------------------------------------------------------------------
def test_tables_read_back_with_pandas_duckdb_polars(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    res = sweep(small(), out=tmp_path, executor="serial")
    res.write_plots()
    results = pd.read_parquet(tmp_path / "results.parquet")
    assert list(results.columns) == [
        "sampling.bias", "loop.real_size", "seed", "arm", "generation", "replicate", "metric",
        "value",
    ]  # fmt: skip
    assert len(results) == 8 * 4 * 3 * 5 and results["value"].notna().all()
    path = tmp_path / "results.parquet"
    q = duckdb.sql(
        f"""SELECT "sampling.bias", "loop.real_size", avg(value) AS mean FROM '{path}'
            WHERE metric = 'trace_ratio' AND generation = 4 GROUP BY ALL ORDER BY ALL"""
    ).df()
    want = (
        results[(results.metric == "trace_ratio") & (results.generation == 4)]
        .groupby(["sampling.bias", "loop.real_size"])["value"]
        .mean()
    )
    np.testing.assert_allclose(q["mean"], want.to_numpy(), rtol=1e-12)
    # the hive-partitioned task files hold the same table
    hive = duckdb.sql(
        f"""SELECT * FROM read_parquet('{tmp_path}/tasks/**/metrics.parquet',
            hive_partitioning = true, hive_types = {{'sampling.bias': DOUBLE}})"""
    ).df()
    pd.testing.assert_frame_equal(
        sorted_table(hive[results.columns]), sorted_table(results), check_dtype=False
    )
    pl = pytest.importorskip("polars")
    lazy = pl.scan_parquet(f"{tmp_path}/tasks/**/metrics.parquet", hive_partitioning=True)
    assert lazy.collect().height == len(results)
    assert pl.read_parquet(path).columns == list(results.columns)
    # theory: per point, seed, arm and generation; independent of the seed for identity Σ_0
    theory = pd.read_parquet(tmp_path / "theory.parquet")
    assert set(theory.columns) == {*SORT[:4], "generation", "metric", "theory"} - {"replicate"}
    assert (
        theory.groupby(["sampling.bias", "loop.real_size", "generation", "metric"])["theory"]
        .nunique()
        .max()
        == 1
    )
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "heatmap_trace_ratio.png" in plots and "line_trace_ratio_by_loop.real_size.png" in plots
    assert len(plots) == 5 * 3
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert doc["grid"] == small()["sweep"]["grid"] and doc["seeds"] == 2
    assert res.manifest["timings_s"]["task_sum"] > 0


# -- invalid sweeps -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("grid", "extra", "message"),
    [
        ({"sampling.bais": [0.9]}, {}, "sweep.grid.sampling.bais: not a config key; did you mean "
         "'sampling.bias'?"),
        ({"seed": [1, 2]}, {}, "sweep.grid.seed: 'seed' cannot be swept (use `seeds = K`"),
        ({"loop.real_size": []}, {}, "sweep.grid: 'loop.real_size' is an empty list"),
        ({"loop.real_size": 10}, {}, "'loop.real_size' must be a list of values, got 10 "
         "(write [10])"),
        ({"sampling.bias": [1.0, 1.5]}, {}, "sweep point (sampling.bias=1.5): sampling.bias: must "
         "be in (0, 1]"),
        ({"sampling.bias": [0.9, 0.9]}, {}, "'sampling.bias' lists a value twice"),
        ({"colour": [1]}, {}, "sweep.grid.colour: not a config key (sweepable: generations"),
        ({}, {"seeds": 0}, "sweep.seeds: must be >= 1, got 0"),
        ({}, {"repeats": 3}, "sweep.repeats: unknown key (valid: grid, seeds)"),
    ],
)  # fmt: skip
def test_invalid_sweeps_name_the_problem(grid, extra, message):
    cfg = small()
    cfg["sweep"] = {"grid": grid, **extra}
    with pytest.raises(ConfigError) as info:
        plan(cfg)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_cli_sweep_invalid_config_exits_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        (ROOT / "examples/fresh-data-phase.toml")
        .read_text()
        .replace('"sampling.bias"', '"sampling.bais"')
    )
    result = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "sweep.grid.sampling.bais: not a config key; did you mean 'sampling.bias'?" in (
        result.output
    )
    result = CliRunner().invoke(app, ["sweep", str(cfg), "--executor", "dask"])
    assert result.exit_code == 2 and "unknown executor 'dask'" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_sweep_runs_and_resumes(tmp_path):
    cfg = tmp_path / "s.toml"
    doc = copy.deepcopy(small())
    lines = [
        'name = "tiny"\nseed = 11\ngenerations = 4\nreplicates = 3',
        "[data]\nsource = 'gaussian'\ndim = 2",
        "[model]\nfamily = 'gaussian'\nmode = 'exact'",
        "[loop]\nregime = 'fresh-data'\nreal_size = 10\nsynthetic_size = 20",
        "[sweep]\nseeds = 2\n[sweep.grid]",
        "sampling.bias = [1.0, 0.8]",  # unquoted dotted keys nest in TOML: the same grid
        "loop.real_size = [5, 40]",
    ]
    cfg.write_text("\n".join(lines) + "\n")
    assert plan(cfg).grid == doc["sweep"]["grid"]
    out = tmp_path / "o"
    args = ["sweep", str(cfg), "--out", str(out), "--executor", "serial", "-q", "--no-plots"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "8 tasks (8 done)" in first.output
    again = CliRunner().invoke(app, args)
    assert "8 tasks (8 reused)" in again.output
    assert len(pd.read_parquet(out / "results.parquet")) == 8 * 4 * 3 * 5
    assert not (out / "plots").exists()


def test_example_sweep_config_is_valid():
    p = plan(ROOT / "examples/fresh-data-phase.toml")
    assert p.keys == ["sampling.bias", "loop.real_size"]
    assert len(p.tasks) == len(p.grid["sampling.bias"]) * len(p.grid["loop.real_size"]) * p.seeds
    assert {t.config["loop"]["regime"] for t in p.tasks} == {"fresh-data"}


def test_phase_table_averages_the_last_generation_over_replicates_and_seeds(reference):
    from madloop.report.phase import contour_levels, phase_table

    t = phase_table(reference, "trace_ratio", "loop.real_size", "sampling.bias")
    last = reference[(reference.metric == "trace_ratio") & (reference.generation == 4)]
    want = last.groupby(["sampling.bias", "loop.real_size"])["value"].agg(["mean", "size"])
    np.testing.assert_allclose(t["mean"], want["mean"].to_numpy())
    assert (t["n"] == 2 * 3).all()  # 2 seeds x 3 replicates per cell
    at2 = phase_table(reference, "trace_ratio", "loop.real_size", generation=2)
    assert len(at2) == 2 and (at2["n"] == 2 * 2 * 3).all()  # mean over the other key too
    levels = contour_levels(np.array([[1e-8, 0.2], [0.5, 1.0]]))
    assert len(levels) >= 2 and (levels > 1e-8).all() and (levels < 1.0).all()


@pytest.mark.slow
def test_example_phase_diagram_meets_theory(tmp_path):
    """The example sweep end to end (60 tasks): in every cell the mean trace ratio at the last
    generation is within 5 standard errors of the closed form, and fresh data lifts it."""
    res = sweep(ROOT / "examples/fresh-data-phase.toml", out=tmp_path, workers=2)
    res.write_plots()  # what `madloop sweep` does after the sweep
    assert res.errors == {} and len(res.status) == 60
    keys = ["sampling.bias", "loop.real_size"]
    last = res.results[(res.results.metric == "trace_ratio") & (res.results.generation == 50)]
    sim = last.groupby(keys)["value"].agg(["mean", "std", "size"])
    th = res.theory[(res.theory.metric == "trace_ratio") & (res.theory.generation == 50)]
    theory = th.groupby(keys)["theory"].mean()
    se = sim["std"] / np.sqrt(sim["size"])
    z = (sim["mean"] - theory) / se
    assert (z.abs() < 5).all(), z[z.abs() >= 5]
    for bias in (0.9, 0.8, 0.7):  # more fresh data, less collapse
        assert theory.loc[bias].is_monotonic_increasing
        assert sim["mean"].loc[bias].iloc[-1] > 100 * sim["mean"].loc[bias].iloc[0]
    assert len(list((tmp_path / "plots").glob("heatmap_*.png"))) == 5
