"""Drawing a run's figures in a second process that starts with the command.

Importing matplotlib and pandas and drawing the figures was about half the wall time of a quick
``madloop run``. So the command starts this worker before it even reads its config: the worker
imports what drawing needs (and draws one throw-away figure, which loads the fonts) on the
machine's other core while the run goes on, then waits for the run directory, draws its
``plots/`` from ``summary.csv`` with :func:`madloop.report.plots.write_run_plots` (the very
function an in-process draw uses) and answers with the timings. A worker that cannot start, dies
or fails is reported by :meth:`PlotWorker.draw` raising :class:`PlotWorkerFailed`; the command
then draws in its own process, so the figures never depend on the worker.

Protocol: one JSON line in (``{"run_dir": ..., "figures": ..., "fmt": ...}``), one JSON line out
(``{"timings": {...}}`` or ``{"error": "..."}``). The worker exits after one job, or as soon as
its stdin closes (the command finished without plots, failed, or was killed).

``MADLOOP_PLOT_WORKER=0`` in the environment turns the worker off (the test suite does, to keep
one process per test).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ENV_SWITCH = "MADLOOP_PLOT_WORKER"


class PlotWorkerFailed(RuntimeError):
    """The worker could not draw; the caller draws in its own process instead."""


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def job_of(
    run_dir: str | os.PathLike, figures: str | os.PathLike | None, fmt: str
) -> dict[str, Any]:
    """The one line the worker reads: where to draw from, where else to draw to, and as what."""
    return {
        "run_dir": str(Path(run_dir).resolve()),
        "figures": None if figures is None else str(Path(figures).resolve()),
        "fmt": fmt,
    }


class PlotWorker:
    """A drawing process, started now, given one run directory later: :meth:`submit` hands it
    over as soon as the summary is written, :meth:`draw` waits for the figures."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "madloop.report.plot_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        except OSError:
            self.proc = None
        self.job: dict[str, Any] | None = None  # the job handed over, once it is

    def submit(
        self, run_dir: str | os.PathLike, figures: str | os.PathLike | None, fmt: str
    ) -> None:
        """Hand the worker its job now (``run_dir/summary.csv`` written) and return at once:
        it draws while the command writes the rest; :meth:`draw` collects the answer."""
        if self.proc is None or self.job is not None:
            return
        self.job = job_of(run_dir, figures, fmt)
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(self.job) + "\n")
            self.proc.stdin.flush()  # communicate() closes it: one job, then the worker ends
        except OSError:  # a worker that died: draw() reports it
            pass

    def submit_with(
        self, figures: str | os.PathLike | None, fmt: str
    ) -> Callable[[str | os.PathLike], None]:
        """:meth:`submit` of a run directory still to be written (``madloop.run``'s
        ``on_summary``)."""
        return lambda run_dir: self.submit(run_dir, figures, fmt)

    def draw(
        self, run_dir: str | os.PathLike, figures: str | os.PathLike | None, fmt: str
    ) -> dict[str, float]:
        """Draw ``run_dir``'s figures (and ``figures`` as ``fmt``) in the worker; its timings.
        A job already handed over by :meth:`submit` is waited for, not asked again."""
        if self.proc is None:
            raise PlotWorkerFailed("the plot worker did not start")
        if self.job is not None and self.job != job_of(run_dir, figures, fmt):
            self.close()
            raise PlotWorkerFailed("the plot worker was given another job")
        self.submit(run_dir, figures, fmt)
        try:
            out, err = self.proc.communicate(timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.close()
            raise PlotWorkerFailed(f"the plot worker did not answer ({e})") from None
        self.proc = None  # communicate() waited for it to end
        try:
            answer = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise PlotWorkerFailed(
                f"the plot worker ended without an answer: {err[-500:]}"
            ) from None
        if "error" in answer:
            raise PlotWorkerFailed(answer["error"])
        return {str(k): float(v) for k, v in answer["timings"].items()}

    def close(self) -> None:
        """End the worker if it is still running (a command that draws nothing after all, or
        that failed after handing over its job)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.proc = None


@contextlib.contextmanager
def drawing_process(plots: bool) -> Iterator[PlotWorker | None]:
    """A :class:`PlotWorker` started now (None when nothing will be drawn or the worker is
    switched off), ended when the block ends whether or not it drew."""
    worker = PlotWorker() if plots and enabled() else None
    try:
        yield worker
    finally:
        if worker is not None:
            worker.close()


def write_plots(
    result: Any,
    figures: str | os.PathLike | None,
    fmt: str,
    worker: PlotWorker | None,
    *,
    say: Callable[[str], None] = print,
) -> None:
    """``result.write_plots`` (a :class:`madloop.RunResult`'s) by ``worker`` when there is
    one and it works, else in this process; ``say`` hears why the worker did not draw."""
    if worker is not None:
        try:
            result.write_plots(figures, fmt, draw=worker.draw)
            return
        except PlotWorkerFailed as e:
            say(str(e))
    result.write_plots(figures, fmt)


def serve() -> None:
    """The worker's side: import, warm up, draw one job from stdin, answer on stdout."""
    import io

    from matplotlib.figure import Figure

    import madloop.report.plots  # noqa: F401  (imported now, while the run goes on)

    warm = Figure(figsize=(2, 2), dpi=50)
    warm.add_subplot().set_title("warm-up")  # loads the font and the Agg canvas
    warm.savefig(io.BytesIO(), format="png")
    line = sys.stdin.readline()
    if not line.strip():
        return  # the command ended without asking: nothing to draw
    job: dict[str, Any] = json.loads(line)
    try:
        timings = draw_in_two(job["run_dir"], job["figures"], job["fmt"])
    except Exception as e:  # noqa: BLE001  (answered; the command draws in-process instead)
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return
    print(json.dumps({"timings": timings}), flush=True)


def draw_in_two(
    run_dir: str | os.PathLike, figures: str | os.PathLike | None, fmt: str
) -> dict[str, float]:
    """:func:`madloop.report.plots.write_run_plots`, with every other figure drawn by a forked
    copy of this process: when the job comes the command only waits, so its core is free, and
    the copy shares the imports and the warm fonts (POSIX; elsewhere, or with one core or one
    figure, all are drawn here). A copy that fails has its figures drawn here."""
    from madloop.report.plots import check_format, draw_run_figures, summary_metrics
    from madloop.storage import RunDir
    from madloop.tables import read_csv_table

    check_format(fmt)
    t0 = time.perf_counter()
    summary = read_csv_table(RunDir(run_dir).summary)
    names = summary_metrics(summary)
    theirs: list[str] = []
    child = 0
    if len(names) > 1 and hasattr(os, "fork") and (os.cpu_count() or 1) > 1:
        theirs = names[1::2]
        child = os.fork()
        if child == 0:  # the copy: draw its share, report by exit status only
            code = 1
            try:
                draw_run_figures(summary, run_dir, figures, fmt, theirs)
                code = 0
            finally:
                os._exit(code)
    draw_run_figures(summary, run_dir, figures, fmt, [n for n in names if n not in theirs])
    if child:
        _, status = os.waitpid(child, 0)
        if status != 0:
            draw_run_figures(summary, run_dir, figures, fmt, theirs)
    return {"plots": round(time.perf_counter() - t0, 4)}


if __name__ == "__main__":
    serve()
    # answered: end as multiprocessing's workers do, without the interpreter's teardown (its
    # last collections over matplotlib's objects took 0.1 s; the command waits for this exit)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
