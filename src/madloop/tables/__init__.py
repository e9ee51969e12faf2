"""Records -> tables: the long metric table, the provenance table and the one summary.

:func:`summarize` is the only place where chains become statistics: ``summary.csv``, the report
and the phase diagrams all call it, so a stopped chain (NaN from its failure on) counts the same
everywhere: it is left out of ``n``, the mean and the standard error.

A run builds its tables as :class:`Table` (named numpy columns; strings as codes into their few
labels), summarises them with :func:`summarize_table` and writes them from there; a pandas
DataFrame is made only when one is asked for (:meth:`Table.frame`), because importing pandas was
0.2-0.4 s of every ``madloop run``. Both forms give the same numbers, bit for bit, and the same
files: the statistics have one implementation (:func:`group_statistics`) and the CSV text is
pandas' own (``astype(str)`` per column, then the ``csv`` module).
"""

from madloop.tables.columns import (
    Column,
    Strings,
    Table,
    arrow_column,
    csv_strings,
    frame_column,
    read_csv_table,
    rows_table,
    string_column,
)
from madloop.tables.records import (
    RecordColumns,
    long_columns,
    long_table,
    provenance_rows,
    provenance_table,
)
from madloop.tables.summary import (
    CI_LEVEL,
    STATISTICS,
    group_statistics,
    mean_interval,
    summarize,
    summarize_table,
    summary_statistics,
    sweep_summary,
)

__all__ = [
    "CI_LEVEL",
    "STATISTICS",
    "Column",
    "RecordColumns",
    "Strings",
    "Table",
    "arrow_column",
    "csv_strings",
    "frame_column",
    "group_statistics",
    "long_columns",
    "long_table",
    "mean_interval",
    "provenance_rows",
    "provenance_table",
    "read_csv_table",
    "rows_table",
    "string_column",
    "summarize",
    "summarize_table",
    "summary_statistics",
    "sweep_summary",
]
