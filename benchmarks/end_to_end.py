"""Speed as the user sees it: the whole run, not only the loop.

The fully synthetic Gaussian loop (d = 10, n = 100, T = 100, R = 200, Σ_0 = I) against the script a
researcher writes for the same table: Python loops over chains and generations with
``multivariate_normal``, ``np.cov`` and the same five metrics (‖μ_t − μ_0‖², trace ratio, log det
via ``slogdet``, W2 via ``scipy.linalg.sqrtm``, KL), then mean / standard error / median / 5% and
95% quantiles per generation and metric written to a CSV. Measured in this one run, variants
interleaved round by round, best of ``--rounds``:

- in-process: the script as a function; ``madloop.run(config)`` for ``exact`` and ``sample``
  (CPU time, ``time.process_time``);
- whole processes: the script as ``python FILE``; ``madloop run CONFIG --out DIR`` (plots
  included) for ``exact`` and ``sample``; ``madloop --help`` against ``python -c "import numpy"``
  (wall time, and the children's CPU time from ``resource.getrusage``);
- a breakdown of ``madloop.run`` for both configs: imports (a fresh process importing what
  ``madloop run``'s own process needs), worker (the drawing process's imports and warm-up, which
  run while the loop does), loop (metric suites off), metrics (on minus off), tables
  (``long_table``), summary (``summarize`` with the theory), checkpoints and writing
  (``madloop.run(config, out=DIR)`` minus ``madloop.run(config)``: the default checkpoint
  cadence and the run directory's tables) and plots in-process (``RunResult.write_plots``),
  each with ``time.perf_counter``; the overhead share is (tables + summary + checkpoints and
  writing) / (loop + metrics + those), the part of a run that is not the simulation;
- the figures' cost as the user sees it: ``madloop run --out`` with plots minus with
  ``--no-plots`` (the figures are drawn by a process started with the command).

Every variant runs on one BLAS thread. The load average is printed beside the figures.

Usage: python benchmarks/end_to_end.py [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import compileall
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from gaussian_loop import metrics_off  # noqa: E402  (one copy: the bare loop's switch)

import madloop  # noqa: E402

SRC = str(Path(madloop.__file__).resolve().parents[1])  # the madloop being measured
ENV = {**os.environ, "PYTHONPATH": SRC, "RAY_USAGE_STATS_ENABLED": "0"}

RESEARCHER = textwrap.dedent(
    '''
    import numpy as np
    import scipy.linalg


    def researcher(d, n, T, R, seed, out):
        """The straightforward script: per chain, per generation, sample, refit, five metrics."""
        rng = np.random.default_rng(seed)
        mu0, cov0 = np.zeros(d), np.eye(d)
        root0 = scipy.linalg.sqrtm(cov0).real
        inv0_ld = np.linalg.slogdet(cov0)[1]
        values = np.zeros((5, T, R))
        for r in range(R):
            mu, cov = mu0, cov0
            for t in range(T):
                X = rng.multivariate_normal(mu, cov, size=n)
                mu, cov = X.mean(axis=0), np.cov(X, rowvar=False)
                diff = mu - mu0
                _, ld = np.linalg.slogdet(cov)
                cross = scipy.linalg.sqrtm(root0 @ cov @ root0).real
                inv = np.linalg.inv(cov)
                values[0, t, r] = diff @ diff
                values[1, t, r] = np.trace(cov) / np.trace(cov0)
                values[2, t, r] = ld - inv0_ld
                values[3, t, r] = np.sqrt(max(diff @ diff + np.trace(cov + cov0 - 2 * cross), 0))
                values[4, t, r] = 0.5 * (np.trace(inv @ cov0) + diff @ inv @ diff - d + ld)
        names = ["mean_error_sq", "trace_ratio", "log_det_change", "wasserstein2", "kl_divergence"]
        with open(out, "w") as f:
            f.write("generation,metric,mean,std_error,median,q05,q95,n\\n")
            for m, name in enumerate(names):
                v = values[m]
                se = v.std(axis=1, ddof=1) / np.sqrt(R)
                q = np.quantile(v, [0.5, 0.05, 0.95], axis=1)
                for t in range(T):
                    row = [t + 1, name, v[t].mean(), se[t], q[0, t], q[1, t], q[2, t], R]
                    f.write(",".join(map(str, row)) + "\\n")


    if __name__ == "__main__":
        import sys

        d, n, T, R = (int(a) for a in sys.argv[1:5])
        researcher(d, n, T, R, 0, sys.argv[5])
    '''
)


def config_text(mode: str, d: int, n: int, T: int, R: int) -> str:
    return textwrap.dedent(
        f"""
        name = "e2e-{mode}"
        seed = 0
        generations = {T}
        replicates = {R}

        [data]
        source = "gaussian"
        dim = {d}
        covariance = "identity"

        [model]
        family = "gaussian"
        mode = "{mode}"

        [loop]
        regime = "fully-synthetic"
        real_size = 0
        synthetic_size = {n}
        """
    )


def cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def process(argv: list[str]) -> tuple[float, float]:
    """(wall, children's CPU) seconds of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=ENV, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def breakdown(config: Path, out: Path) -> dict[str, float]:
    """perf_counter seconds of each phase of ``madloop run`` (imports in a fresh process)."""
    imports = (  # what the command's own process imports (the figures are the worker's)
        "import time; t0 = time.perf_counter(); import madloop.cli, madloop.experiment, "
        "madloop.models.gaussian, madloop.data.gaussian, madloop.metrics.gaussian; "
        "print(time.perf_counter() - t0)"
    )
    res = subprocess.run(
        [sys.executable, "-c", imports], env=ENV, check=True, capture_output=True, text=True
    )
    worker = (  # the drawing process's imports and warm-up (madloop.report.plot_worker.serve)
        "import time; t0 = time.perf_counter(); import io; "
        "from matplotlib.figure import Figure; import madloop.report.plots; "
        "f = Figure(figsize=(2, 2), dpi=50); f.add_subplot().set_title('warm-up'); "
        "f.savefig(io.BytesIO(), format='png'); print(time.perf_counter() - t0)"
    )
    wres = subprocess.run(
        [sys.executable, "-c", worker], env=ENV, check=True, capture_output=True, text=True
    )
    from madloop.config import parse
    from madloop.engines import build_engine
    from madloop.experiment import RunResult, assemble_result, theory_table, write_run
    from madloop.tables import long_columns, rows_table, summarize_table

    _, arms = parse(config)
    arm = arms[0]
    T = arm.config.generations

    def steps() -> list:
        engine, records = build_engine(arm), []
        while engine.generation < T:
            records += engine.step()
        return records

    t: dict[str, float] = {"imports": float(res.stdout.strip())}
    t["worker"] = float(wres.stdout.strip())
    t0 = time.perf_counter()
    with metrics_off():
        steps()
    t["loop"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    records = steps()
    t["metrics"] = time.perf_counter() - t0 - t["loop"]
    t0 = time.perf_counter()
    frame = long_columns(arm.name, records)
    t["tables"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    theory = theory_table(arms)
    summarize_table(frame, theory)
    t["summary"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    madloop.run(config)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    madloop.run(config, out=out / "checkpointed")  # the tables written, checkpoints by default
    t["ckpt+write"] = max(time.perf_counter() - t0 - bare, 0.0)
    result = assemble_result(arms[0].config, arms, [frame], [rows_table([])], {}, {}, time.time())
    write_run(result, out)
    t0 = time.perf_counter()
    RunResult.write_plots(result)
    t["plots"] = time.perf_counter() - t0
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="best of N interleaved rounds")
    ap.add_argument("--quick", action="store_true", help="T = 20 instead of 100")
    args = ap.parse_args()
    # measure madloop as installed: with its bytecode (a wheel's install writes it; an editable
    # checkout under PYTHONDONTWRITEBYTECODE would compile ~100 modules in every process)
    compileall.compile_dir(str(Path(SRC) / "madloop"), quiet=1)
    d, n, R = 10, 100, 200
    T = 20 if args.quick else 100
    tmp = Path(tempfile.mkdtemp(prefix="madloop-e2e-"))
    script = tmp / "researcher.py"
    script.write_text(RESEARCHER)
    configs = {}
    for mode in ("exact", "sample"):
        configs[mode] = tmp / f"{mode}.toml"
        configs[mode].write_text(config_text(mode, d, n, T, R))
    namespace: dict = {}
    exec(compile(RESEARCHER, str(script), "exec"), namespace)
    researcher = namespace["researcher"]
    py = sys.executable
    cli = [py, "-m", "madloop.cli"]

    def cli_run(mode: str) -> list[str]:
        shutil.rmtree(tmp / f"cli-{mode}", ignore_errors=True)  # a fresh run every time
        return [*cli, "run", str(configs[mode]), "--out", str(tmp / f"cli-{mode}"), "-q"]

    inproc = {
        "script": lambda: researcher(d, n, T, R, 0, str(tmp / "script.csv")),
        "exact": lambda: madloop.run(configs["exact"]),
        "sample": lambda: madloop.run(configs["sample"]),
    }
    procs = {
        "script": [py, str(script), str(d), str(n), str(T), str(R), str(tmp / "p.csv")],
        "exact": lambda: cli_run("exact"),
        "sample": lambda: cli_run("sample"),
        "exact-noplots": lambda: [*cli_run("exact"), "--no-plots"],
        "sample-noplots": lambda: [*cli_run("sample"), "--no-plots"],
        "numpy": [py, "-c", "import numpy"],
        "help": [*cli, "--help"],
    }
    best = {k: float("inf") for k in inproc}
    pwall = {k: float("inf") for k in procs}
    pcpu = {k: float("inf") for k in procs}
    loads = [os.getloadavg()]
    for _ in range(args.rounds):
        for k, fn in inproc.items():
            best[k] = min(best[k], cpu(fn))
        for k, argv in procs.items():
            w, c = process(argv() if callable(argv) else argv)
            pwall[k], pcpu[k] = min(pwall[k], w), min(pcpu[k], c)
        loads.append(os.getloadavg())
    parts = {}
    for mode in ("exact", "sample"):
        runs = [breakdown(configs[mode], tmp / f"bd-{mode}-{i}") for i in range(args.rounds)]
        parts[mode] = {k: min(r[k] for r in runs) for k in runs[0]}
    loads.append(os.getloadavg())
    report(d, n, T, R, args.rounds, best, pwall, pcpu, parts, loads)


def report(d, n, T, R, rounds, best, pwall, pcpu, parts, loads) -> None:  # noqa: ANN001
    import numpy as np
    import scipy

    lo = ", ".join(f"{a:.2f}" for a, _, _ in loads)
    print(f"end to end: fully synthetic Gaussian, d={d}, n={n}, T={T}, R={R}; best of {rounds}")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}; load average (1 min) {lo}")
    print("\nin-process (CPU s)                 time    script / madloop")
    print(f"  researcher's script (function) {best['script']:8.3f}")
    for k in ("exact", "sample"):
        ratio = best["script"] / best[k]
        print(f"  madloop.run, {k:<6s}            {best[k]:8.3f}   {ratio:6.2f}x")
    print("\nwhole processes                   wall s   CPU s   script / madloop (wall, CPU)")
    print(f"  python researcher.py           {pwall['script']:8.3f} {pcpu['script']:7.3f}")
    for k in ("exact", "sample"):
        print(
            f"  madloop run --out (+plots) {k:<6s}{pwall[k]:7.3f} {pcpu[k]:7.3f}   "
            f"{pwall['script'] / pwall[k]:5.2f}x, {pcpu['script'] / pcpu[k]:5.2f}x"
        )
    for k in ("exact", "sample"):
        nop = pwall[f"{k}-noplots"]
        print(
            f"  madloop run --out --no-plots {k:<7s}{nop:5.3f} {pcpu[f'{k}-noplots']:7.3f}   "
            f"{pwall['script'] / nop:5.2f}x; the figures add {pwall[k] - nop:.3f} s wall"
        )
    print(f"  python -c 'import numpy'       {pwall['numpy']:8.3f} {pcpu['numpy']:7.3f}")
    print(
        f"  madloop --help                 {pwall['help']:8.3f} {pcpu['help']:7.3f}   "
        f"{pwall['help'] / pwall['numpy']:5.2f}x, {pcpu['help'] / pcpu['numpy']:5.2f}x "
        "import numpy"
    )
    print("\nbreakdown of madloop run (perf_counter s)")
    keys = list(parts["exact"])
    print("  " + " ".join(f"{k:>9s}" for k in ["mode", *keys]))
    for mode, t in parts.items():
        print("  " + f"{mode:>9s} " + " ".join(f"{t[k]:9.3f}" for k in keys))
    print(
        "  (imports: the command's process; worker: the drawing process's imports and warm-up,"
        " concurrent with the run; plots: drawing them in-process)"
    )
    print("\noverhead beyond the loop and its metrics (tables, summary, checkpoints, writing)")
    for mode, t in parts.items():
        extra = t["tables"] + t["summary"] + t["ckpt+write"]
        share = extra / (t["loop"] + t["metrics"] + extra)
        print(f"  {mode:>9s}: {extra:.3f} s, {100 * share:.1f}% of the run (target <= 25%)")


if __name__ == "__main__":
    main()
