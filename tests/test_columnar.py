"""A run's tables are built, summarised and written without pandas (:mod:`madloop.tables`):
the same frames, the same summary, the same CSV text and parquet as the pandas forms, and a
``madloop run`` whose process never imports pandas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal

from madloop.tables import (
    Strings,
    Table,
    group_statistics,
    long_columns,
    read_csv_table,
    rows_table,
    summarize,
    summarize_table,
)
from madloop.tables.columns import string_array
from test_imports import loaded_after

AWKWARD_FLOATS = [0.0, -0.0, 1.0, 0.1, 1e-5, 1e-300, 5e-324, 1e16, 1e300, 123456789.125,
                  -2.5e-7, np.inf, -np.inf, np.nan, math.pi, 1 / 3]  # fmt: skip
AWKWARD_TEXT = ["plain", "with, comma", 'with "quote"', "line\nbreak", "λ = 0.5 (w = 1)", " ", ""]


def awkward_table(rng: np.random.Generator, n: int) -> Table:
    labels = AWKWARD_TEXT[:-1]
    text = np.asarray(labels + [np.nan, None], dtype=object)[rng.integers(0, len(labels) + 2, n)]
    return Table(
        {
            "name": Strings(labels, rng.integers(0, len(labels), n)),
            "count": rng.integers(-(2**40), 2**40, n),
            "value": np.asarray(AWKWARD_FLOATS)[rng.integers(0, len(AWKWARD_FLOATS), n)],
            "noise": rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n),
            "flag": rng.random(n) < 0.5,
            "note": text,
        }
    )


@pytest.mark.parametrize("seed", range(4))
def test_csv_text_is_what_pandas_writes(seed: int) -> None:
    table = awkward_table(np.random.default_rng(seed), 300)
    assert table.csv_text() == table.frame().to_csv(index=False)


def test_parquet_reads_back_as_the_frame(tmp_path) -> None:
    table = awkward_table(np.random.default_rng(7), 200)
    pq.write_table(table.arrow(), tmp_path / "t.parquet")
    table.frame().to_parquet(tmp_path / "p.parquet", index=False)
    ours, theirs = pd.read_parquet(tmp_path / "t.parquet"), pd.read_parquet(tmp_path / "p.parquet")
    assert_frame_equal(ours, theirs, check_exact=True)
    assert (
        pq.read_schema(tmp_path / "t.parquet").types == pq.read_schema(tmp_path / "p.parquet").types
    )


STRING_CASES = {
    "runs": (["mean", "λ = 0.5", ""], np.repeat([0, 1, 2, 0, 1], [4, 1, 3, 2, 5]), None),
    "scattered, with gaps": (AWKWARD_TEXT, np.arange(40) * 3 % 7, np.arange(40) % 3 == 0),
    "gaps only": ([], np.zeros(3, dtype=np.int64), np.ones(3, dtype=bool)),
    "no rows": (["a"], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)),
    "one empty label": ([""], np.zeros(4, dtype=np.int64), None),
}


@pytest.mark.parametrize("case", list(STRING_CASES))
@pytest.mark.parametrize("offset", [np.int32, np.int64])
def test_string_array_is_the_arrow_array_of_the_labels(case: str, offset: type) -> None:
    labels, codes, gap = STRING_CASES[case]
    kind = pa.string() if offset is np.int32 else pa.large_string()
    got = string_array(Strings(labels, codes), kind, offset, gap)
    got.validate(full=True)
    null = np.zeros(codes.size, dtype=bool) if gap is None else gap
    want = pa.array([None if g else labels[c] for c, g in zip(codes, null, strict=True)], kind)
    assert got.equals(want)


def test_rows_table_types_like_pandas_and_falls_back_to_it() -> None:
    rows = [{"arm": "a", "generation": g, "count_mean": float(g) / 3, "count_min": g, "x": g}
            for g in range(5)]  # fmt: skip
    rows[2]["x"] = 2.5  # ints with one float: a float column, as pandas makes it
    table = rows_table(rows)
    assert table.typed
    assert table.csv_text() == pd.DataFrame(rows).to_csv(index=False)
    assert_frame_equal(table.frame(), pd.DataFrame(rows))
    ragged = [*rows, {"arm": "b", "generation": 9}]  # a row with fewer keys: pandas decides
    assert not rows_table(ragged).typed
    assert rows_table(ragged).csv_text() == pd.DataFrame(ragged).to_csv(index=False)


def long_frames(rng: np.random.Generator, shuffle: bool) -> tuple[Table, Table]:
    """A long table of 2 arms x 6 generations x 3 metrics x R chains (R differs by metric),
    with stopped chains (NaN), infinities and one all-NaN group; and a theory table."""
    parts = []
    for arm in ("a", "b"):
        records = []
        for g in range(6):
            metrics = {}
            for m, R in (("mse", 7), ("trace", 7), ("tail", 4)):
                v = rng.standard_normal(R) * 10.0 ** rng.integers(-3, 4) + rng.choice([0, 1e6])
                v[rng.random(R) < 0.15] = np.nan
                if g == 3 and m == "tail":
                    v[:] = np.nan
                if g == 4 and m == "trace":
                    v[0] = np.inf
                metrics[m] = v
            records.append(type("R", (), {"generation": g, "metrics": metrics})())
        parts.append(long_columns(arm, records))
    metrics = Table.concat(parts)
    if shuffle:  # groups no longer in one piece (a sweep's rows over seeds)
        order = rng.permutation(len(metrics))
        metrics = Table({k: Strings(c.labels, c.codes[order]) if isinstance(c, Strings)
                         else c[order] for k, c in metrics.columns.items()})  # fmt: skip
    gens = np.tile(np.arange(1, 6), 4)
    theory = Table(
        {
            "arm": Strings(["a", "b"], np.repeat([0, 1], 10)),
            "generation": gens,
            "metric": Strings(["mse", "trace"], np.tile(np.repeat([0, 1], 5), 2)),
            "theory": rng.standard_normal(20),
        }
    )
    return metrics, theory


@pytest.mark.parametrize("shuffle", [False, True])
def test_summarize_table_is_summarize_of_the_frames(shuffle: bool) -> None:
    metrics, theory = long_frames(np.random.default_rng(11), shuffle)
    ours = summarize_table(metrics, theory)
    assert ours.typed
    reference = summarize(metrics.frame(), theory.frame())
    assert_frame_equal(ours.frame(), reference, check_exact=True)
    assert ours.csv_text() == reference.to_csv(index=False)


@pytest.mark.parametrize("layout", ["scattered", "in-one-piece"])
def test_group_statistics_are_pandas_statistics(layout: str) -> None:
    """Mean, median, count, standard error and quantiles carry pandas' bits (the grouped mean;
    the rest as a Series computes them per group), for groups scattered over the rows with NaN
    (pandas' compensated sum) and in one piece without (its ``np.add.reduceat``, pandas >= 3.1)."""
    if layout == "in-one-piece" and tuple(map(int, pd.__version__.split(".")[:2])) < (3, 1):
        pytest.skip("pandas before 3.1 sums every layout with compensation")
    rng = np.random.default_rng(5)
    for _ in range(40):
        n, groups = int(rng.integers(1, 400)), int(rng.integers(1, 12))
        codes = rng.integers(0, groups, n)
        v = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6) + rng.choice([0.0, 1e4, -3e9])
        if layout == "scattered":
            v[rng.random(n) < 0.1] = np.nan
        else:
            codes = np.sort(codes)
        frame = pd.DataFrame({"k": codes, "value": v})
        g = frame.groupby("k", sort=False)["value"]
        ref = g.agg(
            mean="mean",
            median="median",
            n="count",
            se=lambda s: s.std() / np.sqrt(s.count()),  # what summarize's lambda once was
            q05=lambda s: s.quantile(0.05),
        )
        ours = group_statistics(g.ngroup().to_numpy(), v, len(ref))
        for name in ("mean", "median", "n", "q05"):
            np.testing.assert_array_equal(ours[name], ref[name].to_numpy())
        np.testing.assert_array_equal(ours["std_error"], ref["se"].to_numpy())


def test_read_csv_table_types_the_summary_columns(tmp_path) -> None:
    metrics, theory = long_frames(np.random.default_rng(2), False)
    summary = summarize_table(metrics, theory)
    path = tmp_path / "summary.csv"
    path.write_text(summary.csv_text())
    back = read_csv_table(path)
    assert back.names == summary.names
    assert back.column("n").dtype == np.int64 and back.column("generation").dtype == np.int64
    np.testing.assert_array_equal(back.column("mean"), summary.column("mean"))
    assert list(back.column("arm")) == list(summary.column("arm"))


def test_a_run_command_never_imports_pandas(tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'name = "light"\nseed = 1\ngenerations = 3\nreplicates = 4\n[data]\nsource = "gaussian"\n'
        'dim = 2\n[model]\nfamily = "gaussian"\n[loop]\nregime = "fully-synthetic"\n'
        "synthetic_size = 10\n"
    )
    out = tmp_path / "run"
    loaded = loaded_after(
        "import sys\nfrom madloop.cli import main\n"
        f"sys.argv = ['madloop', 'run', {str(cfg)!r}, '--out', {str(out)!r}, '--no-plots']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    assert (out / "summary.csv").exists() and (out / "metrics.parquet").exists()
    assert "pandas" not in loaded and "matplotlib" not in loaded
    frame = pd.read_csv(out / "summary.csv")
    assert len(frame) and set(frame["metric"]) >= {"mean_error_sq", "trace_ratio"}
