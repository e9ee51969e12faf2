"""The researcher's workbench: intervals of the mean, the real-data floor (generation 0),
verdicts from every suite, the metric glossary, ``madloop.load`` and figures as files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import madloop
from madloop import experiment
from madloop.experiment import run
from madloop.glossary import GLOSSARY, markdown
from madloop.report import findings as fnd
from madloop.tables import summarize

GRID = {
    "name": "grid",
    "seed": 4,
    "generations": 3,
    "replicates": 3,
    "data": {"source": "grid", "eval_size": 150},
    "model": {"family": "gaussian"},
    "loop": {"regime": "fully-synthetic", "synthetic_size": 150},
}


# -- the interval of the mean ---------------------------------------------------------------------
def test_ci_is_the_student_t_interval_and_leaves_the_other_columns_alone():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "arm": "a",
            "generation": np.repeat([1, 2, 3], 7),
            "metric": "m",
            "value": rng.normal(size=21),
        }
    )
    frame.loc[3, "value"] = np.nan  # a stopped chain: left out of n
    frame = pd.concat([frame, pd.DataFrame([{"arm": "a", "generation": 4, "metric": "m",
                                             "value": 1.0}])], ignore_index=True)  # fmt: skip
    s = summarize(frame)
    for g, rows in frame.groupby("generation"):
        v = rows["value"].dropna().to_numpy()
        row = s[s["generation"] == g].iloc[0]
        # the columns that were there before are what they were (pandas' own median, quantile)
        assert row["mean"] == pytest.approx(v.mean(), rel=1e-14) and row["n"] == v.size
        assert row["median"] == rows["value"].median()
        assert row["q05"] == rows["value"].quantile(0.05)
        if v.size < 2:
            assert np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])
            continue
        lo, hi = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
        assert row["ci_low"] == pytest.approx(lo, rel=1e-12)
        assert row["ci_high"] == pytest.approx(hi, rel=1e-12)
    from madloop.storage.layout import SUMMARY_COLUMNS

    assert list(s.columns) == SUMMARY_COLUMNS


def test_ci_of_the_mean_covers_the_true_mean_about_95_percent_of_the_time():
    """200 independent groups of 8 exact Gaussian chains (λ = 1, unbiased estimator, so
    E[trace ratio] = 1 every generation; the theory column says so): the 95% t interval of
    each group's mean holds 1 in 95% of groups, within 3 binomial standard errors."""
    groups, R = 200, 8
    cfg = {
        "name": "coverage",
        "seed": 11,
        "generations": 2,
        "replicates": groups * R,
        "data": {"source": "gaussian", "dim": 3},
        "model": {"family": "gaussian", "mode": "exact"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 200},
    }
    result = run(cfg)
    theory = result.summary.query("metric == 'trace_ratio' and generation == 2")["theory"]
    assert float(theory.iloc[0]) == pytest.approx(1.0)
    m = result.metrics.query("metric == 'trace_ratio' and generation == 2").copy()
    m["arm"] = m["replicate"] // R  # each group of R chains is one independent "run"
    s = summarize(m)
    assert (s["n"] == R).all() and len(s) == groups
    covered = ((s["ci_low"] <= 1.0) & (1.0 <= s["ci_high"])).mean()
    se = np.sqrt(0.95 * 0.05 / groups)
    assert abs(covered - 0.95) <= 3 * se, covered
    # the spread of chains is no interval of the mean: it is far wider
    assert ((s["q95"] - s["q05"]) > (s["ci_high"] - s["ci_low"]) / 2).all()


# -- the real-data floor ------------------------------------------------------------------------
def test_generation_zero_is_real_data_measured_as_a_model():
    from madloop.config import parse
    from madloop.engines import real_source
    from madloop.floor import FLOOR
    from madloop.metrics.manifold import prdc
    from madloop.metrics.mixture2d import mode_metrics

    result = run(GRID)
    zero = result.metrics[result.metrics["generation"] == 0]
    assert set(zero["metric"]) >= {"precision", "recall", "modes_covered", "trace_ratio"}
    base, arms = parse(GRID)
    real = real_source(arms[0].config)
    rng = np.random.default_rng(np.random.SeedSequence(4, spawn_key=(arms[0].stream, 0, FLOOR)))
    X = real.sample_points(150, replicates=3, rng=rng).X
    ref = real.sample_points(150, replicates=3, rng=rng).X
    for r in range(3):
        want = prdc(ref[r], X[r], k=5)
        got = zero[zero["replicate"] == r].set_index("metric")["value"]
        assert got["precision"] == want["precision"] and got["recall"] == want["recall"]
        modes = mode_metrics(real.mode_distance(X[r]), real.mode_share)["modes_covered"]
        assert got["modes_covered"] == modes
    s = result.summary
    assert s[s["generation"] == 0]["metric"].tolist() == list(zero["metric"].unique())
    # 150 real points do not always fill all 25 modes: why a floor is worth reporting
    assert 20 <= s.query("generation == 0 and metric == 'modes_covered'")["mean"].iloc[0] <= 25


def test_the_floor_changes_no_trajectory(monkeypatch):
    with_floor = run(GRID).metrics
    monkeypatch.setattr(experiment, "engine_floor", lambda engine, names=None: {})
    without = run(GRID).metrics
    trained = with_floor[with_floor["generation"] > 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(trained, without)


def test_exact_gaussian_runs_have_no_floor_and_categorical_floors_are_the_real_law():
    gauss = run({**GRID, "data": {"source": "gaussian", "dim": 2}})
    assert gauss.summary["generation"].min() == 1  # moments, not samples: nothing to floor
    cat = run(
        {
            "name": "cat", "seed": 1, "generations": 2, "replicates": 2,
            "data": {"source": "categorical", "symbols": 40},
            "model": {"family": "categorical"},
            "loop": {"regime": "fully-synthetic", "synthetic_size": 50},
        }
    )  # fmt: skip
    zero = cat.summary[cat.summary["generation"] == 0].set_index("metric")["mean"]
    assert zero["tv_distance"] == 0 and zero["support_size"] == 40
    assert zero["tail_mass"] == pytest.approx(1.0)


# -- verdicts -------------------------------------------------------------------------------------
def _rows(metric, values, floor=None):
    gens = np.arange(1, len(values) + 1)
    frame = pd.DataFrame({"arm": "a", "generation": gens, "metric": metric,
                          "mean": np.asarray(values, float), "median": np.asarray(values, float),
                          "std_error": 0.01, "q05": np.nan, "q95": np.nan, "n": 10,
                          "theory": np.nan})  # fmt: skip
    if floor is not None:
        frame = pd.concat([frame.iloc[:1].assign(generation=0, mean=floor, median=floor), frame])
    return frame


def test_a_diverging_variance_is_not_stable():
    f = fnd.arm_finding("a", _rows("trace_ratio", np.linspace(1.0, 3.06, 10)))
    assert f.verdict == "diverging" and f.decided_by == "trace_ratio"
    assert "306%" in f.sentences[0]


def test_a_lost_mode_and_a_recall_collapse_outvote_a_stable_trace():
    trace = _rows("trace_ratio", np.ones(10))
    modes = fnd.arm_finding("a", pd.concat([trace, _rows("modes_covered", np.linspace(25, 20, 10),
                                                          floor=25)]))  # fmt: skip
    assert modes.verdict == "shrinking" and modes.decided_by == "modes_covered"
    recall = fnd.arm_finding("a", pd.concat([trace, _rows("recall", np.linspace(0.9, 0.3, 10),
                                                           floor=0.95)]))  # fmt: skip
    assert recall.verdict == "collapsed" and recall.decided_by == "recall"
    assert any("real data 0.95" in s for s in recall.sentences)
    steady = fnd.arm_finding("a", pd.concat([trace, _rows("recall", np.full(10, 0.9), 0.95)]))
    assert steady.verdict == "stable" and steady.decided_by == "trace_ratio"


def test_a_perplexity_rise_degrades():
    f = fnd.arm_finding("a", _rows("perplexity", np.linspace(20, 34, 8)))
    assert f.verdict == "degrading" and f.decided_by == "perplexity"


# -- glossary, load, plot, report ---------------------------------------------------------------
def test_docs_metrics_page_is_the_glossary():
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    assert page.read_text(encoding="utf-8") == markdown()
    assert "KL(real ‖ model)" in GLOSSARY["kl_divergence"].definition
    assert "KL(model ‖ real)" in GLOSSARY["kl_to_real"].definition


def test_load_plot_report_and_notebook_view(tmp_path):
    out = tmp_path / "run"
    run(GRID, out=out)
    res = madloop.load(out)
    assert isinstance(res, madloop.RunResult) and res.config.name == "grid"
    assert set(res.summary["metric"]) <= set(res.manifest["glossary"])
    ax = res.plot("precision")
    styles = {line.get_linestyle() for line in ax.get_lines()}
    assert ":" in styles  # the real-data floor
    labels = ax.get_legend_handles_labels()[1]
    assert "95% CI of the mean" in labels and "5-95% of chains" in labels
    assert "real data (generation 0)" in labels
    page = res.report(tmp_path / "r.html")
    assert page.exists() and "95% CI of the mean" in page.read_text(encoding="utf-8")
    html = res._repr_html_()
    assert "<table>" in html and "real data" in html and "precision" in html
    assert madloop.load_config({"name": "x"}) == {"name": "x"}
    with pytest.raises(ValueError, match="not in this run"):
        res.plot("perplexity")


def test_figures_as_svg_from_run_and_report(tmp_path):
    from typer.testing import CliRunner

    from _toml import to_toml
    from madloop.cli import app

    cfg = tmp_path / "grid.toml"
    cfg.write_text(to_toml(GRID), encoding="utf-8")
    runner = CliRunner()
    figs = tmp_path / "figs"
    done = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run"), "-q",
                               "--figures", str(figs), "--format", "svg"])  # fmt: skip
    assert done.exit_code == 0, done.output
    svg = figs / "precision.svg"
    assert svg.exists() and "<svg" in svg.read_text(encoding="utf-8")[:500]
    rep = tmp_path / "rep"
    done = runner.invoke(app, ["report", str(tmp_path / "run"), "--figures", str(rep),
                               "--format", "svg"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert list(rep.glob("*.svg"))
    bad = runner.invoke(app, ["report", str(tmp_path / "run"), "--figures", str(rep),
                              "--format", "gif"])  # fmt: skip
    assert bad.exit_code == 2 and "--format" in bad.output


def test_a_sweep_summary_is_over_seeds_times_chains(tmp_path):
    from madloop.sweeps import sweep

    cfg = {
        "name": "sw", "seed": 2, "generations": 2, "replicates": 3,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "gaussian", "mode": "exact"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 20},
        "sweep": {"seeds": 2, "grid": {"sampling.bias": [1.0, 0.8]}},
    }  # fmt: skip
    result = sweep(cfg, out=tmp_path / "sw", executor="serial")
    s = result.summary
    assert (s["n"] == 6).all()  # 2 seeds x 3 chains in every cell
    on_disk = pd.read_csv(tmp_path / "sw" / "sweep_summary.csv")
    assert len(on_disk) == len(s) and {"ci_low", "ci_high", "theory"} <= set(on_disk.columns)
    cell = result.results.query("`sampling.bias` == 0.8 and generation == 2 and "
                                "metric == 'trace_ratio'")["value"]  # fmt: skip
    row = s.query("`sampling.bias` == 0.8 and generation == 2 and metric == 'trace_ratio'")
    lo, hi = stats.t.interval(0.95, 5, loc=cell.mean(), scale=stats.sem(cell))
    assert row["ci_low"].iloc[0] == pytest.approx(lo)
    assert row["ci_high"].iloc[0] == pytest.approx(hi)
    assert np.isfinite(row["theory"].iloc[0])


def test_a_run_directory_from_before_the_intervals_still_loads_and_plots(tmp_path):
    out = tmp_path / "old"
    run(GRID, out=out)
    s = pd.read_csv(out / "summary.csv")
    s = s[s["generation"] > 0].drop(columns=["ci_low", "ci_high"])
    s.to_csv(out / "summary.csv", index=False)
    res = madloop.load(out)
    labels = res.plot("precision").get_legend_handles_labels()[1]
    assert "5-95% of chains" in labels and "95% CI of the mean" not in labels
    assert "<table>" in res._repr_html_()
    assert res.report(tmp_path / "old.html").exists()
