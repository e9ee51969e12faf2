"""Records -> tables: the long metric table and the provenance table (:mod:`madloop.tables`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from madloop.storage.layout import METRIC_COLUMNS
from madloop.tables.columns import Strings, Table, rows_table
from madloop.types import SOURCE_NAMES

if TYPE_CHECKING:
    import pandas as pd


def long_columns(arm: str, records: Iterable[Any]) -> Table:
    """(arm, generation, replicate, metric, value) from records with ``generation`` and
    ``metrics`` (name -> (R,)), as one :class:`Table`."""
    gens, reps, codes, values = [], [], [], []
    labels: dict[str, int] = {}
    for rec in records:
        for metric, v in rec.metrics.items():
            v = np.asarray(v, dtype=float).reshape(-1)
            gens.append(np.full(v.size, rec.generation, dtype=np.int64))
            reps.append(np.arange(v.size))
            codes.append(np.full(v.size, labels.setdefault(metric, len(labels))))
            values.append(v)
    if not values:
        return Table(None, names=METRIC_COLUMNS)
    value = np.concatenate(values)
    return Table(
        {
            "arm": Strings.repeat(arm, value.size),
            "generation": np.concatenate(gens),
            "replicate": np.concatenate(reps),
            "metric": Strings(list(labels), np.concatenate(codes)),
            "value": value,
        }
    )


def long_table(arm: str, records: Iterable[Any]) -> pd.DataFrame:
    """(arm, generation, replicate, metric, value) from records with ``generation`` and
    ``metrics`` (name -> (R,)), in one frame construction."""
    return long_columns(arm, records).frame()


def provenance_table(
    arm: str, records: Iterable[Any], sources: dict[int, str] | None = None
) -> pd.DataFrame:
    """Per generation, source and origin: the mean, min and max count over chains. A record's
    ``provenance`` maps (source, origin generation) -> counts (R,); ``sources`` names the source
    codes (default: real / synthetic). Extra key parts after the origin are columns named by
    the record's ``provenance_columns``."""

    names = SOURCE_NAMES if sources is None else sources
    return rows_table([row for rec in records for row in provenance_rows(arm, rec, names)]).frame()


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

    def long_table(self) -> Table:
        """As :func:`long_columns` of the records, row for row."""
        if not self.generations or not any(self.order):
            return Table(None, names=METRIC_COLUMNS)
        G = len(self.generations)
        gens = np.asarray(self.generations, dtype=np.int64)
        names = self.order[0]
        same = len(set(self.order)) == 1 and len({self.values[n].shape[1] for n in names}) == 1
        if same:  # the usual case: the same metrics, of R chains each, every generation
            block = np.stack([self.values[n][:G] for n in names], axis=1)  # (G, M, R)
            R = block.shape[2]
            return Table(
                {
                    "arm": Strings.repeat(self.label, G * len(names) * R),
                    "generation": np.repeat(gens, len(names) * R),
                    "replicate": np.tile(np.arange(R), G * len(names)),
                    "metric": Strings(names, np.tile(np.repeat(np.arange(len(names)), R), G)),
                    "value": block.reshape(-1),
                }
            )
        rows = [
            _Row(g, {n: self.values[n][i] for n in names})
            for i, (g, names) in enumerate(zip(self.generations, self.order, strict=True))
        ]
        return long_columns(self.label, rows)

    def provenance_table(self) -> Table:
        """As :func:`provenance_table` of the records (a :class:`Table`)."""
        return rows_table(self.provenance_rows)

    def failures(self) -> list[dict[str, Any]]:
        """The manifest's lines for the chains that stopped, by replicate."""
        return [
            {"arm": self.label, "generation": g, "replicate": r, "reason": why}
            for r, g, why in sorted(self.stops, key=lambda s: s[0])
        ]


class _Row:
    """A generation's metrics, shaped as a record for :func:`long_table`."""

    def __init__(self, generation: int, metrics: dict[str, np.ndarray]) -> None:
        self.generation, self.metrics = generation, metrics
