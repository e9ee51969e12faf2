"""What a manifest records about the environment: package versions and the git commit."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@functools.cache
def git_commit() -> str | None:
    """The commit of madloop's own checkout (None outside one). Looked up once per process: the
    code running is the code imported then, whatever the checkout does later (and a ``git``
    process per run was a few milliseconds of every in-process run)."""
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on (a fresh dict each call)."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    # importlib.metadata scans sys.path and parses each METADATA file (about 5 ms, twice a run):
    # look once per process. An imported module does not change under the process, so only a
    # package upgraded mid-session before its first import would be reported with its old version
    out = {"python": platform.python_version()}
    for pkg in ("madloop", "numpy", "scipy", "pandas", "pyarrow", "pydantic", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
