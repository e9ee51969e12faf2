"""Soak: a long fully synthetic Gaussian run, d = 10, n = 100, in `exact` and `sample` mode.

`madloop.experiment.run` on a config like examples/fully-synthetic.toml (identity covariance,
`model.mode = "exact"` or `"sample"`, `data.dim = 10`, `loop.synthetic_size = 100`), by default
10,000 generations x 200 replicates in exact mode and 1,000 generations in sample mode. Prints:

- the wall time (and CPU time) of each run, beside the machine's load average;
- whether the metrics stay finite throughout: the count of non-finite values per metric
  (log_det_change is finite for n > d: the fitted covariance is full rank; the KL divergence
  overflows once Σ_t is far enough below Σ_0);
- the log-det mean at the last generation against its theory (`summary`'s `theory` column), as
  a difference in standard errors;
- resident memory (RSS, from /proc/self/statm), sampled by the `progress` callback at the mark
  (generation 1,000, or 20 % of the run) and at the last generation: its growth in percent
  (target <= 5 %), and in bytes per generation and replicate. The run keeps every generation's
  metric arrays for the tables it returns, so some growth is by design: compare the per
  generation and replicate figure with the bytes a record holds (5 metrics + train size +
  provenance counts, 8 bytes each).

Each run has an interpreter of its own (so its RSS is not what an earlier run left allocated).

Usage: python benchmarks/soak.py [--generations 10000] [--replicates 200]
       [--sample-generations 1000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from madloop.experiment import run


def config(mode: str, generations: int, replicates: int, *, dim: int = 10, n: int = 100) -> dict:
    """The fully synthetic Gaussian loop of examples/fully-synthetic.toml, sized for a soak."""
    return {
        "name": f"soak-{mode}",
        "seed": 1,
        "generations": generations,
        "replicates": replicates,
        "data": {"source": "gaussian", "dim": dim, "mean": 0.0, "covariance": "identity"},
        "model": {"family": "gaussian", "mode": mode, "covariance_estimator": "unbiased"},
        "sampling": {"bias": 1.0},
        "loop": {"regime": "fully-synthetic", "real_size": 0, "synthetic_size": n},
    }


def rss_bytes() -> int:
    """The resident set size now (not the peak): /proc/self/statm, else getrusage's peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Soak:
    mode: str
    generations: int
    replicates: int
    wall_s: float
    cpu_s: float
    nonfinite: dict[str, int]
    first_nonfinite: dict[str, int]  # metric -> the first generation with a non-finite value
    log_det_mean: float
    log_det_theory: float
    log_det_se: float
    rss_mark: int
    rss_end: int
    mark: int
    load: tuple[float, float, float]

    @property
    def log_det_z(self) -> float:
        """(mean - theory) / standard error at the last generation."""
        return (self.log_det_mean - self.log_det_theory) / self.log_det_se

    @property
    def rss_growth(self) -> float:
        """RSS growth between the mark and the end, in percent."""
        return 100.0 * (self.rss_end - self.rss_mark) / self.rss_mark

    @property
    def bytes_per_generation_replicate(self) -> float:
        done = self.generations - self.mark
        return (self.rss_end - self.rss_mark) / max(done * self.replicates, 1)


def soak(mode: str, generations: int, replicates: int, *, mark: int | None = None) -> Soak:
    """One run; RSS is sampled at generation ``mark`` (default: 1,000, or 20 % of a shorter run)
    and at the last generation."""
    mark = mark or min(1000, max(1, generations // 5))
    rss: dict[int, int] = {}

    def progress(arm: str, generation: int, total: int) -> None:
        if generation in (mark, total):
            rss[generation] = rss_bytes()

    t0, c0 = time.perf_counter(), time.process_time()
    res = run(config(mode, generations, replicates), progress=progress)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    values = res.metrics
    bad = values[~np.isfinite(values.value.to_numpy())]
    nonfinite = {m: int((bad.metric == m).sum()) for m in sorted(values.metric.unique())}
    first = {str(m): int(g) for m, g in bad.groupby("metric").generation.min().items()}
    last = res.summary[
        (res.summary.generation == generations) & (res.summary.metric == "log_det_change")
    ].iloc[0]
    return Soak(
        mode,
        generations,
        replicates,
        wall,
        cpu,
        nonfinite,
        first,
        float(last["mean"]),
        float(last["theory"]),
        float(last["std_error"]),
        rss[mark],
        rss[generations],
        mark,
        os.getloadavg(),
    )


def show(s: Soak) -> str:
    mib = 2**20
    load = ", ".join(f"{x:.2f}" for x in s.load)
    lines = [
        f"## {s.mode}: {s.generations:,} generations x {s.replicates} replicates, d = 10, n = 100",
        f"wall time            {s.wall_s:8.1f} s   (CPU {s.cpu_s:.1f} s; load average {load})",
        "non-finite values    "
        + ", ".join(f"{m} {k}" for m, k in s.nonfinite.items())
        + f"   (of {s.generations * s.replicates:,} each)"
        + "".join(f"; {m} from generation {g:,}" for m, g in s.first_nonfinite.items()),
        f"log det, last gen.   mean {s.log_det_mean:.3f}, theory {s.log_det_theory:.3f}, "
        f"SE {s.log_det_se:.3f}: {s.log_det_z:+.2f} SE",
        f"RSS                  {s.rss_mark / mib:.1f} MiB at generation {s.mark:,}, "
        f"{s.rss_end / mib:.1f} MiB at the end: {s.rss_growth:+.1f} % "
        f"({s.bytes_per_generation_replicate:.1f} bytes per generation and replicate)",
    ]
    return "\n".join(lines)


def soak_in_subprocess(
    mode: str, generations: int, replicates: int, *, mark: int | None = None
) -> Soak:
    """:func:`soak` in a fresh interpreter, so that its RSS is its own (not what an earlier run
    in this process left allocated)."""
    cmd = [sys.executable, __file__, "--one", mode, str(generations), str(replicates)]
    cmd += [str(mark or 0)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    fields["load"] = tuple(fields["load"])
    return Soak(**fields)


def main(argv: list[str] | None = None) -> list[Soak]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generations", type=int, default=10_000)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--sample-generations", type=int, default=1_000)
    p.add_argument("--quick", action="store_true", help="1,000 / 100 generations")
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # MODE T R MARK: one run, as JSON
    a = p.parse_args(argv)
    if a.one:
        mode, gens, reps, mark = a.one
        s = soak(mode, int(gens), int(reps), mark=int(mark) or None)
        print(json.dumps(dataclasses.asdict(s)))
        return [s]
    if a.quick:
        a.generations, a.sample_generations = 1_000, 100
    out: list[Soak] = []
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for mode, gens in (("exact", a.generations), ("sample", a.sample_generations)):
        out.append(soak_in_subprocess(mode, gens, a.replicates))
        print(show(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    main()
