"""Starting madloop as a separate process (for the tests that kill one and resume)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable


def madloop_run(*args: str) -> subprocess.Popen:
    """``madloop run ARGS -q --no-plots`` in its own process, one BLAS thread, output piped;
    checkpointed after every generation (unless ARGS say otherwise), so a kill lands between
    checkpoints a test can count."""
    if "--checkpoint-every" not in args:
        args = (*args, "--checkpoint-every", "1")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "madloop.cli", "run", *args, "-q", "--no-plots"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def madloop_sweep(config: str, out: str) -> subprocess.Popen:
    """``madloop sweep CONFIG --out OUT`` serially in its own process session (so a kill of
    the session ends it whole), quiet, without plots."""
    return subprocess.Popen(
        [sys.executable, "-m", "madloop.cli", "sweep", config, "--out", out]
        + ["--executor", "serial", "--quiet", "--no-plots"],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_until(
    proc: subprocess.Popen, ready: Callable[[], bool], seconds: float, what: str
) -> None:
    """Poll ``ready()`` until it holds; fail if ``proc`` ends first or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {seconds:.0f} s"
        time.sleep(0.005)
