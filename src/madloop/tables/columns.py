"""Columnar tables: named numpy columns (strings as codes into their labels), turned into a
pandas DataFrame only when one is asked for, and written as CSV (pandas' own text) and parquet
without importing pandas (:mod:`madloop.tables`)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


class Strings:
    """A column of strings as ``labels[codes]``: an arm or metric name repeated 10^5 times is
    one label and an int array, grouped and written without 10^5 Python strings."""

    __slots__ = ("labels", "codes")

    def __init__(self, labels: Sequence[str], codes: np.ndarray) -> None:
        self.labels = list(labels)
        self.codes = np.asarray(codes, dtype=np.int64)

    @classmethod
    def of(cls, values: Sequence[str]) -> Strings:
        """``values`` as labels (in the order they first appear) and codes."""
        index: dict[str, int] = {}
        codes = [index.setdefault(v, len(index)) for v in values]
        return cls(list(index), np.asarray(codes, dtype=np.int64))

    @classmethod
    def repeat(cls, label: str, n: int) -> Strings:
        return cls([label], np.zeros(n, dtype=np.int64))

    def __len__(self) -> int:
        return self.codes.size

    def decoded(self) -> np.ndarray:
        """The strings, as an object array."""
        return np.asarray(self.labels, dtype=object)[self.codes]

    @staticmethod
    def concat(parts: Sequence[Strings]) -> Strings:
        labels: dict[str, int] = {}
        codes = []
        for part in parts:
            remap = np.asarray([labels.setdefault(x, len(labels)) for x in part.labels], np.int64)
            codes.append(remap[part.codes] if part.labels else part.codes)
        return Strings(list(labels), np.concatenate(codes))


Column = np.ndarray | Strings


class Table:
    """Named columns of one length (numpy arrays or :class:`Strings`), or an untyped empty
    table (``columns=None``: the frame of :data:`names` with no rows). :meth:`concat` keeps its
    parts, so that :meth:`frame` is ``pd.concat`` of theirs, as a run's tables always were."""

    def __init__(
        self,
        columns: Mapping[str, Column] | None,
        *,
        names: Sequence[str] = (),
        parts: Sequence[Table] = (),
        frame: Any = None,
    ) -> None:
        self.columns = None if columns is None else dict(columns)
        self.names = list(self.columns) if self.columns is not None else list(names)
        self.parts = list(parts)
        self._frame = frame  # a DataFrame to give as is (rows that only pandas should type)

    @classmethod
    def of_frame(cls, frame: pd.DataFrame) -> Table:
        """A table that is this DataFrame (its columns numpy; written by pandas' rules)."""
        return cls(None, names=list(frame.columns), frame=frame)

    @property
    def typed(self) -> bool:
        """Every column known here (so the table is written without pandas)."""
        return self.columns is not None and self._frame is None

    def __len__(self) -> int:
        if self.columns:
            return len(next(iter(self.columns.values())))
        return 0 if self._frame is None else len(self._frame)

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array (strings decoded to objects)."""
        if not self.typed:
            return self.frame()[name].to_numpy()
        col = self.columns[name]  # type: ignore[index]
        return col.decoded() if isinstance(col, Strings) else col

    def frame(self) -> pd.DataFrame:
        """The pandas DataFrame of this table."""
        import pandas as pd

        if self._frame is not None:
            return self._frame
        if self.parts:
            return pd.concat([p.frame() for p in self.parts], ignore_index=True)
        if self.columns is None:
            return pd.DataFrame(columns=self.names)
        return pd.DataFrame({name: frame_column(col) for name, col in self.columns.items()})

    @classmethod
    def concat(cls, parts: Sequence[Table]) -> Table:
        """The rows of ``parts`` in order; typed when every part is, with the same columns of
        the same kinds (else only :meth:`frame` knows the result: pandas' dtype rules)."""
        parts = list(parts)
        if len(parts) == 1:
            return parts[0]
        first = parts[0]

        def kinds(table: Table) -> list[Any]:
            return [
                "strings" if isinstance(c, Strings) else c.dtype
                for c in (table.columns or {}).values()
            ]

        if not all(p.typed and p.names == first.names and kinds(p) == kinds(first) for p in parts):
            return cls(None, names=first.names, parts=parts)
        columns: dict[str, Column] = {}
        for n in first.names:
            cols = [p.columns[n] for p in parts]  # type: ignore[index]
            if isinstance(cols[0], Strings):
                columns[n] = Strings.concat(cols)  # type: ignore[arg-type]
            else:
                columns[n] = np.concatenate(cols)  # type: ignore[arg-type]
        return cls(columns, parts=parts)

    def csv_text(self) -> str:
        """The table as ``frame().to_csv(index=False)`` writes it, character for character:
        pandas formats a float column by ``astype(str)`` (NaN empty) and an int column likewise,
        and hands the strings to :func:`csv.writer`."""
        if not self.typed:
            return self.frame().to_csv(index=False)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(self.names)
        writer.writerows(zip(*(csv_strings(c) for c in self.columns.values()), strict=True))  # type: ignore[union-attr]
        return buf.getvalue()

    def arrow(self) -> pa.Table:
        """The table as a pyarrow Table (strings as large_string, as pandas' str columns),
        built from the columns' buffers: ``pa.array`` would import pandas to inspect them."""
        import pyarrow as pa

        if not self.typed:
            return pa.Table.from_pandas(self.frame(), preserve_index=False)
        arrays = [arrow_column(col) for col in self.columns.values()]  # type: ignore[union-attr]
        return pa.Table.from_arrays(arrays, names=self.names)


def arrow_column(col: Column) -> pa.Array:
    """One column as a pyarrow array, from numpy buffers (see :meth:`Table.arrow`): neither
    ``pa.array`` (it imports pandas to inspect its input) nor a compute kernel (``take`` and
    ``cast`` load ``pyarrow.compute``, 40 ms)."""
    import pyarrow as pa

    if not isinstance(col, Strings) and col.dtype == object:  # e.g. text with gaps (NaN, None)
        gap = np.asarray([is_gap(v) for v in col], dtype=bool)
        texts = Strings.of(["" if g else str(v) for v, g in zip(col, gap, strict=True)])
        # pandas makes an object column of text a (32-bit offset) string column
        return string_array(texts, pa.string(), np.int32, gap)
    if isinstance(col, Strings):
        return string_array(col, pa.large_string(), np.int64)
    if col.dtype == bool:
        bits = pa.py_buffer(np.packbits(col, bitorder="little"))
        return pa.Array.from_buffers(pa.bool_(), col.size, [None, bits])
    values = np.ascontiguousarray(col)
    return pa.Array.from_buffers(
        pa.from_numpy_dtype(values.dtype), values.size, [None, pa.py_buffer(values)]
    )


def string_array(
    col: Strings, kind: pa.DataType, offset: type, gap: np.ndarray | None = None
) -> pa.Array:
    """``labels[codes]`` as an arrow string array of ``kind`` (its offsets of type
    ``offset``); ``gap`` marks the nulls.

    The bytes are gathered run by run: a run of equal codes is its label's bytes repeated, and
    a run's tables come in long runs (a metric's block of chains, one arm), so the column costs
    a pass over its codes (a gather of byte offsets was a pass over eight times as many, and
    most of the parquet write)."""
    import pyarrow as pa

    encoded = [label.encode() for label in col.labels] + [b""]  # the last: a gap's (no) bytes
    codes = col.codes if gap is None else np.where(gap, len(encoded) - 1, col.codes)
    sizes = np.asarray([len(e) for e in encoded], dtype=np.int64)
    offsets = np.zeros(codes.size + 1, dtype=offset)
    np.cumsum(sizes[codes], out=offsets[1:])
    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))[: codes.size]
    lengths = np.diff(np.append(starts, codes.size))
    runs = zip(codes[starts].tolist(), lengths.tolist(), strict=True)
    text = b"".join([encoded[c] * k for c, k in runs])
    valid = None
    nulls = 0
    if gap is not None and gap.any():
        valid, nulls = pa.py_buffer(np.packbits(~gap, bitorder="little")), int(gap.sum())
    buffers = [valid, pa.py_buffer(offsets), pa.py_buffer(text)]
    return pa.Array.from_buffers(kind, codes.size, buffers, null_count=nulls)


def frame_column(col: Column) -> Any:
    """A column as a DataFrame holds it: strings in pandas' default string dtype, an object
    array kept as objects (pandas 3 would infer strings)."""
    import pandas as pd

    if isinstance(col, Strings):
        return string_column(col.labels, col.codes)
    if col.dtype == object:
        return pd.Series(col, dtype=object, copy=False)
    return col


def csv_strings(col: Column) -> Sequence[str]:
    """One column's CSV cells as pandas writes them (see :meth:`Table.csv_text`)."""
    if isinstance(col, Strings):
        return np.asarray(col.labels, dtype=object)[col.codes]
    if col.dtype.kind == "f":
        cells = col.astype(str).astype(object)
        cells[np.isnan(col)] = ""
        return cells
    if col.dtype.kind in "iub":
        return col.astype(str)
    return ["" if is_gap(v) else str(v) for v in col]


def is_gap(value: Any) -> bool:
    """A missing cell of an object column: None or NaN (written empty, stored as null)."""
    return value is None or (isinstance(value, float) and value != value)


def read_csv_table(path: str | os.PathLike) -> Table:
    """A CSV file (a run's ``summary.csv``) as a typed :class:`Table`, without pandas: a column
    of integers is int64, one of numbers (an empty cell NaN) float64, any other text."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return Table(None)
    names, body = rows[0], rows[1:]
    cells = list(zip(*body, strict=True)) if body else [() for _ in names]
    return Table({name: _typed_cells(list(col)) for name, col in zip(names, cells, strict=True)})


def _typed_cells(cells: list[str]) -> Column:
    """A CSV column's cells as int64, else float64 ('' is NaN), else strings."""
    if cells and all(c.lstrip("-").isdigit() for c in cells):
        return np.asarray(cells, dtype=np.int64)
    try:
        return np.asarray([c if c else "nan" for c in cells], dtype=float)
    except ValueError:
        return Strings.of(cells)


def rows_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """``pd.DataFrame(rows)`` as a :class:`Table`: typed when every row has the same keys and
    each column holds one kind (str, int, float, bool; int with float is float, as pandas
    makes it); otherwise the DataFrame itself (pandas' rules for anything else)."""
    if not rows:
        return Table.of_frame(_frame_of_rows(rows))
    names = list(rows[0])
    if any(list(r) != names for r in rows):
        return Table.of_frame(_frame_of_rows(rows))
    columns: dict[str, Column] = {}
    for name in names:
        values = [r[name] for r in rows]
        kinds = {_kind(v) for v in values}
        if kinds == {"str"}:
            columns[name] = Strings.of(values)
        elif kinds <= {"int", "float"} and kinds:
            columns[name] = np.asarray(values, dtype=float if "float" in kinds else np.int64)
        elif kinds == {"bool"}:
            columns[name] = np.asarray(values, dtype=bool)
        else:
            return Table.of_frame(_frame_of_rows(rows))
    return Table(columns)


def _kind(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, np.integer)):
        return "int" if -(2**63) <= int(v) < 2**63 else "other"
    if isinstance(v, (float, np.floating)):
        return "float"
    return "str" if isinstance(v, str) else "other"


def _frame_of_rows(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(list(rows))


def string_column(labels: Sequence[str], codes: np.ndarray) -> Any:
    """``labels[codes]`` as the array type pandas gives a column of strings by default (its
    pyarrow-backed ``str`` on pandas 3, object before), built from the codes: a table of 10^5
    rows took 3.5 ms to convert from Python strings, a take on the labels 0.1 ms."""
    import pandas as pd

    dtype = pd.Series(["x"]).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        import pyarrow as pa

        table = pa.array(list(labels), type=pa.large_string())
        return pd.array(table.take(pa.array(codes)), dtype=dtype)
    return np.asarray(labels, dtype=object)[codes]
