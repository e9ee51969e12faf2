"""`madloop run` draws its figures in a worker process started with the command; the figures are
the same as an in-process draw, and a worker that fails leaves the command drawing them itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from madloop.cli import app
from madloop.metrics.gaussian import GAUSSIAN_METRICS
from madloop.report import plot_worker
from madloop.report.plot_worker import PlotWorker, PlotWorkerFailed
from madloop.storage import read_json

CFG = """
name = "drawn"
seed = 3
generations = 4
replicates = 5
[data]
source = "gaussian"
dim = 2
[model]
family = "gaussian"
mode = "exact"
[loop]
regime = "fully-synthetic"
synthetic_size = 20
"""


def run_cli(tmp_path: Path, name: str, *extra: str):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CFG)
    out = tmp_path / name
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(out), "-q", *extra])
    assert res.exit_code == 0, res.output
    return out, res


def test_the_worker_draws_what_an_in_process_draw_draws(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(plot_worker.ENV_SWITCH, "0")
    here, _ = run_cli(tmp_path, "here")
    monkeypatch.setenv(plot_worker.ENV_SWITCH, "1")
    started = []
    monkeypatch.setattr(PlotWorker, "__init__", _spy(PlotWorker.__init__, started))
    there, res = run_cli(tmp_path, "there", "--figures", str(tmp_path / "paper"), "--format", "svg")
    assert started and "drawing here instead" not in res.output
    names = sorted(p.name for p in (here / "plots").iterdir())
    assert names == sorted(p.name for p in (there / "plots").iterdir()) and names
    assert sorted(p.stem for p in (tmp_path / "paper").iterdir()) == [Path(n).stem for n in names]
    assert read_json(there / "manifest.json")["timings_s"]["plots"] > 0


def test_the_worker_starts_as_soon_as_the_summary_is_written(tmp_path, monkeypatch) -> None:
    """The command hands the worker its job before the metric table is written (the figures
    need only the summary), and collects that job's answer instead of drawing twice."""
    monkeypatch.setenv(plot_worker.ENV_SWITCH, "1")
    seen = []

    def submit(self, run_dir, figures, fmt):
        seen.append(sorted(p.name for p in Path(run_dir).glob("[!.]*") if p.is_file()))
        submit.real(self, run_dir, figures, fmt)

    submit.real = PlotWorker.submit
    monkeypatch.setattr(PlotWorker, "submit", submit)
    out, res = run_cli(tmp_path, "early")
    assert "drawing here instead" not in res.output
    assert seen[0] == ["summary.csv"]  # not yet metrics.parquet, provenance.csv, manifest.json
    assert len(seen) == 2  # draw() submits again: the same job, so the worker is not re-asked
    assert read_json(out / "manifest.json")["timings_s"]["plots"] > 0
    assert sorted(p.stem for p in (out / "plots").iterdir()) == sorted(GAUSSIAN_METRICS)


def test_a_worker_handed_one_job_refuses_another(tmp_path) -> None:
    out, _ = run_cli(tmp_path, "one", "--no-plots")
    worker = PlotWorker()
    worker.submit(out, None, "png")
    with pytest.raises(PlotWorkerFailed, match="another job"):
        worker.draw(tmp_path / "two", None, "png")
    assert worker.proc is None  # ended, so the command draws in its own process


def test_no_worker_starts_without_plots(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(plot_worker.ENV_SWITCH, "1")
    started = []
    monkeypatch.setattr(PlotWorker, "__init__", _spy(PlotWorker.__init__, started))
    out, _ = run_cli(tmp_path, "bare", "--no-plots")
    assert not started and not (out / "plots").exists()


def test_a_failing_worker_leaves_the_command_drawing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(plot_worker.ENV_SWITCH, "1")

    def broken(self, run_dir, figures, fmt):
        raise PlotWorkerFailed("it fell over")

    monkeypatch.setattr(PlotWorker, "draw", broken)
    out, res = run_cli(tmp_path, "fallback")
    assert "drawing here instead (it fell over)" in " ".join(res.output.split())
    assert any((out / "plots").glob("*.png"))


def test_the_worker_reports_what_went_wrong(tmp_path) -> None:
    worker = PlotWorker()
    with pytest.raises(PlotWorkerFailed, match="summary"):
        worker.draw(tmp_path / "not-a-run", None, "png")  # no summary.csv to draw from
    idle = PlotWorker()
    idle.close()  # a worker never asked ends at once
    assert idle.proc is None


FORKED_DRAW = """
import os, sys
from madloop.report import plot_worker, plots
parent, real = os.getpid(), plots.draw_run_figures
def draw(summary, run_dir, figures, fmt, metrics=None):
    if os.getpid() != parent and sys.argv[2] == "fail":
        raise RuntimeError("the copy fell over")
    real(summary, run_dir, figures, fmt, metrics)
plots.draw_run_figures = draw
plot_worker.draw_in_two(sys.argv[1], None, "png")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the worker forks on POSIX only")
@pytest.mark.parametrize("copy", ["draws", "fail"])
def test_the_worker_and_its_forked_copy_draw_every_figure(tmp_path, monkeypatch, copy) -> None:
    monkeypatch.setenv(plot_worker.ENV_SWITCH, "0")
    here, _ = run_cli(tmp_path, "here")
    out, _ = run_cli(tmp_path, "split", "--no-plots")
    subprocess.run([sys.executable, "-c", FORKED_DRAW, str(out), copy], check=True)
    names = sorted(p.name for p in (here / "plots").iterdir())
    assert len(names) > 1 and names == sorted(p.name for p in (out / "plots").iterdir())


def _spy(init, calls: list):
    def wrapped(self, *a, **k):
        calls.append(1)
        init(self, *a, **k)

    return wrapped
