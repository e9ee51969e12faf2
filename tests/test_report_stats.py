"""The report and the phase diagrams take their statistics from ``madloop.tables.summarize``: a
stopped chain (NaN from some generation on) counts the same in summary.csv, on the page and in
the phase plots. And the plot writers the CLI calls draw the files a run / sweep draws."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from madloop.report import phase
from madloop.report.html import build_report
from madloop.report.parts import fmt, run_summary, sweep_comparison
from madloop.report.phase import write_sweep_plots
from madloop.report.plots import write_run_plots
from madloop.storage import RunDir, write_atomic, write_parquet
from madloop.tables import summarize

GENERATIONS, REPLICATES = 5, 4


def _chains(stop_at: int, **extra) -> list[dict]:
    """Rows of one (arm, metric) long table; chain 0 stops (NaN) from ``stop_at`` on."""
    rows = []
    for g, r in itertools.product(range(1, GENERATIONS + 1), range(REPLICATES)):
        value = np.nan if (r == 0 and g >= stop_at) else 0.9**g * (1 + 0.1 * r)
        rows.append({**extra, "arm": "a", "generation": g, "replicate": r,
                     "metric": "trace_ratio", "value": value})  # fmt: skip
    return rows


def test_a_run_page_shows_summary_csv_standard_errors(tmp_path):
    metrics = pd.DataFrame(_chains(stop_at=3))
    summary = summarize(metrics)
    last = summary[summary["generation"] == GENERATIONS].iloc[0]
    assert last["n"] == REPLICATES - 1  # the stopped chain is left out
    naive = metrics[metrics.generation == GENERATIONS]["value"]
    assert last["std_error"] != pytest.approx(naive.std() / np.sqrt(naive.size))

    full, bare = RunDir(tmp_path / "full"), RunDir(tmp_path / "bare")
    for run in (full, bare):
        write_parquet(metrics, run.metrics)
    write_atomic(full.summary, summary.to_csv(index=False))
    for run in (full, bare):
        got = run_summary(run.path)
        np.testing.assert_allclose(got["std_error"], summary["std_error"], equal_nan=True)
        page = build_report(run.path).read_text()
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
        assert fmt(last["std_error"]) in cells


def _sweep_results() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for x, y, seed in itertools.product([1, 2], [10, 20], [0, 1]):
        stop = 2 if (x, y, seed) == (2, 20, 1) else GENERATIONS + 1
        for row in _chains(stop, **{"a.x": x, "a.y": y, "seed": seed}):
            row["value"] = (
                row["value"] * x + y / 100 + seed / 10 if np.isfinite(row["value"]) else np.nan
            )
            rows.append(row)
    results = pd.DataFrame(rows)
    keys = ["a.x", "a.y", "seed", "arm", "generation", "metric"]
    theory = (
        results.groupby(keys, as_index=False)["value"].mean().rename(columns={"value": "theory"})
    )
    return results, theory


def test_sweep_report_and_phase_plots_use_summarize(tmp_path):
    results, theory = _sweep_results()
    keys = ["a.x", "a.y"]
    want = summarize(results, keys=[*keys, "arm", "generation", "metric"]).set_index(
        keys + ["generation"]
    )
    stopped = want.loc[(2, 20, GENERATIONS)]
    assert stopped["n"] == 2 * REPLICATES - 1  # seeds x chains, less the stopped one

    # the report's comparison with theory
    got = sweep_comparison(results, theory, keys).set_index(keys + ["generation"])
    np.testing.assert_allclose(got["std_error"], want.loc[got.index, "std_error"])
    np.testing.assert_allclose(got["n"], want.loc[got.index, "n"])

    # the phase plots' cells (heatmap, line plot) and the report's sweep sentences
    last = want.xs(GENERATIONS, level="generation")
    table = phase.phase_table(results, "trace_ratio", "a.y", "a.x", generation=GENERATIONS)
    np.testing.assert_allclose(table.set_index(keys)["std_error"], last["std_error"])
    np.testing.assert_allclose(table.set_index(keys)["n"], last["n"])
    cells = phase.cell_means(results, "trace_ratio", keys, None).set_index(keys)
    np.testing.assert_allclose(cells.loc[last.index, "std_error"], last["std_error"])

    sweep = tmp_path / "s"
    write_parquet(results, sweep / "results.parquet")
    write_parquet(theory, sweep / "theory.parquet")
    (sweep / "sweep.json").write_text(
        json.dumps({"config": {"name": "nan"}, "grid": {"a.x": [1, 2], "a.y": [10, 20]}})
    )
    page = build_report(sweep).read_text()
    assert 'id="nan"' in page  # the part's title from sweep.json's "config"
    write_sweep_plots(sweep)
    assert {p.name for p in (sweep / "plots").glob("*.png")} == {
        "heatmap_trace_ratio.png",
        "line_trace_ratio_by_a.x.png",
        "line_trace_ratio_by_a.y.png",
    }


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png")}


def test_write_run_plots_draws_what_a_run_draws(tmp_path):
    from madloop.experiment import run

    cfg = {
        "name": "p", "seed": 2, "generations": 3, "replicates": 4,
        "data": {"source": "gaussian", "dim": 2}, "model": {"family": "gaussian", "mode": "exact"},
        "loop": {"regime": "fully-synthetic", "real_size": 0, "synthetic_size": 10},
    }  # fmt: skip
    run(cfg, out=tmp_path / "with").write_plots()  # what `madloop run` does after the run
    run(cfg, out=tmp_path / "without")
    assert not (tmp_path / "without" / "plots").exists()  # the run itself draws nothing
    timings = write_run_plots(tmp_path / "without")
    assert set(timings) == {"plots"} and timings["plots"] >= 0
    assert _names(tmp_path / "without" / "plots") == _names(tmp_path / "with" / "plots")
    assert len(_names(tmp_path / "with" / "plots")) >= 3


def test_write_sweep_plots_draws_what_a_sweep_draws(tmp_path):
    sweep = pytest.importorskip("madloop.sweeps").sweep
    cfg = {
        "name": "tiny", "seed": 11, "generations": 3, "replicates": 3,
        "data": {"source": "gaussian", "dim": 2}, "model": {"family": "gaussian", "mode": "exact"},
        "loop": {"regime": "fresh-data", "real_size": 10, "synthetic_size": 20},
        "sweep": {"seeds": 1, "grid": {"sampling.bias": [1.0, 0.8], "loop.real_size": [5, 40]}},
    }  # fmt: skip
    sweep(cfg, out=tmp_path / "with", executor="serial").write_plots()  # as `madloop sweep`
    shutil.copytree(tmp_path / "with", tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "plots")
    timings = write_sweep_plots(tmp_path / "again")
    assert set(timings) == {"plots"}
    want = _names(tmp_path / "with" / "plots")
    assert "heatmap_trace_ratio.png" in want and _names(tmp_path / "again" / "plots") == want
