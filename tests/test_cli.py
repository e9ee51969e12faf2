"""The CLI end to end on a tiny config: run, theory, validate, and the run directory's contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import madloop
from madloop.cli import app
from madloop.config import make_regime, parse
from madloop.theory import gaussian as theory

TINY = """\
name = "tiny"
seed = 3
generations = 6
replicates = 20

[data]
source = "gaussian"
dim = 3
mean = [1.0, -1.0, 0.5]
covariance = "random"

[model]
family = "gaussian"
mode = "exact"

[sampling]
bias = 1.0

[loop]
regime = "fully-synthetic"
real_size = 0
synthetic_size = 8

[[arms]]
name = "truncated"
sampling.bias = 0.7

[[arms]]
name = "fresh"
loop.regime = "fresh-data"
loop.real_size = 4

[[arms]]
name = "subsample"
loop.regime = "accumulate-subsample"
loop.real_size = 2
"""
METRICS = {"mean_error_sq", "trace_ratio", "log_det_change", "wasserstein2", "kl_divergence"}
ARMS = ["base", "truncated", "fresh", "subsample"]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.toml"
    config.write_text(TINY)
    out = root / "run"
    result = runner.invoke(
        app, ["run", str(config), "--out", str(out), "--generations", "5"], catch_exceptions=False
    )
    return config, out, result


def test_run_exit_and_files(tiny_run):
    _, out, result = tiny_run
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    for name in ("metrics.parquet", "summary.csv", "provenance.csv", "manifest.json"):
        assert (out / name).is_file(), name
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == sorted(f"{m}.png" for m in METRICS)
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob(".*.tmp*"))  # atomic writes leave no temporary files
    # accumulate-subsample asked for exact: the CLI says it runs in sample mode
    assert "regime 'accumulate-subsample' has no exact simulation" in result.stderr


def test_metrics_parquet(tiny_run):
    _, out, _ = tiny_run
    m = pd.read_parquet(out / "metrics.parquet")
    assert list(m.columns) == ["arm", "generation", "replicate", "metric", "value"]
    assert list(m["arm"].unique()) == ARMS
    assert set(m["metric"]) == METRICS
    assert sorted(m["generation"].unique()) == [1, 2, 3, 4, 5]  # --generations overrides 6
    assert sorted(m["replicate"].unique()) == list(range(20))
    assert len(m) == len(ARMS) * 5 * 20 * len(METRICS)
    assert np.isfinite(m["value"]).all()


def test_summary_csv_matches_metrics_and_theory(tiny_run):
    config, out, _ = tiny_run
    s = pd.read_csv(out / "summary.csv")
    for col in ("arm", "generation", "metric", "mean", "std_error", "median", "q05", "q95", "n"):
        assert col in s.columns
    assert "theory" in s.columns
    m = pd.read_parquet(out / "metrics.parquet")
    g = m.groupby(["arm", "generation", "metric"])["value"]
    merged = s.merge(g.mean().rename("check_mean").reset_index())
    np.testing.assert_allclose(merged["mean"], merged["check_mean"], rtol=1e-12)
    se = g.std(ddof=1) / np.sqrt(g.size())
    merged = s.merge(se.rename("check_se").reset_index())
    np.testing.assert_allclose(merged["std_error"], merged["check_se"], rtol=1e-9)
    assert (s["q05"] <= s["median"]).all() and (s["median"] <= s["q95"]).all()
    assert (s["n"] == 20).all()
    # theory where a closed form exists, equal to the theory module's numbers
    _, arms = parse(config, generations=5)
    base = arms[0].config
    regime = make_regime(base.loop)
    tr = s[(s.arm == "base") & (s.metric == "trace_ratio")].sort_values("generation")
    np.testing.assert_allclose(tr["theory"], theory.expected_moments(regime, 5).trace_ratio)
    ld = s[(s.arm == "truncated") & (s.metric == "log_det_change")].sort_values("generation")
    truncated = arms[1].config
    expected, _ = theory.log_det_drift(make_regime(truncated.loop), 5, 3, bias=0.7)
    np.testing.assert_allclose(ld["theory"], expected)
    assert s[(s.metric == "wasserstein2")]["theory"].isna().all()  # no closed form
    assert s[(s.arm == "fresh") & (s.metric == "log_det_change")]["theory"].isna().all()
    for arm in ARMS:  # E[mean_error_sq] exists for every Gaussian regime
        assert s[(s.arm == arm) & (s.metric == "mean_error_sq")]["theory"].notna().all()


def test_manifest(tiny_run):
    _, out, _ = tiny_run
    man = json.loads((out / "manifest.json").read_text())
    assert man["seed"] == 3
    assert list(man["arms"]) == ARMS
    assert man["arms"]["truncated"]["sampling"]["bias"] == 0.7
    assert man["arms"]["base"]["generations"] == 5
    assert man["config"]["data"]["covariance"] == "random"
    assert man["modes"] == {
        "base": "exact",
        "truncated": "exact",
        "fresh": "exact",
        "subsample": "sample",
    }
    assert {"python", "numpy", "madloop"} <= set(man["versions"])
    assert "git_commit" in man
    assert set(man["timings_s"]["arms"]) == set(ARMS)
    assert man["timings_s"]["total"] > 0


def test_python_api_returns_the_same_tables(tiny_run):
    config, out, _ = tiny_run
    res = madloop.run(config, generations=5)
    m = pd.read_parquet(out / "metrics.parquet")
    pd.testing.assert_frame_equal(res.metrics.reset_index(drop=True), m, check_dtype=False)
    s = pd.read_csv(out / "summary.csv")
    np.testing.assert_allclose(res.summary["mean"].to_numpy(), s["mean"].to_numpy())


def test_seed_override_changes_numbers_reproducibly(tiny_run):
    config, out, _ = tiny_run
    a = madloop.run(config, generations=2, replicates=5, seed=11).metrics
    b = madloop.run(config, generations=2, replicates=5, seed=11).metrics
    c = madloop.run(config, generations=2, replicates=5, seed=12).metrics
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["value"], c["value"])


def test_theory_command(tiny_run):
    config, _, _ = tiny_run
    result = runner.invoke(app, ["theory", str(config), "--every", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    # base at generation 6: log det, E||μ - μ_0||² = tr Σ_0 · 6/8, trace ratio 1
    base6 = next(r for r in rows if r[:2] == ["base", "6"])
    mean, _ = theory.log_det_drift(make_regime(parse(config)[0].loop), 6, 3)
    assert float(base6[2]) == pytest.approx(mean[-1], rel=1e-5)
    assert float(base6[3]) == pytest.approx(3.0 * 6 / 8, rel=1e-5)  # random Σ_0 has trace = dim
    assert float(base6[4]) == pytest.approx(1.0)
    trunc6 = next(r for r in rows if r[:2] == ["truncated", "6"])
    assert float(trunc6[4]) == pytest.approx(0.7**5, rel=1e-5)
    fresh6 = next(r for r in rows if r[:2] == ["fresh", "6"])
    assert fresh6[2] == "-"  # no closed form for log det under fresh data


def test_validate_command(tiny_run):
    config, _, _ = tiny_run
    result = runner.invoke(app, ["validate", str(config)], catch_exceptions=False)
    assert result.exit_code == 0
    assert "truncated: fully-synthetic" in result.output
    assert "λ = 0.7 (variance scale = 0.7)" in result.output


def test_console_script_bad_config(tmp_path):
    """Through the real entry point in a subprocess: exit status 2, one line, no traceback."""
    bad = tmp_path / "bad.toml"
    base_only = TINY.split("[[arms]]")[0]
    bad.write_text(base_only.replace("synthetic_size = 8", "synthetic_size = -5"))
    proc = subprocess.run(
        [sys.executable, "-c", "from madloop.cli import main; main()", "run", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: loop.synthetic_size: must be >= 1, got -5"]
