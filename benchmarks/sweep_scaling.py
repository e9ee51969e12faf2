"""Sweep scaling: tasks/second on 1 and 2 workers, local process pool vs Ray, on the same sweep.

Every task is one exact-mode Gaussian run of about a second. The script measures, in one run:

- bare: each task's ``run_task`` called in this process, one after another (no executor);
- local/ray x 1/2 workers: ``Executor.map(run_task, tasks)`` wall time (a local pool starts
  inside ``map``, so its start-up is counted; Ray is started once per worker count beforehand
  and its start-up is printed separately);

and prints tasks/second, the speed-up of 2 workers over 1 and the per-task overhead of each
executor: (workers x wall - bare total) / tasks, the CPU-seconds per task spent on anything but
the task. Because other jobs on a shared machine slow the tasks themselves too, it also prints the
executor's own cost, (workers x wall - the tasks' in-worker seconds) / tasks, and the busy
fraction, in-worker seconds / (workers x wall), and *cores*, the tasks' CPU seconds / wall: how
much CPU the machine actually gave the workers (Linux's autogroup scheduler shares the CPUs
between sessions, so on a busy machine a second worker may get no extra CPU). Each measurement
is repeated (``--repeats``); on a machine shared with other jobs the fastest run is the best
estimate of the uncontended time, so rates, speed-ups and overheads use the fastest run, and the
median is printed next to it.

    python benchmarks/sweep_scaling.py [--tasks 8] [--repeats 3] [--generations 150]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from madloop.executors import LocalExecutor, RayExecutor  # noqa: E402
from madloop.sweeps import plan, run_task  # noqa: E402


def config(tasks: int, generations: int) -> dict:
    return {
        "name": "scaling",
        "seed": 1,
        "generations": generations,
        "replicates": 50,
        "data": {"source": "gaussian", "dim": 5},
        "model": {"family": "gaussian", "mode": "exact"},
        "loop": {"regime": "fresh-data", "real_size": 10, "synthetic_size": 50},
        "sweep": {"seeds": tasks, "grid": {}},
    }


def cpu_timed(task) -> float:
    """Run a task; return the CPU seconds it used (its wall time is in the TaskResult)."""
    c0 = time.process_time()
    run_task(task)
    return time.process_time() - c0


def timed_map(executor, tasks) -> tuple[float, float, float]:
    """(wall seconds, the tasks' in-worker wall seconds, the tasks' CPU seconds)."""
    t0 = time.perf_counter()
    results = list(executor.map(cpu_timed, tasks))
    wall = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return wall, sum(r.seconds for r in results), sum(r.value for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--generations", type=int, default=150)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    tasks = plan(config(args.tasks, args.generations)).tasks
    n = len(tasks)
    print(f"{n} tasks; cpus={os.cpu_count()}; repeats={args.repeats} (best run used; median shown)")

    bare_runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for task in tasks:
            run_task(task)
        bare_runs.append(time.perf_counter() - t0)
    bare = min(bare_runs)
    print(f"bare: {bare:.2f} s total, {bare / n:.3f} s per task  (runs: {_fmt(bare_runs)})")

    rows = []
    for workers in (1, 2):
        runs = [timed_map(LocalExecutor(workers), tasks) for _ in range(args.repeats)]
        rows.append(("local", workers, runs))
    if not args.no_ray:
        import ray

        for workers in (1, 2):
            t0 = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR)
            timed_map(RayExecutor(), tasks[:workers])  # warm the worker processes
            startup = time.perf_counter() - t0
            runs = [timed_map(RayExecutor(), tasks) for _ in range(args.repeats)]
            ray.shutdown()
            rows.append((f"ray (start-up {startup:.1f} s)", workers, runs))

    print(
        f"\n{'executor':<24}{'workers':>8}{'best s':>8}{'median s':>10}{'tasks/s':>9}"
        f"{'speed-up':>10}{'overhead/task':>15}{'own cost/task':>15}{'busy':>7}{'cores':>7}  runs"
    )
    one: dict[str, float] = {}
    for name, workers, runs in rows:
        wall, inside, cpu = min(runs)
        walls = [w for w, _, _ in runs]
        key = name.split()[0]
        if workers == 1:
            one[key] = wall
        speedup = one[key] / wall
        overhead = (workers * wall - bare) / n
        own = (workers * wall - inside) / n
        print(
            f"{name:<24}{workers:>8}{wall:>8.2f}{statistics.median(walls):>10.2f}"
            f"{n / wall:>9.2f}{speedup:>9.2f}x{overhead:>14.3f}s{own:>14.3f}s"
            f"{inside / (workers * wall):>7.0%}{cpu / wall:>7.2f}  {_fmt(walls)}"
        )


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
