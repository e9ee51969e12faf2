"""Benchmark: the web-pool phase diagram (examples/web-pool-phase.toml) on 2 worker processes.

Expands the config's ``[sweep]`` grid (adoption x detector TPR) x seeds into tasks, runs each task
with ``madloop.experiment.run`` on a local process pool, and draws the phase diagram of the mean
error at the last generation with the theory's boundaries (``madloop.pool.phase_boundary`` for
2x the fresh-data level, ``madloop.theory.pool.critical_tpr`` for unbounded growth). Prints the
wall time against the 5-minute budget. When ``madloop.sweeps`` (issue 6) is installed, also times
``madloop sweep`` on the same config.

    python benchmarks/web_pool_phase.py [--workers 2] [--out runs/web-pool-phase]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per worker: the workers share 2 cores

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tomllib  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300.0


def set_key(raw: dict, dotted: str, value) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def expand(raw: dict) -> list[dict]:
    """One task per grid point and seed; each seed comes from the task's coordinates."""
    sweep = raw.pop("sweep")
    keys = list(sweep["grid"])
    tasks = []
    for idx in itertools.product(*(range(len(sweep["grid"][k])) for k in keys)):
        for s in range(sweep.get("seeds", 1)):
            cfg = copy.deepcopy(raw)
            coords = {k: sweep["grid"][k][i] for k, i in zip(keys, idx, strict=True)}
            for k, v in coords.items():
                set_key(cfg, k, v)
            ss = np.random.SeedSequence(raw["seed"], spawn_key=(*idx, s))
            cfg["seed"] = int(ss.generate_state(1, np.uint64)[0] % (2**63))
            tasks.append({"config": cfg, "coords": coords, "seed_index": s})
    return tasks


def run_task(task: dict) -> tuple[pd.DataFrame, float]:
    from madloop.experiment import run

    t0 = time.perf_counter()
    res = run(task["config"])
    m = res.metrics
    last = m[m.generation == m.generation.max()].copy()
    for k, v in task["coords"].items():
        last[k] = v
    last["seed"] = task["config"]["seed"]
    return last, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "web-pool-phase.toml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "web-pool-phase"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-sweep-cli", action="store_true", help="skip timing `madloop sweep`")
    args = ap.parse_args()
    raw = tomllib.loads(Path(args.config).read_text())
    out = Path(args.out)
    tasks = expand(dict(raw))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        done = list(pool.map(run_task, tasks, chunksize=2))
    wall = time.perf_counter() - t0
    results = pd.concat([d for d, _ in done], ignore_index=True)
    task_s = np.array([s for _, s in done])
    out.mkdir(parents=True, exist_ok=True)
    results.to_parquet(out / "results.parquet", index=False)

    # the theory's boundaries on a fine adoption grid
    from madloop.config import parse
    from madloop.pool import phase_boundary
    from madloop.report.phase import plot_pool_phase
    from madloop.theory.pool import critical_tpr

    base = {k: v for k, v in raw.items() if k != "sweep"}
    _, arms = parse(base)
    cfg = arms[0].config
    n, T = cfg.loop.scrape_size, cfg.generations
    fine = 1 - np.geomspace(1.0, 0.004, 60)
    t1 = time.perf_counter()
    level2 = phase_boundary(arms[0], fine, tolerance=2.0)
    growth = pd.DataFrame(
        {"adoption": fine, "critical_tpr": critical_tpr(fine, n=n, fpr=cfg.loop.detector.fpr)}
    )
    theory_s = time.perf_counter() - t1
    level2.to_csv(out / "boundary.csv", index=False)
    from madloop.pool import real_source

    trace0 = float(np.trace(real_source(cfg).covariance))
    cells = results[results.metric == "mean_error_sq"].rename(
        columns={"loop.adoption": "adoption", "loop.detector.tpr": "tpr"}
    )
    path = plot_pool_phase(
        cells,
        {
            f"theory: 2x fresh-data error at generation {T}": level2,
            "theory: unbounded growth (ρ < ρ_c ≈ 1/2n)": growth,
        },
        out / "plots" / "phase_mean_error_sq.png",
        level=trace0 / n,
        title=f"web-pool: mean error at generation {T} / (tr Σ_0 / n), n = {n}",
    )
    print(
        f"tasks: {len(tasks)} ({len(tasks) // raw['sweep']['seeds']} grid points x "
        f"{raw['sweep']['seeds']} seeds), {cfg.replicates} replicates x {T} generations each"
    )
    print(
        f"local process pool, {args.workers} workers: {wall:.1f} s wall "
        f"({len(tasks) / wall:.2f} tasks/s); task time mean {task_s.mean():.2f} s, "
        f"max {task_s.max():.2f} s; serial sum {task_s.sum():.1f} s "
        f"(speed-up {task_s.sum() / wall:.2f}x)"
    )
    print(f"theory boundaries (60 adoption values): {theory_s:.1f} s")
    verdict = "within" if wall + theory_s < BUDGET_S else "OVER"
    print(f"total {wall + theory_s:.1f} s: {verdict} the {BUDGET_S:.0f} s budget; plot: {path}")
    if importlib.util.find_spec("madloop.sweeps") is not None and not args.no_sweep_cli:
        t2 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "madloop.cli", "sweep", args.config, "--out",
             str(out / "sweep"), "--workers", str(args.workers)],
            capture_output=True, text=True,
        )  # fmt: skip
        print(f"`madloop sweep` (exit {res.returncode}): {time.perf_counter() - t2:.1f} s wall")


if __name__ == "__main__":
    main()
