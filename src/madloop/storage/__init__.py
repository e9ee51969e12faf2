"""Where results live on disk: the run and sweep directory layout and the one atomic writer."""

from madloop.storage.files import atomic_path, read_json, write_atomic, write_json, write_parquet
from madloop.storage.layout import (
    METRIC_COLUMNS,
    PROVENANCE_COLUMNS,
    SUMMARY_COLUMNS,
    THEORY_COLUMNS,
    RunDir,
    SweepDir,
)

__all__ = [
    "METRIC_COLUMNS",
    "PROVENANCE_COLUMNS",
    "SUMMARY_COLUMNS",
    "THEORY_COLUMNS",
    "RunDir",
    "SweepDir",
    "atomic_path",
    "read_json",
    "write_atomic",
    "write_json",
    "write_parquet",
]
