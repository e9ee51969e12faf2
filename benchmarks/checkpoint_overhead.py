"""What checkpointing costs: the same runs without a run directory, and with one checkpointed
after every generation, every 10th and at the default (timed) cadence, timed in one process,
best of 3, and the ratios printed (a run directory also writes its tables).

    .venv/bin/python benchmarks/checkpoint_overhead.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from madloop.config import parse
from madloop.experiment import run

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "flagship (exact, 4 arms x 50 gens x 200 reps)": str(ROOT / "examples" / "mad-gaussian.toml"),
    "sample mode (d=10, 2,000 pts, 50 gens x 20 reps)": {
        "generations": 50,
        "replicates": 20,
        "data": {"source": "gaussian", "dim": 10},
        "model": {"family": "gaussian", "mode": "sample"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 2000},
    },
}


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    try:
        counter = iter(range(10**6))
        for name, cfg in CASES.items():
            plain = best(lambda cfg=cfg: run(cfg))

            def with_dir(cfg=cfg, **kw) -> float:
                return best(lambda: run(cfg, out=tmp / f"{next(counter)}", **kw))

            every = with_dir(checkpoint_every=1)
            tenth = with_dir(checkpoint_every=10)
            timed = with_dir()  # the default cadence
            _, arms = parse(cfg)
            gens = sum(a.config.generations for a in arms)
            print(
                f"{name}: no run directory {plain:.3f} s | every generation {every:.3f} s "
                f"(x{every / plain:.2f}, {1000 * (every - plain) / gens:.2f} ms per checkpoint) | "
                f"every 10th {tenth:.3f} s (x{tenth / plain:.2f}) | "
                f"default (timed) {timed:.3f} s (x{timed / plain:.2f})"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
