"""Speed of the Gaussian loop: madloop's `exact` and `sample` modes against a straightforward loop.

The reference is the loop published experiment scripts write: Python loops over replicates and
generations, `rng.multivariate_normal` to sample, `np.mean` / `np.cov` to refit. Everything is
measured in this one run on this machine, so the printed ratios compare like with like:

- "bare": the fully synthetic loop only (sample -> refit), no metrics, for the reference and for
  madloop (`Loop.step` with the metric suites switched off);
- "with metrics": madloop's `Loop` as `madloop run` drives it, computing all five metrics
  (mean_error_sq, trace_ratio, log_det_change, wasserstein2, kl_divergence) for every replicate
  and generation; the reference computes the same five with numpy/scipy per replicate.
- the floor of `sample`: drawing the R·n·d·T standard normals it needs, nothing else; the floor
  of `exact`: drawing its R·T·(d(d+1)/2 normals + d chi-squares), one generator per generation.
- `exact` at n = 1,000,000 against n = 100: a generation's cost does not depend on n.
- "flat": the same arithmetic as madloop's bare loop (`draw_stats`, `stats_from_points`, the
  covariance scaling, the finiteness check) in one flat Python loop, without `Loop`, the model
  object, the regime or the records: what the loop's structure costs is the gap between the two,
  and the flat loop against the floor is what the arithmetic itself costs on this machine.

Usage: python benchmarks/gaussian_loop.py [--rounds 3] [--quick]
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
from madloop.linalg import draw_stats, stats_from_points  # noqa: E402
from madloop.loop import Loop  # noqa: E402
from madloop.models.gaussian import GaussianFamily  # noqa: E402
from madloop.regimes import FullySynthetic  # noqa: E402
from madloop.types import Frame  # noqa: E402


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


def madloop_loop(d: int, n: int, T: int, R: int, seed: int, *, exact: bool) -> GaussianFamily:
    real = GaussianSource(np.zeros(d), np.eye(d))
    model = GaussianFamily(R)
    loop = Loop(FullySynthetic(synthetic_size=n), model, real, replicates=R, exact=exact, seed=seed)
    for _ in loop.run(T):
        pass
    return model


def flat_loop(d: int, n: int, T: int, R: int, seed: int, *, exact: bool) -> tuple:
    """The bare loop's arithmetic in one flat Python loop: per generation its generator, then
    for `exact` the mean and Bartlett-factored scatter (`draw_stats`), for `sample` the draws in
    the model's frame, their statistics (`stats_from_points`) mapped back to the global frame;
    then the unbiased scaling and the finiteness check. Returns (mean, factor): the same numbers
    as the loop's model, bit for bit."""
    mean, factor = np.zeros((R, d)), np.broadcast_to(np.eye(d), (R, d, d)).copy()
    scale = np.float64(1.0 / np.sqrt(n - 1))
    for t in range(1, T + 1):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, t, 0)))
        if exact:
            mean, scatter = draw_stats(mean, factor, n, rng)
        else:
            local_mean, local_factor = stats_from_points(rng.standard_normal((R, n, d)))
            mean = Frame(mean, factor).to_global(local_mean[:, None, :])[:, 0, :]
            scatter = factor @ local_factor
        factor = scatter * scale
        np.isfinite(mean).all() and np.isfinite(factor).all()
    return mean, factor


def floor(d: int, n: int, T: int, R: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(T):
        rng.standard_normal((R, n, d))


def floor_exact(d: int, n: int, T: int, R: int, seed: int) -> None:
    """The random numbers `exact` needs, nothing else: per generation, for each replicate, d
    normals (the mean), d(d-1)/2 normals and d chi-squares (the Bartlett factor of the Wishart)."""
    for t in range(T):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, t, 0)))
        rng.standard_normal((R, d + d * (d - 1) // 2))
        rng.standard_gamma((n - 1 - np.arange(d)) / 2.0, size=(R, d))


def measure(variants: dict, rounds: int) -> dict[str, float]:
    """Best CPU time of each variant over ``rounds`` rounds, the variants interleaved within a
    round. CPU time (``time.process_time``; every variant runs on one thread) rather than wall
    time, so other processes on a shared machine do not count against whichever variant they
    happen to overlap."""
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="best of N interleaved rounds")
    ap.add_argument("--quick", action="store_true", help="T = 20 instead of 100")
    args = ap.parse_args()
    d, n, R = 10, 100, 200
    T = 20 if args.quick else 100
    big = 1_000_000
    print(
        f"fully synthetic Gaussian loop: d={d}, n={n}, T={T}, R={R}; best CPU time of "
        f"{args.rounds} interleaved rounds, 1 thread"
    )
    print(f"numpy {np.__version__}, scipy {scipy.__version__}")

    def bare(fn):
        def run():
            with metrics_off():
                fn()

        return run

    with metrics_off():  # like with like: the flat loops compute the loop's own numbers
        for exact in (True, False):
            model = madloop_loop(d, n, 5, 20, 0, exact=exact)
            mean, factor = flat_loop(d, n, 5, 20, 0, exact=exact)
            same = np.array_equal(model.mean_, mean) and np.array_equal(model.cov_factor_, factor)
            if not same:
                mode = "exact" if exact else "sample"
                raise SystemExit(f"the flat {mode} loop no longer computes the loop's numbers")
    print("the flat loops give the loop's numbers bit for bit (checked at T = 5, R = 20)")

    variants = {
        "ref_bare": lambda: reference_loop(d, n, T, R, 0, metrics=False),
        "ref_full": lambda: reference_loop(d, n, T, R, 0, metrics=True),
        "floor": lambda: floor(d, n, T, R, 0),
        "floor_exact": lambda: floor_exact(d, n, T, R, 0),
        "flat_sample": lambda: flat_loop(d, n, T, R, 0, exact=False),
        "flat_exact": lambda: flat_loop(d, n, T, R, 0, exact=True),
        "sample_bare": bare(lambda: madloop_loop(d, n, T, R, 0, exact=False)),
        "exact_bare": bare(lambda: madloop_loop(d, n, T, R, 0, exact=True)),
        "exact_big_bare": bare(lambda: madloop_loop(d, big, T, R, 0, exact=True)),
        "sample_full": lambda: madloop_loop(d, n, T, R, 0, exact=False),
        "exact_full": lambda: madloop_loop(d, n, T, R, 0, exact=True),
        "exact_big_full": lambda: madloop_loop(d, big, T, R, 0, exact=True),
    }
    t = measure(variants, args.rounds)
    # per-generation Python and seeding costs are fixed; with more replicates they amortise
    R2, T2 = 2000, 20
    scaling = {
        "ref_bare_R2": lambda: reference_loop(d, n, T2, R2, 0, metrics=False),
        "floor_exact_R2": lambda: floor_exact(d, n, T2, R2, 0),
        "exact_bare_R2": bare(lambda: madloop_loop(d, n, T2, R2, 0, exact=True)),
    }
    if not args.quick:
        t.update(measure(scaling, args.rounds))

    def row(name: str, s: float, ref: float, extra: str = "") -> None:
        print(f"  {name:<44s} {s:8.4f} s {ref / s:8.1f}x  {extra}")

    fs, flat_s = t["sample_bare"] / t["floor"], t["flat_sample"] / t["floor"]
    fe, flat_e = t["exact_bare"] / t["floor_exact"], t["flat_exact"] / t["floor_exact"]
    print("\nbare loop (sample -> refit, no metrics)            time   vs reference")
    row("reference (multivariate_normal + np.cov)", t["ref_bare"], t["ref_bare"])
    row("floor: draw the R*n*d*T normals only", t["floor"], t["ref_bare"])
    row("madloop sample", t["sample_bare"], t["ref_bare"], f"({fs:.2f}x the floor)")
    row(
        "  the same arithmetic, flat loop",
        t["flat_sample"],
        t["ref_bare"],
        f"({flat_s:.2f}x the floor)",
    )
    row("floor of exact: its random numbers only", t["floor_exact"], t["ref_bare"])
    row("madloop exact, n = 100", t["exact_bare"], t["ref_bare"], f"({fe:.2f}x its floor)")
    row(
        "  the same arithmetic, flat loop",
        t["flat_exact"],
        t["ref_bare"],
        f"({flat_e:.2f}x its floor)",
    )
    row(
        "madloop exact, n = 1,000,000",
        t["exact_big_bare"],
        t["ref_bare"],
        f"({t['exact_big_bare'] / t['exact_bare']:.2f}x exact at n = 100)",
    )
    print("\nwith the five metrics at every generation and replicate")
    row("reference (+ the same metrics, numpy/scipy)", t["ref_full"], t["ref_full"])
    row(
        "madloop sample",
        t["sample_full"],
        t["ref_full"],
        f"({t['sample_full'] / t['floor']:.2f}x the floor)",
    )
    row("madloop exact, n = 100", t["exact_full"], t["ref_full"])
    row(
        "madloop exact, n = 1,000,000",
        t["exact_big_full"],
        t["ref_full"],
        f"({t['exact_big_full'] / t['exact_full']:.2f}x exact at n = 100)",
    )

    if not args.quick:
        print(f"\nmore replicates: d={d}, n={n}, T={T2}, R={R2} (bare loop)")
        ref2 = t["ref_bare_R2"]
        row("reference (multivariate_normal + np.cov)", ref2, ref2)
        row("floor of exact: its random numbers only", t["floor_exact_R2"], ref2)
        fe2 = t["exact_bare_R2"] / t["floor_exact_R2"]
        row("madloop exact, n = 100", t["exact_bare_R2"], ref2, f"({fe2:.2f}x its floor)")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    s_b, e_b = t["ref_bare"] / t["sample_bare"], t["ref_bare"] / t["exact_bare"]
    big_b = t["exact_big_bare"] / t["exact_bare"]
    print("\ntargets (bare loop, like with like):")
    print(
        f"  sample >= 10x the reference:  {s_b:6.1f}x  {verdict(s_b >= 10)}"
        f"   (the floor itself is {t['ref_bare'] / t['floor']:.1f}x)"
    )
    print(
        f"  exact >= 100x the reference:  {e_b:6.1f}x  {verdict(e_b >= 100)}"
        f"   (its floor itself is {t['ref_bare'] / t['floor_exact']:.1f}x)"
    )
    print(f"  exact n=1e6 <= 1.5x n=100:    {big_b:6.2f}x  {verdict(big_b <= 1.5)}")
    print("targets (bare loop against its random-number floor):")
    print(
        f"  sample <= 1.3x its floor:      {fs:6.2f}x  {verdict(fs <= 1.3)}"
        f"   (the same arithmetic in a flat loop: {flat_s:.2f}x)"
    )
    print(
        f"  exact <= 1.5x its floor:       {fe:6.2f}x  {verdict(fe <= 1.5)}"
        f"   (the same arithmetic in a flat loop: {flat_e:.2f}x)"
    )


if __name__ == "__main__":
    main()
