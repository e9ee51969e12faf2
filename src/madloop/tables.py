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
    rows = []
    for rec in records:
        extra = getattr(rec, "provenance_columns", ())  # e.g. the pool's "published"
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
    return pd.DataFrame(rows)


def summarize(
    metrics: pd.DataFrame,
    theory: pd.DataFrame | None = None,
    *,
    keys: Sequence[str] = ("arm", "generation", "metric"),
) -> pd.DataFrame:
    """Per ``keys`` (default arm, generation and metric): mean, std_error, median, q05, q95, n,
    and theory where ``theory`` has it.

    ``n`` counts the finite-or-infinite values: a stopped chain reports NaN and is left out of
    every statistic; ±inf values (log det of a singular fit) are reported as such. The standard
    error is the sample standard deviation (ddof 1) over sqrt(n), NaN for n < 2.
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
    if theory is not None and not theory.empty:
        on = [k for k in keys if k in theory.columns]
        out = out.merge(theory, on=on, how="left")
    else:
        out["theory"] = np.nan
    return out


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
