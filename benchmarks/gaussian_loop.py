"""Speed of the Gaussian loop: madloop's `exact` and `sample` modes against a straightforward loop.

The reference is the loop published experiment scripts write: Python loops over replicates and
generations, `rng.multivariate_normal` to sample, `np.mean` / `np.cov` to refit. Everything is
measured in this one run on this machine, so the printed ratios compare like with like:

- "bare": the fully synthetic loop only (sample -> refit), no metrics, for the reference and for
  madloop (`Loop.step` with the metric suites switched off);
- "with metrics": madloop's `Loop` as `madloop run` drives it, computing all five metrics
  (mean_error_sq, trace_ratio, log_det_change, wasserstein2, kl_divergence) for every replicate
  and generation; the reference computes the same five with numpy/scipy per replicate.
- the floor of `sample`: drawing the R·n·d·T standard normals it needs, nothing else.
- `exact` at n = 1,000,000 against n = 100: a generation's cost does not depend on n.

Usage: python benchmarks/gaussian_loop.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, like the reference
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402

import madloop.loop as loop_module  # noqa: E402
from madloop.data.gaussian import GaussianSource  # noqa: E402
from madloop.loop import Loop  # noqa: E402
from madloop.models.gaussian import GaussianFamily  # noqa: E402
from madloop.regimes import FullySynthetic  # noqa: E402


def reference_loop(d: int, n: int, T: int, R: int, seed: int, metrics: bool) -> np.ndarray:
    """The straightforward fully synthetic loop: per replicate, per generation, sample + refit."""
    rng = np.random.default_rng(seed)
    mu0, cov0 = np.zeros(d), np.eye(d)
    out = np.zeros((R, T))
    root0 = scipy.linalg.sqrtm(cov0).real
    for r in range(R):
        mu, cov = mu0, cov0
        for t in range(T):
            X = rng.multivariate_normal(mu, cov, size=n)
            mu, cov = X.mean(axis=0), np.cov(X, rowvar=False)
            if metrics:
                diff = mu - mu0
                out[r, t] = diff @ diff  # mean_error_sq
                np.trace(cov) / np.trace(cov0)  # trace_ratio
                _, ld = np.linalg.slogdet(cov)  # log_det_change
                cross = scipy.linalg.sqrtm(root0 @ cov @ root0).real
                np.sqrt(max(diff @ diff + np.trace(cov + cov0 - 2 * cross), 0.0))  # W2
                inv = np.linalg.inv(cov)  # KL(N0 || Nt)
                0.5 * (np.trace(inv @ cov0) + diff @ inv @ diff - d + ld)
            else:
                out[r, t] = mu[0]
    return out


@contextmanager
def metrics_off():
    """Time the bare loop: Loop.step without metric suites."""
    saved = loop_module.evaluate
    loop_module.evaluate = lambda *a, **k: {}
    try:
        yield
    finally:
        loop_module.evaluate = saved


def madloop_loop(d: int, n: int, T: int, R: int, seed: int, *, exact: bool) -> None:
    real = GaussianSource(np.zeros(d), np.eye(d))
    model = GaussianFamily(R)
    loop = Loop(FullySynthetic(synthetic_size=n), model, real, replicates=R, exact=exact, seed=seed)
    for _ in loop.run(T):
        pass


def floor(d: int, n: int, T: int, R: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(T):
        rng.standard_normal((R, n, d))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="best of N (the reference runs once)")
    ap.add_argument("--quick", action="store_true", help="T = 20 instead of 100")
    args = ap.parse_args()
    d, n, R = 10, 100, 200
    T = 20 if args.quick else 100
    rep = args.repeats
    print(f"fully synthetic Gaussian loop: d={d}, n={n}, T={T}, R={R}; best of {rep}, 1 thread")
    print(f"numpy {np.__version__}")

    ref_bare = best_of(lambda: reference_loop(d, n, T, R, 0, metrics=False), 1)
    ref_full = best_of(lambda: reference_loop(d, n, T, R, 0, metrics=True), 1)
    fl = best_of(lambda: floor(d, n, T, R, 0), rep)
    with metrics_off():
        sample_bare = best_of(lambda: madloop_loop(d, n, T, R, 0, exact=False), rep)
        exact_bare = best_of(lambda: madloop_loop(d, n, T, R, 0, exact=True), rep)
        exact_big_bare = best_of(lambda: madloop_loop(d, 1_000_000, T, R, 0, exact=True), rep)
    sample_full = best_of(lambda: madloop_loop(d, n, T, R, 0, exact=False), rep)
    exact_full = best_of(lambda: madloop_loop(d, n, T, R, 0, exact=True), rep)
    exact_big_full = best_of(lambda: madloop_loop(d, 1_000_000, T, R, 0, exact=True), rep)

    def row(name: str, s: float, ref: float | None = None, extra: str = "") -> None:
        ratio = f"{ref / s:8.1f}x" if ref else " " * 9
        print(f"  {name:<44s} {s:8.3f} s  {ratio} {extra}")

    print("\nbare loop (sample -> refit, no metrics)            time    vs reference")
    row("reference (multivariate_normal + np.cov)", ref_bare, ref_bare)
    row("floor: draw R*n*d*T normals", fl, ref_bare)
    row("madloop sample", sample_bare, ref_bare, f"({sample_bare / fl:.2f}x the floor)")
    row("madloop exact, n = 100", exact_bare, ref_bare)
    row(
        "madloop exact, n = 1,000,000",
        exact_big_bare,
        ref_bare,
        f"({exact_big_bare / exact_bare:.2f}x exact at n = 100)",
    )
    print("\nwith the five metrics every generation and replicate")
    row("reference (+ numpy/scipy metrics)", ref_full, ref_full)
    row("madloop sample", sample_full, ref_full, f"({sample_full / fl:.2f}x the floor)")
    row("madloop exact, n = 100", exact_full, ref_full)
    row(
        "madloop exact, n = 1,000,000",
        exact_big_full,
        ref_full,
        f"({exact_big_full / exact_full:.2f}x exact at n = 100)",
    )
    print(
        "\ntargets: sample >= 10x, exact >= 100x the reference; exact(n=1e6) <= 1.5x exact(n=100)"
    )
    print(
        f"  sample bare {ref_bare / sample_bare:.1f}x, with metrics {ref_full / sample_full:.1f}x"
    )
    print(f"  exact  bare {ref_bare / exact_bare:.1f}x, with metrics {ref_full / exact_full:.1f}x")
    print(
        f"  exact n=1e6 / n=100: bare {exact_big_bare / exact_bare:.2f}x, "
        f"with metrics {exact_big_full / exact_full:.2f}x"
    )


if __name__ == "__main__":
    main()
