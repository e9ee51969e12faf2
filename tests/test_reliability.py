"""Faults a user meets: a directory already in use, a command refused before it starts."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from _toml import to_toml
from madloop.cli import app
from madloop.storage.lock import DirectoryLock
from processes import madloop_sweep, wait_until

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
    first = madloop_sweep(str(config), str(out))
    lock = out / ".madloop.lock"
    try:
        wait_until(first, lambda: lock.exists() and "pid" in lock.read_text(), 60, "lock taken")
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


def one_long_task(path: Path, generations: int = 400) -> Path:
    """A sweep of one task that runs long enough to be killed in the middle."""
    cfg = {
        "name": "long",
        "seed": 5,
        "generations": generations,
        "replicates": 40,
        "data": {"source": "gaussian", "dim": 3},
        "model": {"family": "gaussian", "mode": "sample"},
        "loop": {"regime": "fresh-data", "real_size": 20, "synthetic_size": 100},
        "sweep": {"seeds": 1, "grid": {"sampling.bias": [0.9]}},
    }
    path.write_text(to_toml(cfg))
    return path


def test_a_sweep_killed_mid_task_resumes_that_task_from_its_checkpoint(tmp_path):
    import pandas as pd

    from madloop.sweeps import sweep

    config = one_long_task(tmp_path / "long.toml")
    out = tmp_path / "sweep"
    proc = madloop_sweep(str(config), str(out))
    task_dir = out / "tasks" / "sampling.bias=0.9" / "seed=0"

    def past_60() -> bool:
        found = glob.glob(f"{task_dir}/checkpoints/*/gen*/index.json")  # races the writer
        return max((int(Path(p).parent.name[3:]) for p in found), default=0) >= 60

    try:
        wait_until(proc, past_60, 120, "checkpoint past generation 60")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (task_dir / "manifest.json").exists()  # killed mid-task

    resumed = sweep(config, out=out, executor="serial")
    manifest = json.loads((task_dir / "manifest.json").read_text())
    went_on = manifest["resumed_from"]["base"]
    assert 60 <= went_on < 400  # it recomputed only the generations after its last checkpoint
    assert not (task_dir / "checkpoints").exists()  # a finished task keeps no checkpoints
    fresh = sweep(config, out=tmp_path / "fresh", executor="serial")
    assert fresh.status == {"sampling.bias=0.9/seed=0": "done"}
    pd.testing.assert_frame_equal(resumed.results, fresh.results)
