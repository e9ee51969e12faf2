"""Faults a user meets: a directory already in use, a command refused before it starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from _toml import to_toml
from madloop.cli import app
from madloop.storage.lock import DirectoryLock

RUNNER = CliRunner()


def long_sweep(path: Path) -> Path:
    """A sweep whose tasks take a few seconds each, serially: long enough to be caught running."""
    cfg = {
        "name": "busy",
        "seed": 1,
        "generations": 3000,
        "replicates": 50,
        "data": {"source": "gaussian", "dim": 3},
        "model": {"family": "gaussian", "mode": "sample"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 50},
        "sweep": {"seeds": 4},
    }
    path.write_text(to_toml(cfg))
    return path


def test_a_second_sweep_on_a_directory_in_use_is_refused(tmp_path):
    config = long_sweep(tmp_path / "busy.toml")
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "madloop.cli", "sweep", str(config), "--out", str(out)]
    first = subprocess.Popen(
        [*cmd, "--executor", "serial", "--quiet", "--no-plots"],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock = out / ".madloop.lock"
    deadline = time.monotonic() + 60
    try:
        while not (lock.exists() and "pid" in lock.read_text()):
            assert first.poll() is None, "the first sweep ended before the second one started"
            assert time.monotonic() < deadline, "the first sweep never took its lock"
            time.sleep(0.02)
        second = subprocess.run(
            [*cmd, "--executor", "serial", "--no-plots"],
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert first.poll() is None, "the first sweep must still be running"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 2, second.stderr
    assert "being written by another madloop sweep" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    with DirectoryLock(out, what="sweep"):  # free again once the holder is gone
        pass


def test_no_progress_bar_for_a_run_that_did_not_start(tmp_path):
    cfg = {
        "name": "tiny",
        "generations": 3,
        "replicates": 2,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "gaussian"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 10},
    }
    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(cfg))
    out = tmp_path / "run"
    ok = RUNNER.invoke(app, ["run", str(config), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "3/3" in ok.output  # the bar of a run that ran
    refused = RUNNER.invoke(app, ["run", str(config), "--out", str(out)])  # needs --resume
    assert refused.exit_code == 2
    assert "already holds the checkpoints" in refused.output
    assert "/3" not in refused.output and "tiny" not in refused.output.split("error")[0]
