"""Seconds per generation of the torch families on digits (8x8 images) and on the 2-D grid.

Each row runs a few generations of one fully synthetic arm (one replicate) with the settings of
``examples/mad-digits.toml`` / ``examples/mad-ddpm-2d.toml`` and reports the mean seconds per
generation (fit + the next generation's samples + metrics), and for digits the projected time of a
10-generation loop against the 10-minute target. Families another package registers (gan, flow)
are measured too when present. Run:

    .venv/bin/python benchmarks/neural_loop.py [--threads 1] [--generations 2]
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from madloop.config import parse
from madloop.engines import build_loop
from madloop.models.base import load_families

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 600.0  # a 10-generation digits loop of one arm on 2 cores


def _base(path: str) -> dict:
    raw = tomllib.loads((ROOT / path).read_text())
    raw.pop("arms", None)
    return raw


SETUPS = {
    "digits": _base("examples/mad-digits.toml"),
    "grid-2d": _base("examples/mad-ddpm-2d.toml"),
}
# the same digits loop with the U-Net denoiser instead of the MLP
_unet = _base("examples/mad-digits.toml")
_unet["model"] = {**_unet["model"], "architecture": "unet", "channels": 16, "steps": 1000}
_unet["model"].pop("hidden")
SETUPS["digits-unet"] = _unet
# the family's own defaults with the step budget of the examples; guidance-free / τ = 1 sampling
FAMILY_MODEL = {
    "ddpm": None,  # as in the example
    "vae": {"family": "vae", "steps": 1500, "batch_size": 128, "learning_rate": 1e-3},
}
NEUTRAL_BIAS = {"ddpm": 0.0, "vae": 1.0, "gan": 1.0, "flow": 1.0}


def seconds_per_generation(raw: dict, generations: int, threads: int) -> float:
    raw = {**raw, "generations": generations, "replicates": 1, "seed": 0}
    raw["model"] = {**raw["model"], "threads": threads}
    _, arms = parse(raw)
    loop = build_loop(arms[0])
    times = []
    for _ in range(generations):
        t0 = time.perf_counter()
        loop.step()
        times.append(time.perf_counter() - t0)
    return float(np.mean(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--families", nargs="*", default=None)
    args = ap.parse_args()
    families = args.families or [f for f in ("ddpm", "vae", "gan", "flow") if f in load_families()]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}, torch threads: {args.threads}, generations timed: {args.generations}")
    print(f"{'data':<11} {'family':<6} {'s/generation':>13} {'10 generations':>15}  target")
    for data, base in SETUPS.items():
        for family in families:
            raw = dict(base)
            if family != "ddpm" and data == "digits-unet":
                continue  # the U-Net row is the ddpm's alone
            if family != "ddpm" or base["model"]["family"] != "ddpm":
                model = FAMILY_MODEL.get(family) or {"family": family}
                raw["model"] = dict(model)
                raw["sampling"] = {"bias": NEUTRAL_BIAS.get(family, 1.0)}
            else:
                raw["sampling"] = {"bias": 0.0}
            try:
                sec = seconds_per_generation(raw, args.generations, args.threads)
            except Exception as err:  # a family may not support this data; report, go on
                print(f"{data:<11} {family:<6} {'n/a':>13}  ({type(err).__name__}: {err})")
                continue
            ten = 10 * sec
            verdict = ("ok" if ten <= TARGET_S else "over") if data.startswith("digits") else ""
            print(f"{data:<11} {family:<6} {sec:>13.1f} {ten:>14.0f}s  {verdict}", flush=True)


if __name__ == "__main__":
    main()
