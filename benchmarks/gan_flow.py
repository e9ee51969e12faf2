"""Seconds per generation of the gan and flow families on 2-D data at their default sizes.

One generation = fit on the training set + draw the next one (the loop's work per chain). Data:
a ring of 8 Gaussians (radius 2, sd 0.2), 1,000 points, fully synthetic for a few generations.
CPU seconds are printed beside wall seconds because the machine may be shared (with one torch
thread, CPU time is the work done, whatever else runs). Also prints what the bias does at
generation 1: the share of samples within 3 sd of a mode (quality), the modes holding >= 2% of the
samples (diversity) and the total variance.

    .venv/bin/python benchmarks/gan_flow.py [--generations 3] [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from madloop.models.flow import FlowConfig, FlowModel
from madloop.models.gan import GANConfig, GANModel

K, RADIUS, SD, N = 8, 2.0, 0.2, 1000
CENTRES = RADIUS * np.stack(
    [np.cos(2 * np.pi * np.arange(K) / K), np.sin(2 * np.pi * np.arange(K) / K)], axis=1
)


def ring(n: int, rng: np.random.Generator) -> np.ndarray:
    label = rng.integers(K, size=n)
    return CENTRES[label] + SD * rng.standard_normal((n, 2))


def quality(S: np.ndarray) -> tuple[float, int, float]:
    dist = np.linalg.norm(S[:, None, :] - CENTRES[None], axis=2)  # (n, K)
    near = dist.min(axis=1) < 3 * SD
    counts = np.bincount(dist.argmin(axis=1)[near], minlength=K)
    return float(near.mean()), int((counts >= 0.02 * len(S)).sum()), float(np.trace(np.cov(S.T)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    makers = {
        "flow": lambda: FlowModel(FlowConfig(device=args.device)),
        "gan (wgan-gp)": lambda: GANModel(GANConfig(device=args.device)),
        "gan (hinge)": lambda: GANModel(
            GANConfig(device=args.device, loss="hinge", critic_steps=1)
        ),
    }
    root = np.random.SeedSequence(0)
    print(
        f"torch {torch.__version__}, threads {args.threads}, device {args.device}; ring of 8, n={N}"
    )
    seconds = {}
    for (name, make), seed in zip(makers.items(), root.spawn(len(makers)), strict=True):
        rng = np.random.default_rng(seed)
        X = ring(N, rng)
        model = make()
        per_gen, cpu = [], []
        for t in range(1, args.generations + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(X, rng=rng)
            X = model.sample(N, bias=1.0, rng=rng)
            per_gen.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            hq, modes, tr = quality(X)
            print(
                f"  {name:14s} gen {t}: {per_gen[-1]:6.2f} s ({cpu[-1]:5.2f} s CPU)  quality "
                f"{hq:.3f}  modes {modes}  tr {tr:.2f}"
            )
            if t == 1:
                for bias in (0.7, 0.4):
                    hq, modes, tr = quality(model.sample(5000, bias=bias, rng=rng))
                    print(f"  {'':14s} bias {bias}: quality {hq:.3f}  modes {modes}  tr {tr:.2f}")
        seconds[name] = (float(np.mean(per_gen)), float(np.mean(cpu)))
    print("\nseconds per generation (mean wall, CPU), and CPU ratio to the flow:")
    for name, (wall, c) in seconds.items():
        print(f"  {name:14s} {wall:6.2f} s  {c:6.2f} s CPU   x{c / seconds['flow'][1]:.2f}")
    print(f"  (the real ring's tr = {RADIUS**2 + 2 * SD**2:.2f}; quality of real data = 0.989)")


if __name__ == "__main__":
    main()
