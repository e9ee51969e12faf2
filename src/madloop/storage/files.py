"""The one atomic writer: every file madloop leaves under its final name got there by a rename.

A writer gets a temporary path beside the final one (same directory, so the rename is atomic on
POSIX), writes it completely, and only then renames it over the final name. A crash, a kill or a
full disk in the middle leaves at most a hidden ``.NAME.PID.tmp`` file, never a truncated file
under the real name. This module imports nothing from madloop, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path``; renamed to ``path`` when the block ends without error,
    removed otherwise. ``suffix`` keeps an extension for writers that infer the format from it
    (``savefig``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (``fsync`` first, for
    durability against power loss, unless asked not to)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=2, default=str))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON document, or {} when the file is missing or unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_parquet(frame: Any, path: str | os.PathLike) -> None:
    """A DataFrame as parquet, atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
