"""Check that the vectorised ``madloop.tables.summarize`` gives the bits of the pandas one.

The reference is ``summarize`` as it was at REV (a groupby with Python lambdas for the standard
error and the quantiles). Both run on the metric tables of short runs of the example configs and
on edge cases (stopped chains, ±inf, n = 1, all-NaN groups, groups of unequal size, NaN keys,
empty); in the reference's columns (those added since, the interval of the mean and the bias
text, are not in it), the frames must be equal and their CSVs byte-identical, and so must the
run's written summary.csv read back.

Usage: python benchmarks/summary_equality.py [--rev 948b5b9] [--generations 5]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import madloop
from madloop.tables import summarize

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "accumulate-subsample",
    "accumulate",
    "fresh-data-phase",
    "fresh-data",
    "fully-synthetic",
    "mad-gaussian",
    "synthetic-augmentation",
    "text-ngram",
    "web-pool",
    "wright-fisher",
]


def reference(rev: str) -> types.ModuleType:
    src = subprocess.run(
        ["git", "show", f"{rev}:src/madloop/tables.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mod = types.ModuleType("old_tables")
    exec(compile(src, "old_tables.py", "exec"), mod.__dict__)
    return mod


def edge_cases() -> dict[str, tuple[pd.DataFrame, dict]]:
    rng = np.random.default_rng(0)
    rows = []
    for arm in ("a", "b"):
        for g in range(1, 6):
            for metric in ("m1", "m2"):
                for r in range(7):
                    rows.append((arm, g, r, metric, float(rng.standard_normal() * 1e3)))
    base = pd.DataFrame(rows, columns=["arm", "generation", "replicate", "metric", "value"])
    cases: dict[str, tuple[pd.DataFrame, dict]] = {"plain": (base, {})}
    stopped = base.copy()
    stopped.loc[(stopped.replicate == 2) & (stopped.generation >= 3), "value"] = np.nan
    stopped.loc[(stopped.arm == "b") & (stopped.generation == 5), "value"] = np.nan  # all NaN
    one = (stopped.arm == "a") & (stopped.generation == 4) & (stopped.replicate > 0)
    stopped.loc[one, "value"] = np.nan  # n = 1
    cases["nan-chains"] = (stopped, {})
    inf = base.copy()
    inf.loc[(inf.replicate == 1) & (inf.generation == 2), "value"] = -np.inf
    inf.loc[(inf.replicate == 3) & (inf.generation == 3), "value"] = np.inf
    inf.loc[(inf.replicate >= 3) & (inf.generation == 4), "value"] = np.inf
    inf.loc[(inf.replicate == 0) & (inf.generation == 4), "value"] = -np.inf
    inf.loc[(inf.replicate == 2) & (inf.generation == 5), "value"] = np.nan
    cases["inf"] = (inf, {})
    cases["n=1"] = (base[base.replicate == 0], {})
    uneven = base[~((base.generation == 2) & (base.replicate > 3))]
    cases["uneven"] = (uneven.sample(frac=1.0, random_state=1), {})
    keyed = base.copy()
    keyed["seed"] = keyed.replicate % 3
    keyed.loc[keyed.index[:5], "arm"] = None
    cases["nan-keys"] = (keyed, {"keys": ("arm", "generation", "metric")})
    cases["other-keys"] = (keyed, {"keys": ("seed", "metric")})
    cases["empty"] = (base.iloc[:0], {})
    big = rng.standard_normal(200 * 300) * 1e-3 + 1e6
    cases["large-offset"] = (
        pd.DataFrame(
            {
                "arm": "x",
                "generation": np.repeat(np.arange(300), 200),
                "replicate": np.tile(np.arange(200), 300),
                "metric": "m",
                "value": big,
            }
        ),
        {},
    )
    return cases


def shared(reference: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``new`` in the reference's columns: columns added since REV (the interval of the mean,
    ``ci_low`` / ``ci_high``; the run's ``bias`` text) are not in the reference to compare."""
    missing = [c for c in reference.columns if c not in new.columns]
    if missing:
        raise SystemExit(f"the new summary lacks the reference's columns {missing}")
    return new[list(reference.columns)]


def compare(name: str, old, frame: pd.DataFrame, theory=None, **kw) -> bool:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        a = old.summarize(frame, theory, **kw)
        t1 = time.perf_counter()
        b = summarize(frame, theory, **kw)
        t2 = time.perf_counter()
    b = shared(a, b)
    same_csv = a.to_csv(index=False) == b.to_csv(index=False)
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        same_frame = True
    except AssertionError as e:
        same_frame = False
        print(e)
    ok = same_csv and same_frame
    print(
        f"  {name:<28s} rows {len(frame):>8d}  csv {'same' if same_csv else 'DIFFERENT'}, "
        f"frame {'same' if same_frame else 'DIFFERENT'}; old {t1 - t0:.4f} s, new {t2 - t1:.4f} s"
    )
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="948b5b9")
    ap.add_argument("--generations", type=int, default=5)
    args = ap.parse_args()
    old = reference(args.rev)
    ok = True
    print("edge cases")
    for name, (frame, kw) in edge_cases().items():
        ok &= compare(name, old, frame, **kw)
    print(f"example configs ({args.generations} generations)")
    from madloop.config import parse
    from madloop.experiment import theory_frame

    tmp = Path(tempfile.mkdtemp(prefix="madloop-summary-"))
    for ex in FAST:
        path = ROOT / "examples" / f"{ex}.toml"
        res = madloop.run(path, generations=args.generations, out=tmp / ex)
        _, arms = parse(path, generations=args.generations)
        ok &= compare(ex, old, res.metrics, theory_frame(arms))
        ref = old.summarize(res.metrics, theory_frame(arms))
        written = shared(ref, pd.read_csv(tmp / ex / "summary.csv")).to_csv(index=False)
        if written != pd.read_csv(io.StringIO(ref.to_csv(index=False))).to_csv(index=False):
            ok = False
            print(f"  {ex}: summary.csv differs from the reference's")
    print("all equal" if ok else "DIFFERENCES FOUND")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
