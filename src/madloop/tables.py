"""Records -> tables: the long metric table, the provenance table and the one summary.

:func:`summarize` is the only place where chains become statistics: ``summary.csv``, the report
and the phase diagrams all call it, so a stopped chain (NaN from its failure on) counts the same
everywhere: it is left out of ``n``, the mean and the standard error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from madloop.storage.layout import METRIC_COLUMNS, SUMMARY_COLUMNS
from madloop.types import SOURCE_NAMES


def long_table(arm: str, records: Iterable[Any]) -> pd.DataFrame:
    """(arm, generation, replicate, metric, value) from records with ``generation`` and
    ``metrics`` (name -> (R,)), in one frame construction."""
    gens, reps, names, values = [], [], [], []
    for rec in records:
        for metric, v in rec.metrics.items():
            v = np.asarray(v, dtype=float).reshape(-1)
            gens.append(np.full(v.size, rec.generation))
            reps.append(np.arange(v.size))
            names.append(np.full(v.size, metric, dtype=object))
            values.append(v)
    if not values:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return pd.DataFrame(
        {
            "arm": arm,
            "generation": np.concatenate(gens),
            "replicate": np.concatenate(reps),
            "metric": np.concatenate(names),
            "value": np.concatenate(values),
        }
    )


def provenance_table(
    arm: str, records: Iterable[Any], sources: dict[int, str] | None = None
) -> pd.DataFrame:
    """Per generation, source and origin: the mean, min and max count over chains. A record's
    ``provenance`` maps (source, origin generation) -> counts (R,); ``sources`` names the source
    codes (default: real / synthetic). Extra key parts after the origin are columns named by
    the record's ``provenance_columns``."""
    names = SOURCE_NAMES if sources is None else sources
    return pd.DataFrame([row for rec in records for row in provenance_rows(arm, rec, names)])


def provenance_rows(arm: str, rec: Any, names: dict[int, str]) -> list[dict[str, Any]]:
    """One record's rows of the provenance table (see :func:`provenance_table`)."""
    extra = getattr(rec, "provenance_columns", ())  # e.g. the pool's "published"
    rows = []
    for (source, origin, *more), counts in sorted(rec.provenance.items()):
        counts = np.asarray(counts)
        rows.append(
            {
                "arm": arm,
                "generation": rec.generation,
                "source": names.get(source, str(source)),
                "origin_generation": origin,
                **dict(zip(extra, more, strict=True)),
                "count_mean": float(np.mean(counts)),
                "count_min": int(np.min(counts)),
                "count_max": int(np.max(counts)),
            }
        )
    return rows


class RecordColumns:
    """One label's records, kept column-wise as a run goes: metric values in arrays allocated
    once for every generation (so memory stays flat over a long run instead of growing by a
    small object per generation and metric), provenance reduced to its table rows, failures as
    lines. :meth:`long_table`, :meth:`provenance_table` and :meth:`failures` give what the
    functions of this module give for the list of records."""

    def __init__(self, label: str, generations: int, sources: dict[int, str] | None = None) -> None:
        self.label = label
        self.capacity = max(int(generations), 1)
        self.sources = SOURCE_NAMES if sources is None else sources
        self.generations: list[int] = []
        self.values: dict[str, np.ndarray] = {}  # metric -> (capacity, R)
        self.order: list[tuple[str, ...]] = []  # the metric names of each generation, in order
        self.provenance_rows: list[dict[str, Any]] = []
        self.stops: list[tuple[int, int, str]] = []  # (replicate, generation, why)

    def add(self, rec: Any) -> None:
        i = len(self.generations)
        if i == self.capacity:  # more generations than announced (a resume asking for more)
            self.capacity *= 2
            for name, arr in self.values.items():
                grown = np.full((self.capacity, arr.shape[1]), np.nan)
                grown[:i] = arr[:i]
                self.values[name] = grown
        self.generations.append(rec.generation)
        names = tuple(rec.metrics)
        self.order.append(self.order[-1] if self.order and self.order[-1] == names else names)
        for name, v in rec.metrics.items():
            v = np.asarray(v, dtype=float).reshape(-1)
            if name not in self.values:
                self.values[name] = np.full((self.capacity, v.size), np.nan)
            self.values[name][i] = v
        self.provenance_rows += provenance_rows(self.label, rec, self.sources)
        self.stops += [(r, rec.generation, why) for r, why in rec.failures.items()]

    def long_table(self) -> pd.DataFrame:
        """As :func:`long_table` of the records, row for row."""
        if not self.generations or not any(self.order):
            return pd.DataFrame(columns=METRIC_COLUMNS)
        G = len(self.generations)
        gens = np.asarray(self.generations)
        names = self.order[0]
        same = len(set(self.order)) == 1 and len({self.values[n].shape[1] for n in names}) == 1
        if same:  # the usual case: the same metrics, of R chains each, every generation
            block = np.stack([self.values[n][:G] for n in names], axis=1)  # (G, M, R)
            R = block.shape[2]
            return pd.DataFrame(
                {
                    "arm": self.label,
                    "generation": np.repeat(gens, len(names) * R),
                    "replicate": np.tile(np.arange(R), G * len(names)),
                    "metric": string_column(names, np.tile(np.repeat(np.arange(len(names)), R), G)),
                    "value": block.reshape(-1),
                }
            )
        rows = [
            _Row(g, {n: self.values[n][i] for n in names})
            for i, (g, names) in enumerate(zip(self.generations, self.order, strict=True))
        ]
        return long_table(self.label, rows)

    def provenance_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.provenance_rows)

    def failures(self) -> list[dict[str, Any]]:
        """The manifest's lines for the chains that stopped, by replicate."""
        return [
            {"arm": self.label, "generation": g, "replicate": r, "reason": why}
            for r, g, why in sorted(self.stops, key=lambda s: s[0])
        ]


def string_column(labels: Sequence[str], codes: np.ndarray) -> Any:
    """``labels[codes]`` as the array type pandas gives a column of strings by default (its
    pyarrow-backed ``str`` on pandas 3, object before), built from the codes: a table of 10^5
    rows took 3.5 ms to convert from Python strings, a take on the labels 0.1 ms."""
    dtype = pd.Series(["x"]).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        import pyarrow as pa

        table = pa.array(list(labels), type=pa.large_string())
        return pd.array(table.take(pa.array(codes)), dtype=dtype)
    return np.asarray(labels, dtype=object)[codes]


class _Row:
    """A generation's metrics, shaped as a record for :func:`long_table`."""

    def __init__(self, generation: int, metrics: dict[str, np.ndarray]) -> None:
        self.generation, self.metrics = generation, metrics


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
    keys = list(keys)
    if metrics.empty:
        extra = [c for c in SUMMARY_COLUMNS if c not in keys and c not in METRIC_COLUMNS]
        return pd.DataFrame(columns=keys + extra)
    g = metrics.groupby(keys, sort=False)["value"]
    with np.errstate(invalid="ignore", over="ignore"):
        out = g.agg(mean="mean", median="median", n="count").reset_index()
        codes = g.ngroup().fillna(-1).to_numpy(dtype=np.int64)
        std_error, q05, q95 = _spread(codes, metrics["value"].to_numpy(dtype=float), len(out))
    at = len(keys)
    out.insert(at + 1, "std_error", std_error)
    out.insert(at + 3, "q05", q05)
    out.insert(at + 4, "q95", q95)
    ci_low, ci_high = mean_interval(out["mean"].to_numpy(float), std_error, out["n"].to_numpy())
    out.insert(at + 6, "ci_low", ci_low)
    out.insert(at + 7, "ci_high", ci_high)
    if theory is not None and not theory.empty:
        on = [k for k in keys if k in theory.columns]
        out = out.merge(theory, on=on, how="left")
    else:
        out["theory"] = np.nan
    return out


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


def _spread(
    codes: np.ndarray, values: np.ndarray, groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group (``codes`` 0..groups-1, -1 for a row without a group): the standard error and
    the 5% and 95% quantiles, computed as pandas computes them on each group's Series (a
    two-pass variance on the values in row order, NaN left out; ``np.percentile`` on the non-NaN
    values) but over a (groups x values) block per group size, so the bits are the same."""
    keep = np.flatnonzero(codes >= 0)
    order = keep[np.argsort(codes[keep], kind="stable")]  # row order within each group
    sizes = np.bincount(codes[order], minlength=groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ordered = values[order]
    std_error = np.full(groups, np.nan)
    quantiles = np.full((2, groups), np.nan)
    for m in np.unique(sizes[sizes > 0]):
        rows = np.flatnonzero(sizes == m)
        block = ordered[starts[rows][:, None] + np.arange(m)]  # (k, m), C-contiguous
        missing = np.isnan(block)
        count = m - missing.sum(axis=1)
        two = count > 1
        if two.any():
            x, miss, c = block[two], missing[two], count[two].astype(float)
            x0 = np.where(miss, 0.0, x)
            avg = x0.sum(axis=1, dtype=np.float64) / c
            sq = (avg[:, None] - x0) ** 2
            np.putmask(sq, miss, 0.0)
            std = np.sqrt(sq.sum(axis=1, dtype=np.float64) / (c - 1.0))
            std_error[rows[two]] = std / np.sqrt(count[two])
        ranked = np.sort(block, axis=1)  # NaN last
        for c in np.unique(count[count > 0]):
            sel = count == c
            quantiles[:, rows[sel]] = np.percentile(
                ranked[sel, :c], _PERCENTS, axis=1, method="linear"
            )
    return std_error, quantiles[0], quantiles[1]
