"""Write faults: a full disk, and a process killed while it writes.

The one atomic writer (``madloop.storage.files``) is where faults are injected: a full disk is an
``OSError(ENOSPC)`` raised by :func:`madloop.storage.files.write_file` (the one place bytes reach
the disk); a kill mid-write is a writer that has written half the bytes of its temporary file
when the process is SIGKILLed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import madloop.checkpoint as checkpoint
import madloop.storage.files as files
from madloop.cli import main
from madloop.experiment import run as experiment_run
from madloop.storage.files import StorageFull


def run(*args, **kwargs):
    """``madloop.run`` checkpointed after every generation unless a test says otherwise (the
    default cadence is timed): these tests crash at, count and corrupt known checkpoints."""
    kwargs.setdefault("checkpoint_every", 1)
    return experiment_run(*args, **kwargs)


def config(generations: int = 8) -> dict:
    return {
        "name": "disk",
        "seed": 4,
        "generations": generations,
        "replicates": 6,
        "data": {"source": "gaussian", "dim": 3},
        "model": {"family": "gaussian", "mode": "sample"},
        "loop": {"regime": "fresh-data", "real_size": 10, "synthetic_size": 30},
    }


def fill_disk_after(monkeypatch, writes: int) -> list[Path]:
    """Let ``writes`` files through, then every write fails with ENOSPC."""
    real = files.write_file
    seen: list[Path] = []

    def write_file(path: Path, data: bytes, *, fsync: bool) -> None:
        seen.append(path)
        if len(seen) > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data, fsync=fsync)

    monkeypatch.setattr(files, "write_file", write_file)
    return seen


def test_a_full_disk_stops_the_run_with_the_path_and_resume_is_bit_identical(tmp_path, monkeypatch):
    reference = run(config(), out=tmp_path / "reference").metrics
    out = tmp_path / "run"
    fill_disk_after(monkeypatch, writes=17)  # a few generations' checkpoints, then full
    with pytest.raises(StorageFull) as caught:
        run(config(), out=out)
    message = str(caught.value)
    assert f"no space left to write {out}" in message
    assert "it needs about" in message and "free" in message and "--resume" in message
    assert not (out / "metrics.parquet").exists()  # the run did not pretend to finish
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # the failed write left no temporary file behind

    monkeypatch.undo()  # space is freed
    resumed = run(config(), out=out, resume=True)
    assert resumed.manifest["resumed_from"]["base"] > 0  # it went on from a checkpoint
    pd.testing.assert_frame_equal(resumed.metrics, reference)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet"), reference)


def test_the_cli_says_the_disk_is_full_without_a_traceback(tmp_path, monkeypatch, capsys):
    from _toml import to_toml

    path = tmp_path / "disk.toml"
    path.write_text(to_toml(config()))
    fill_disk_after(monkeypatch, writes=5)
    monkeypatch.setattr(sys, "argv", ["madloop", "run", str(path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as code:
        main()
    assert code.value.code == 1
    err = capsys.readouterr().err
    assert "error: no space left to write" in err and "Traceback" not in err


def test_a_full_disk_in_a_sweep_stops_it_and_the_sweep_resumes(tmp_path, monkeypatch):
    from madloop.sweeps import sweep

    cfg = {**config(4), "sweep": {"seeds": 3}}
    reference = sweep(cfg, out=tmp_path / "reference", executor="serial").results
    # tasks checkpoint after every generation (no share of time is too much), so the disk
    # fills after a task's first checkpoints and before its end
    monkeypatch.setattr(checkpoint, "AUTO_SHARE", math.inf)
    fill_disk_after(monkeypatch, writes=12)
    with pytest.raises(StorageFull):
        sweep(cfg, out=tmp_path / "sweep", executor="serial")
    monkeypatch.undo()
    again = sweep(cfg, out=tmp_path / "sweep", executor="serial")
    assert again.errors == {} and again.ran + again.reused == 3
    went_on = [
        json.loads(m.read_text())["resumed_from"]["base"]
        for m in (tmp_path / "sweep" / "tasks").glob("**/manifest.json")
    ]
    assert max(went_on) > 0  # the task the disk stopped went on from its last checkpoint
    pd.testing.assert_frame_equal(again.results, reference)


# -- killed while writing -------------------------------------------------------------------------
HANG = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import pandas as pd
    import madloop.storage.files as files
    target = os.environ["HANG_ON"]
    real_write, real_parquet = files.write_file, pd.DataFrame.to_parquet

    def hang(path, data):
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        print("HALF", flush=True)
        time.sleep(600)

    def write_file(path, data, *, fsync):
        if Path(path).name.startswith("." + target):
            hang(path, data)
        real_write(path, data, fsync=fsync)

    def to_parquet(self, path, *args, **kwargs):
        real_parquet(self, path, *args, **kwargs)
        if Path(path).name.startswith("." + target):
            hang(path, Path(path).read_bytes())

    files.write_file = write_file
    pd.DataFrame.to_parquet = to_parquet
    from madloop.cli import main
    sys.argv = ["madloop", *sys.argv[1:]]
    main()
    """
)


@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("summary.csv", "run"),
        ("results.parquet", "sweep"),
        ("report.html", "report"),
    ],
)
def test_a_kill_while_writing_leaves_no_truncated_file(tmp_path, target, command):
    from _toml import to_toml

    cfg = config(3)
    if command == "sweep":
        cfg["sweep"] = {"seeds": 2}
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    out = tmp_path / "out"
    if command == "report":
        run(cfg, out=out)
        args = ["report", str(out)]
    elif command == "run":
        args = ["run", str(path), "--out", str(out), "-q", "--no-plots"]
    else:
        args = ["sweep", str(path), "--out", str(out), "-q", "--no-plots", "--executor", "serial"]
    proc = subprocess.Popen(
        [sys.executable, "-c", HANG, *args],
        env={**os.environ, "HANG_ON": target, "RAY_USAGE_STATS_ENABLED": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "HALF" not in line:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            line = proc.stdout.readline()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    final = out / target
    assert not final.exists(), f"{final} exists after a kill in the middle of writing it"
    partial = list(out.glob(f".{target}.*.tmp*"))
    assert partial, "the half-written bytes went to a temporary file"
    assert all(p.stat().st_size > 0 for p in partial)
