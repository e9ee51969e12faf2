"""Regimes compose training sets with the right counts per provenance, in both modes.

Provenance is (source, origin generation) -> count per replicate: real rows have origin 0, samples
of model t-1 have origin t-1. Sizes are ints or per-generation lists (the last value repeats), and
``initial_real_size`` sets generation 1's size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gaussian_helpers import make_loop, run_metrics
from madloop.experiment import run
from madloop.regimes import REGIMES, Composition, Draw, Kept, Regime, register_regime, size_at
from madloop.theory import gaussian as theory
from madloop.types import REAL, SYNTHETIC

R = 6
T = 6


def _expected(regime: str, t: int, sizes: dict) -> dict[tuple[int, int], int]:
    """Provenance of generation t's training set, written out from the issue's definitions."""
    reg = REGIMES[regime](**sizes)
    n_ini = reg.n_initial()
    if t == 1:
        return {(REAL, 0): n_ini}
    if regime == "fully-synthetic":
        return {(SYNTHETIC, t - 1): reg.n_synthetic(t)}
    if regime == "synthetic-augmentation":
        return {(REAL, 0): reg.n_real(1), (SYNTHETIC, t - 1): reg.n_synthetic(t)}
    if regime == "fresh-data":
        return {(REAL, 0): reg.n_real(t), (SYNTHETIC, t - 1): reg.n_synthetic(t)}
    if regime == "accumulate":
        out = {(REAL, 0): n_ini}
        out.update({(SYNTHETIC, s - 1): reg.n_synthetic(s) for s in range(2, t + 1)})
        return out
    raise AssertionError(regime)


def _clean(prov: dict) -> dict[tuple[int, int], np.ndarray]:
    return {k: np.asarray(v) for k, v in prov.items() if np.any(np.asarray(v) > 0)}


SIZES = {
    "fully-synthetic": [
        {"synthetic_size": 7},
        {"synthetic_size": [5, 9, 4], "initial_real_size": 11},
    ],
    "synthetic-augmentation": [
        {"real_size": 4, "synthetic_size": 6},
        {"real_size": [3, 8], "synthetic_size": [6, 2, 10], "initial_real_size": 12},
    ],
    "fresh-data": [
        {"real_size": 4, "synthetic_size": 6},
        {"real_size": [3, 8], "synthetic_size": [6, 2, 10], "initial_real_size": 12},
    ],
    "accumulate": [
        {"real_size": 0, "synthetic_size": 5},
        {"real_size": 2, "synthetic_size": [3, 7, 4], "initial_real_size": 9},
    ],
}


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "sample"])
@pytest.mark.parametrize(
    "regime,sizes",
    [(r, s) for r, cases in SIZES.items() for s in cases],
    ids=[f"{r}-{i}" for r, cases in SIZES.items() for i in range(len(cases))],
)
def test_provenance_counts(regime, sizes, exact):
    loop = make_loop(regime, dim=3, replicates=R, exact=exact, seed=3, **sizes)
    assert loop.exact == exact
    _, records = run_metrics(loop, T)
    for rec in records:
        want = _expected(regime, rec.generation, sizes)
        got = _clean(rec.provenance)
        assert set(got) == set(want), (rec.generation, got, want)
        for key, count in want.items():
            np.testing.assert_array_equal(got[key], np.full(R, count))
        np.testing.assert_array_equal(rec.train_size, np.full(R, sum(want.values())))
        assert rec.train_size[0] == loop.regime.training_size(rec.generation)


def test_accumulate_subsample_counts():
    """Each generation trains on n_r + n_s rows drawn uniformly without replacement from the whole
    pool: per-provenance counts vary by replicate, sum to the target, never exceed the pool's, and
    average to the hypergeometric expectation target * pool_count / pool_size."""
    sizes = {"real_size": 2, "synthetic_size": [3, 5], "initial_real_size": 6}
    reps = 3000
    loop = make_loop("accumulate-subsample", dim=2, replicates=reps, exact=True, seed=4, **sizes)
    assert not loop.exact  # exact cannot reproduce a subsample: it falls back to points
    _, records = run_metrics(loop, 5)
    reg = loop.regime
    assert _clean(records[0].provenance) == {(REAL, 0): records[0].provenance[(REAL, 0)]}
    np.testing.assert_array_equal(records[0].provenance[(REAL, 0)], 6)
    for rec in records[1:]:
        t = rec.generation
        pool = _expected("accumulate", t, sizes)
        pool_size = sum(pool.values())
        target = reg.n_real(t) + reg.n_synthetic(t)
        np.testing.assert_array_equal(rec.train_size, target)
        got = _clean(rec.provenance)
        assert set(got) <= set(pool)
        total = sum(got.values())
        np.testing.assert_array_equal(total, np.full(reps, target))
        for key, count in pool.items():
            c = got.get(key, np.zeros(reps))
            assert c.max() <= count
            expected = target * count / pool_size
            se = c.std(ddof=1) / np.sqrt(reps) + 1e-12
            assert abs(c.mean() - expected) <= 4 * se + 1e-9, (t, key, c.mean(), expected)
        assert len(np.unique(got[(REAL, 0)])) > 1  # genuinely random per replicate
    # the pool itself keeps every row
    assert loop.kept["pool"].size == sum(_expected("accumulate", 5, sizes).values())


def test_size_lists_repeat_last_value():
    assert [size_at([5, 9, 4], t) for t in range(1, 7)] == [5, 9, 4, 4, 4, 4]
    assert size_at(7, 100) == 7


def test_first_generation_is_unbiased_real_data():
    """Generation 1 is fitted on real draws without bias, whatever λ: E[trace_ratio_1] = 1."""
    loop = make_loop(
        "fully-synthetic", dim=3, replicates=4000, exact=True, bias=0.3, synthetic_size=10, seed=8
    )
    metrics, records = run_metrics(loop, 2)
    x = metrics["trace_ratio"][0]
    assert abs(x.mean() - 1.0) < 4 * x.std() / np.sqrt(x.size)
    y = metrics["trace_ratio"][1]  # generation 2: samples of generation 1 drawn with λ = 0.3
    assert abs(y.mean() - 0.3) < 4 * y.std() / np.sqrt(y.size)
    assert set(_clean(records[0].provenance)) == {(REAL, 0)}


def test_provenance_csv_per_regime(tmp_path):
    """The run directory's provenance.csv lists the same make-up, one row per provenance."""
    config = {
        "name": "prov",
        "seed": 1,
        "generations": 4,
        "replicates": 3,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "gaussian", "mode": "exact"},
        "loop": {
            "regime": "accumulate",
            "real_size": 0,
            "synthetic_size": [3, 5],
            "initial_real_size": 4,
        },
        "arms": [
            {"name": "aug", "loop.regime": "synthetic-augmentation", "loop.real_size": 2},
            {"name": "fresh", "loop.regime": "fresh-data", "loop.real_size": 2},
            {"name": "sub", "loop.regime": "accumulate-subsample", "loop.real_size": 1},
        ],
    }
    res = run(config, out=tmp_path)
    prov = pd.read_csv(tmp_path / "provenance.csv")
    pd.testing.assert_frame_equal(prov, res.provenance, check_dtype=False)

    def rows(arm, gen):
        sel = prov[(prov.arm == arm) & (prov.generation == gen)]
        return {(r.source, r.origin_generation): r.count_mean for r in sel.itertuples()}

    assert rows("base", 1) == {("real", 0): 4}
    assert rows("base", 4) == {
        ("real", 0): 4,
        ("synthetic", 1): 5,  # [3, 5]: index = generation - 1, so 5 from generation 2 on
        ("synthetic", 2): 5,
        ("synthetic", 3): 5,
    }
    assert rows("aug", 3) == {("real", 0): 2, ("synthetic", 2): 5}
    assert rows("fresh", 3) == {("real", 0): 2, ("synthetic", 2): 5}
    assert sum(rows("sub", 4).values()) == pytest.approx(1 + 5)
    assert res.manifest["modes"] == {
        "base": "exact",
        "aug": "exact",
        "fresh": "exact",
        "sub": "sample",
    }


def test_adding_a_regime_is_one_small_class():
    """A new regime (half the previous generation's size, plus a fixed real set) gets simulation in
    both modes and theory at once."""

    @register_regime
    class Shrinking(Regime):
        name = "test-shrinking"

        def compose(self, generation: int) -> Composition:
            if generation == 1:
                real = Draw("real", 8)
                return Composition((real, Draw("real", 8)), keep={"anchor": (real,)})
            return Composition((Kept("anchor"), Draw("synthetic", 4)))

    try:
        for exact in (True, False):
            loop = make_loop("test-shrinking", dim=2, replicates=3000, exact=exact, seed=11)
            assert loop.exact == exact
            metrics, records = run_metrics(loop, 4)
            assert _clean(records[3].provenance).keys() == {(REAL, 0), (SYNTHETIC, 3)}
            pred = theory.expected_moments(loop.regime, 4)
            x = metrics["trace_ratio"][-1]
            assert abs(x.mean() - pred.trace_ratio[-1]) < 4 * x.std() / np.sqrt(x.size)
    finally:
        REGIMES.pop("test-shrinking")


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "sample"])
def test_zero_sized_batches_are_skipped_cleanly(exact):
    """A size of 0 in a generation (no fresh real points, no extra initial points) draws nothing,
    warns nothing and leaves no provenance entry."""
    cases = [
        ("synthetic-augmentation", {"real_size": 5, "synthetic_size": 5, "initial_real_size": 5}),
        ("fresh-data", {"real_size": [5, 0], "synthetic_size": 5}),
        ("accumulate", {"real_size": 0, "synthetic_size": [5, 0, 3]}),
    ]
    for regime, sizes in cases:
        loop = make_loop(regime, dim=2, replicates=3, exact=exact, **sizes)
        with np.errstate(all="raise"):
            metrics, records = run_metrics(loop, 4)
        for rec in records:
            want = _expected(regime, rec.generation, sizes)
            assert _clean(rec.provenance).keys() == {k for k, v in want.items() if v > 0}
        assert all(np.isfinite(v).all() for v in metrics.values())
