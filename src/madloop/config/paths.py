"""Paths named in a config file stay inside the run directory."""

from __future__ import annotations

import os
from pathlib import Path

from madloop.config.errors import ConfigError
from madloop.config.sections import check_run_path


def resolve_run_path(run_dir: str | os.PathLike, value: str, *, field: str) -> Path:
    """The file a config's path field names, inside ``run_dir``; raises :class:`ConfigError`
    (naming ``field``) when it is absolute, climbs out with '..', or leads out through a symlink.
    A path given on the command line is the user's own: open it directly, without this check."""
    try:
        check_run_path(value)
    except ValueError as err:
        raise ConfigError([f"{field}: {err}, got {value!r}"]) from None
    root = Path(run_dir).resolve()
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(
            [f"{field}: {value!r} leads out of the run directory {root} (through a symlink)"]
        )
    return path

