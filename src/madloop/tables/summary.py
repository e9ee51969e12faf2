"""The one summary: chains become statistics here (:mod:`madloop.tables`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from madloop.storage.layout import METRIC_COLUMNS, SUMMARY_COLUMNS
from madloop.tables.columns import Column, Strings, Table

if TYPE_CHECKING:
    import pandas as pd


def summarize(
    metrics: pd.DataFrame,
    theory: pd.DataFrame | None = None,
    *,
    keys: Sequence[str] = ("arm", "generation", "metric"),
) -> pd.DataFrame:
    """Per ``keys`` (default arm, generation and metric): mean, std_error, median, q05, q95, n,
    ci_low, ci_high, and theory where ``theory`` has it.

    ``n`` counts the finite-or-infinite values: a stopped chain reports NaN and is left out of
    every statistic; ±inf values (log det of a singular fit) are reported as such. The standard
    error is the sample standard deviation (ddof 1) over sqrt(n), NaN for n < 2.

    Two different bands, for two questions: ``q05``/``q95`` are the 5% and 95% quantiles of the
    chains (where one chain is likely to be), while ``ci_low``/``ci_high`` are the 95% confidence
    interval of the *mean* over chains, mean ± t(0.975, n - 1) · std_error (Student t with n - 1
    degrees of freedom, so it holds for few chains of a roughly normal metric; NaN for n < 2).
    Over a sweep the same columns are over every (seed, chain) of a cell.
    """
    import pandas as pd

    keys = list(keys)
    if metrics.empty:
        extra = [c for c in SUMMARY_COLUMNS if c not in keys and c not in METRIC_COLUMNS]
        return pd.DataFrame(columns=keys + extra)
    g = metrics.groupby(keys, sort=False)["value"]
    out = g.size().reset_index()[keys]  # the groups, in the order they first appear
    codes = g.ngroup().fillna(-1).to_numpy(dtype=np.int64)
    stats = group_statistics(codes, metrics["value"].to_numpy(dtype=float), len(out))
    for name, values in summary_statistics(stats).items():
        out[name] = values
    if theory is not None and not theory.empty:
        on = [k for k in keys if k in theory.columns]
        out = out.merge(theory, on=on, how="left")
    else:
        out["theory"] = np.nan
    return out


def summary_statistics(stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The summary's statistic columns, in order, from :func:`group_statistics`: with the 95%
    interval of the mean after ``n``."""
    ci_low, ci_high = mean_interval(stats["mean"], stats["std_error"], stats["n"])
    return {**{name: stats[name] for name in STATISTICS}, "ci_low": ci_low, "ci_high": ci_high}


def summarize_table(metrics: Table, theory: Table | None = None) -> Table:
    """:func:`summarize` of a run's long table (and its theory table) per arm, generation and
    metric, without pandas: the same columns and bits as ``summarize(metrics.frame(),
    theory.frame())``. A table it cannot type (an empty one, or columns only pandas types) is
    summarised by :func:`summarize`."""
    cols = metrics.columns if metrics.typed else None
    usable = (
        cols is not None
        and len(metrics) > 0
        and metrics.names == METRIC_COLUMNS
        and isinstance(cols["arm"], Strings)
        and isinstance(cols["metric"], Strings)
        and cols["generation"].dtype.kind in "iu"  # type: ignore[union-attr]
    )
    lookup = _theory_lookup(theory) if usable else None
    if not usable or lookup is None:
        frame = summarize(metrics.frame(), None if theory is None else theory.frame())
        return Table.of_frame(frame)
    arm, metric = cols["arm"], cols["metric"]  # type: ignore[index]
    gen = np.asarray(cols["generation"], dtype=np.int64)  # type: ignore[index]
    # a row's group starts a run of rows of the same key (a run's rows of one generation and
    # metric lie together): number the runs, then the distinct keys in order of appearance
    change = np.flatnonzero(
        (arm.codes[1:] != arm.codes[:-1])  # type: ignore[union-attr]
        | (gen[1:] != gen[:-1])
        | (metric.codes[1:] != metric.codes[:-1])  # type: ignore[union-attr]
    )
    starts = np.concatenate([[0], change + 1])
    run_keys = np.stack([arm.codes[starts], gen[starts], metric.codes[starts]], axis=1)  # type: ignore[union-attr]
    _, first, inverse = np.unique(run_keys, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    run_group = rank[inverse.reshape(-1)]
    lengths = np.diff(np.concatenate([starts, [gen.size]]))
    codes = np.repeat(run_group, lengths)
    heads = starts[np.sort(first)]  # each group's first row, groups in order
    stats = group_statistics(codes, np.asarray(cols["value"], dtype=float), first.size)  # type: ignore[index]
    out: dict[str, Column] = {
        "arm": _used(arm, arm.codes[heads]),  # type: ignore[union-attr]
        "generation": gen[heads],
        "metric": _used(metric, metric.codes[heads]),  # type: ignore[union-attr]
        **summary_statistics(stats),
    }
    keys = zip(
        out["arm"].decoded(),  # type: ignore[union-attr]
        gen[heads].tolist(),
        out["metric"].decoded(),  # type: ignore[union-attr]
        strict=True,
    )
    out["theory"] = np.asarray([lookup.get(k, np.nan) for k in keys], dtype=float)
    return Table(out)


def _used(column: Strings, codes: np.ndarray) -> Strings:
    """The column ``column.labels[codes]``, holding only the labels that ``codes`` use."""
    used, remap = np.unique(codes, return_inverse=True)
    return Strings([column.labels[i] for i in used], remap.reshape(-1))


def _theory_lookup(theory: Table | None) -> dict[tuple[str, int, str], float] | None:
    """(arm, generation, metric) -> theory, or None where a merge would not be a lookup
    (untyped columns, other columns, or a key given twice)."""
    if theory is None or len(theory) == 0:
        return {}
    if not theory.typed or theory.names != ["arm", "generation", "metric", "theory"]:
        return None
    keys = list(
        zip(
            theory.column("arm"),
            np.asarray(theory.column("generation"), dtype=np.int64).tolist(),
            theory.column("metric"),
            strict=True,
        )
    )
    values = np.asarray(theory.column("theory"), dtype=float).tolist()
    lookup = dict(zip(keys, values, strict=True))
    return lookup if len(lookup) == len(keys) else None


def sweep_summary(
    results: pd.DataFrame, theory: pd.DataFrame | None, keys: Sequence[str]
) -> pd.DataFrame:
    """A sweep's summary: :func:`summarize` per (swept keys..., arm, generation, metric) over
    every seed x chain of a cell (so ``n``, ``std_error`` and ``ci_low``/``ci_high`` count them
    all), with ``theory`` the mean of the cell's closed forms over seeds."""
    group = [*keys, "arm", "generation", "metric"]
    th = None
    if theory is not None and not theory.empty:
        th = theory.groupby(group, sort=False, dropna=False)["theory"].mean().reset_index()
    return summarize(results, th, keys=group)


CI_LEVEL = 0.95  # the confidence of ``ci_low`` / ``ci_high``


def mean_interval(
    mean: np.ndarray, std_error: np.ndarray, n: np.ndarray, level: float = CI_LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """The ``level`` confidence interval of a mean: mean ± t(1 - α/2, n - 1) · std_error, NaN
    where n < 2 (one chain says nothing about the mean's uncertainty)."""
    # scipy.special's t quantile, not scipy.stats (whose import alone took a second of every
    # run); imported here so that importing the tables stays light
    from scipy.special import stdtrit

    n = np.asarray(n, dtype=float)
    dof = np.where(n >= 2, n - 1.0, np.nan)
    with np.errstate(invalid="ignore"):
        half = stdtrit(dof, 0.5 + level / 2) * np.asarray(std_error, dtype=float)
    return mean - half, mean + half


#: what ``Series.quantile`` hands ``np.percentile`` for q = 0.05 and 0.95
_PERCENTS = np.asarray([0.05, 0.95]) * 100.0

STATISTICS = ("mean", "std_error", "median", "q05", "q95", "n")


def group_statistics(codes: np.ndarray, values: np.ndarray, groups: int) -> dict[str, np.ndarray]:
    """Per group (``codes`` 0..groups-1, -1 for a row without a group) the statistics of
    :func:`summarize`, NaN values left out: the mean, the standard error, the median, the 5% and
    95% quantiles and the count ``n``. Each as pandas computes it: the mean as its grouped mean
    does (one ``np.add.reduceat`` for groups in one piece without NaN, else a compensated sum in
    row order), the rest as a Series does per group (the two middle values for the median, a
    two-pass variance in row order, ``np.percentile``), but over a (groups x values) block per
    group size, so the bits are pandas' (tested) in a fraction of the time."""
    keep = np.flatnonzero(codes >= 0)
    order = keep[np.argsort(codes[keep], kind="stable")]  # row order within each group
    sizes = np.bincount(codes[order], minlength=groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ordered = values[order]
    out = {name: np.full(groups, np.nan) for name in STATISTICS}
    out["n"] = np.zeros(groups, dtype=np.int64)
    # the mean as pandas (3.1) takes it: groups in one piece in code order and no NaN anywhere
    # (a run's layout) by one ``np.add.reduceat``, otherwise a compensated sum per group below
    in_one_piece = not np.isnan(values).any() and bool(np.all(np.diff(codes) >= 0))
    if in_one_piece and sizes.any():
        some = np.flatnonzero(sizes)
        with np.errstate(invalid="ignore", over="ignore"):
            out["mean"][some] = np.add.reduceat(ordered, starts[some]) / sizes[some]
    with np.errstate(invalid="ignore", over="ignore"):
        for m in np.unique(sizes[sizes > 0]):
            rows = np.flatnonzero(sizes == m)
            block = ordered[starts[rows][:, None] + np.arange(m)]  # (k, m), C-contiguous
            missing = np.isnan(block)
            count = m - missing.sum(axis=1)
            out["n"][rows] = count
            if not in_one_piece:
                out["mean"][rows] = compensated_mean(block, missing, count)
            two = count > 1
            if two.any():
                x, miss, c = block[two], missing[two], count[two].astype(float)
                x0 = np.where(miss, 0.0, x)
                avg = x0.sum(axis=1, dtype=np.float64) / c
                sq = (avg[:, None] - x0) ** 2
                np.putmask(sq, miss, 0.0)
                std = np.sqrt(sq.sum(axis=1, dtype=np.float64) / (c - 1.0))
                out["std_error"][rows[two]] = std / np.sqrt(count[two])
            ranked = np.sort(block, axis=1)  # NaN last
            for c in np.unique(count[count > 0]):
                sel = count == c
                at = rows[sel]
                out["q05"][at], out["q95"][at] = np.percentile(
                    ranked[sel, :c], _PERCENTS, axis=1, method="linear"
                )
                mid = ranked[sel, c // 2]
                out["median"][at] = mid if c % 2 else (mid + ranked[sel, c // 2 - 1]) / 2
    return out


def compensated_mean(block: np.ndarray, missing: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Each row's mean of its non-NaN values as pandas' grouped mean (its Cython kernel) sums
    them: left to right with Kahan compensation (reset where an infinity makes it NaN), over
    the count."""
    total = np.zeros(block.shape[0])
    comp = np.zeros(block.shape[0])
    for j in range(block.shape[1]):
        y = block[:, j] - comp
        t = total + y
        c = (t - total) - y
        c[c != c] = 0.0
        ok = ~missing[:, j]
        np.copyto(comp, c, where=ok)
        np.copyto(total, t, where=ok)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
