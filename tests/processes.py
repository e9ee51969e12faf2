"""Starting madloop as a separate process (for the tests that kill one and resume)."""

from __future__ import annotations

import os
import subprocess
import sys


def madloop_run(*args: str) -> subprocess.Popen:
    """``madloop run ARGS -q --no-plots`` in its own process, one BLAS thread, output piped."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "madloop.cli", "run", *args, "-q", "--no-plots"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
