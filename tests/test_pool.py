"""The web-pool engine: provenance and reach of every training set, laws against the fresh-data
loop, the Gaussian theory against simulation, curation, starvation, configs and the run dir."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from madloop.config import ConfigError, parse
from madloop.experiment import run
from madloop.pool import WebPool, build_pool
from madloop.theory.pool import curation_contraction
from toy_models import ToyDiagonal

ROOT = Path(__file__).resolve().parents[1]


def config(loop: dict, *, model: dict | None = None, arms=None, **top) -> dict:
    return {
        "name": "pool-test",
        "seed": top.pop("seed", 11),
        "generations": top.pop("generations", 6),
        "replicates": top.pop("replicates", 200),
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "gaussian", "mode": "exact", **(model or {})},
        "loop": {"regime": "web-pool", **loop},
        "arms": arms or [],
        **top,
    }


def pool_of(cfg: dict):
    _, arms = parse(cfg)
    return build_pool(arms[0])


# -- provenance and reach -------------------------------------------------------------------------
MIXED = {
    "scrape_size": 60,
    "adoption": {"kind": "linear", "start": 0.3, "end": 0.9, "ramp": 4},
    "max_age": 3,
    "detector": {"tpr": 0.4, "fpr": 0.1},
    "lineages": [
        {"name": "A"},
        {"name": "B", "lag": 1, "bias": 0.8, "weight": 2.0},
        {"name": "C", "lag": 3, "watermark": True},
    ],
}


def test_training_sets_have_the_recorded_provenance_and_only_reachable_content():
    loop = pool_of(config(MIXED, model={"mode": "sample"}, replicates=40, generations=8))
    assert not loop.exact
    n, A = 60, 3
    det = loop.detector
    for _ in range(8):
        records = loop.step()
        t = loop.generation
        for rec, lin in zip(records, loop.lineages, strict=True):
            points, published = loop.last_train[lin.spec.name]
            assert points.size == n and published.shape == points.source.shape
            total = sum(rec.counts.values())
            np.testing.assert_array_equal(total, n)
            # the rows carry exactly the recorded (source, published) counts
            for (source, pub), counts in rec.counts.items():
                rows = (points.source == source) & (published == pub)
                np.testing.assert_array_equal(rows.sum(axis=1), counts)
            origin_want = np.where(points.source == 0, 0, published - 1)
            np.testing.assert_array_equal(points.origin, origin_want)
            # reach: nothing published after the lineage's cutoff, nothing aged out by then
            u = max(1, t - lin.spec.lag)
            assert published.max() <= u and published.min() > u - A
            assert points.origin.max() < t  # never its own (or anyone's) generation-t output
            if t == 1:
                assert np.all(points.source == 0)
            assert not np.any(points.source == 3)  # lineage C watermarks: always dropped
            # the counts are Multinomial(n, ρ): check each cohort's mean within 5 SE
            if t >= 2:
                cohorts = loop.schedule.reachable(t, lin.spec.lag)
                w = np.array([c.amount * det.keep_probability(c.source) for c in cohorts])
                rho = w / w.sum()
                for c, r in zip(cohorts, rho, strict=True):
                    got = rec.counts[(c.source, c.published)]
                    se = np.sqrt(n * r * (1 - r) / got.size)
                    assert abs(got.mean() - n * r) <= 5 * se + 1e-12, (t, lin.spec.name, c)


def test_exact_mode_uses_the_same_counts_and_keeps_them_in_its_statistics():
    cfg = config(MIXED, replicates=30, generations=6)
    exact, sample = pool_of(cfg), pool_of(config(MIXED, model={"mode": "sample"}, replicates=30))
    assert exact.exact
    for _ in range(6):
        recs_e, recs_s = exact.step(), sample.step()
        for re_, rs, lin in zip(recs_e, recs_s, exact.lineages, strict=True):
            assert re_.counts.keys() == rs.counts.keys()
            for key in re_.counts:
                np.testing.assert_array_equal(re_.counts[key], rs.counts[key])
            train, _ = exact.last_train[lin.spec.name]
            np.testing.assert_array_equal(train.count, sum(re_.counts.values()))
            by_origin: dict = {}
            for (source, pub), c in re_.counts.items():
                key = (source, 0 if source == 0 else pub - 1)
                by_origin[key] = by_origin.get(key, 0) + c
            assert set(train.provenance) == set(by_origin)
            for key, c in by_origin.items():
                np.testing.assert_array_equal(train.provenance[key], c)


def test_same_seed_same_numbers_and_lineages_have_their_own_streams():
    cfg = config(MIXED, replicates=20, generations=4)
    a, b = run(cfg), run(cfg)
    pd.testing.assert_frame_equal(a.metrics, b.metrics)
    assert set(a.metrics["arm"]) == {"base:A", "base:B", "base:C"}
    other = copy.deepcopy(cfg)
    other["seed"] = 12
    c = run(other)
    assert not np.allclose(a.metrics["value"], c.metrics["value"], equal_nan=True)


# -- laws -----------------------------------------------------------------------------------------
def ks_same_law(result, arm_a: str, arm_b: str, metrics, generations) -> None:
    m = result.metrics
    for metric in metrics:
        for t in generations:
            x = m[(m.arm == arm_a) & (m.metric == metric) & (m.generation == t)]["value"]
            y = m[(m.arm == arm_b) & (m.metric == metric) & (m.generation == t)]["value"]
            assert len(x) == len(y) > 0
            p = stats.ks_2samp(x, y).pvalue
            assert p > 1e-3, (metric, t, p)


def test_perfect_detector_matches_the_fresh_data_loop_in_law():
    """TPR = 1, FPR > 0, refill: every training set is n fresh real items, whatever the pool."""
    n = 30
    cfg = config(
        {"scrape_size": n, "adoption": 0.7, "detector": {"tpr": 1.0, "fpr": 0.3}},
        replicates=1500,
        generations=5,
        arms=[
            {"name": "sample", "model.mode": "sample"},
            {
                "name": "fresh",
                "loop": {"regime": "fresh-data", "real_size": n, "synthetic_size": 0},
            },
        ],
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # the fresh loop's empty synthetic draw
        result = run(cfg)
    for arm in ("base", "sample"):
        ks_same_law(result, arm, "fresh", ["mean_error_sq", "trace_ratio"], [2, 5])
        share = result.metrics.query("arm == @arm and metric == 'synthetic_share'")["value"]
        assert np.all(share == 0.0)
    s = result.summary
    base = s[(s.arm == "base") & (s.metric == "trace_ratio")]["theory"].to_numpy()
    fresh = s[(s.arm == "fresh") & (s.metric == "trace_ratio")]["theory"].to_numpy()
    np.testing.assert_allclose(base, fresh, rtol=1e-12)


def test_detector_that_flags_nothing_matches_the_mixture():
    """No detection, max_age = 1, expected counts: n(1-a) new real items plus n·a samples of the
    previous generation, which is the fresh-data loop with those sizes."""
    cfg = config(
        {"scrape_size": 50, "adoption": 0.4, "max_age": 1, "scrape": "proportional"},
        replicates=1500,
        generations=6,
        arms=[
            {"name": "sample", "model.mode": "sample"},
            {
                "name": "mixture",
                "loop": {"regime": "fresh-data", "real_size": 30, "synthetic_size": 20},
            },
        ],
    )
    result = run(cfg)
    for arm in ("base", "sample"):
        ks_same_law(result, arm, "mixture", ["mean_error_sq", "trace_ratio"], [3, 6])
        share = result.metrics.query("arm == @arm and metric == 'synthetic_share'")
        np.testing.assert_allclose(share[share.generation >= 2]["value"], 0.4, rtol=1e-12)
    s = result.summary.set_index(["arm", "generation", "metric"])["theory"]
    np.testing.assert_allclose(
        s.loc["base"].sort_index().to_numpy(),
        s.loc["sample"].sort_index().to_numpy(),
    )
    for metric in ("trace_ratio", "mean_error_sq"):
        np.testing.assert_allclose(
            s.loc[("base", slice(None), metric)].to_numpy(),
            s.loc[("mixture", slice(None), metric)].to_numpy(),
            rtol=1e-12,
        )


THEORY_CASES = {
    "keep-all": {"adoption": 0.6, "detector": {"tpr": 0.5, "fpr": 0.1}},
    "aging-logistic-bias": {
        "adoption": {"kind": "logistic", "ceiling": 0.9, "midpoint": 3, "steepness": 1.0},
        "max_age": 2,
        "detector": {"tpr": 0.8, "fpr": 0.2},
        "lineages": [{"name": "m", "bias": 0.85}],
    },
    "two-lineages-lag-watermark": {
        "adoption": [0.5, 0.7, 0.8],
        "max_age": 2,
        "detector": {"tpr": 0.3, "fpr": 0.05, "watermark_share": 0.5},
        "lineages": [
            {"name": "A", "scrape_size": 40},
            {
                "name": "B",
                "scrape_size": 20,
                "lag": 1,
                "bias": 0.7,
                "weight": 2.0,
                "model": {"covariance_estimator": "mle"},
            },
        ],
    },
    "no-refill-starving": {
        "scrape_size": 8,
        "adoption": 0.8,
        "max_age": 1,
        "refill": False,
        "detector": {"tpr": 0.9, "fpr": 0.1},
    },
    "proportional-detector": {
        "adoption": 0.5,
        "max_age": 3,
        "scrape": "proportional",
        "detector": {"tpr": 0.6},
    },
}


def assert_theory_matches(result) -> None:
    s = result.summary
    s = s[s.metric.isin(["mean_error_sq", "trace_ratio", "synthetic_share"])]
    assert s["theory"].notna().all()
    checked = s[s.std_error > 1e-9]
    z = (checked["mean"] - checked["theory"]).abs() / checked["std_error"]
    assert set(checked.index) >= set(s[s.metric != "synthetic_share"].index)
    assert z.max() < 4.5, checked.assign(z=z).sort_values("z").tail(3).to_string()
    const = s[s.std_error <= 1e-9]  # e.g. generation 1's share, or proportional counts
    np.testing.assert_allclose(const["mean"], const["theory"], atol=1e-12)


@pytest.mark.parametrize("case", sorted(THEORY_CASES))
def test_gaussian_theory_matches_simulation(case):
    loop = {"scrape_size": 30, **THEORY_CASES[case]}
    assert_theory_matches(run(config(loop, replicates=4000, generations=6, seed=3)))


def test_gaussian_theory_matches_sample_mode():
    """The points path (cohort draws, row assembly, per-replicate shuffles) has the same law."""
    loop = {"scrape_size": 30, **THEORY_CASES["two-lineages-lag-watermark"]}
    cfg = config(loop, model={"mode": "sample"}, replicates=3000, generations=5, seed=4)
    assert_theory_matches(run(cfg))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["keep-all", "two-lineages-lag-watermark", "no-refill-starving"])
def test_gaussian_theory_matches_simulation_long(case):
    loop = {"scrape_size": 30, **THEORY_CASES[case]}
    assert_theory_matches(run(config(loop, replicates=6000, generations=25, seed=8)))


def test_lineages_contaminate_each_other():
    """A lineage alone keeps its variance (λ = 1); sharing the pool with a truncating lineage
    (λ = 0.5) narrows it, in theory and in simulation."""
    alone = {"adoption": 0.8, "max_age": 1}
    shared = {**alone, "lineages": [{"name": "A"}, {"name": "B", "bias": 0.5}]}
    a = run(config(alone, replicates=1000, generations=8)).summary
    b = run(config(shared, replicates=1000, generations=8)).summary

    def last(s, arm):
        row = s[(s.arm == arm) & (s.metric == "trace_ratio") & (s.generation == 8)].iloc[0]
        return row

    solo, mixed = last(a, "base"), last(b, "base:A")
    assert mixed["theory"] < 0.8 * solo["theory"]
    assert mixed["mean"] + 5 * mixed["std_error"] < solo["mean"] - 5 * solo["std_error"]


def test_starving_lineage_keeps_its_model():
    cfg = config(
        {
            "scrape_size": 6,
            "adoption": 0.9,
            "max_age": 1,
            "refill": False,
            "detector": {"tpr": 0.95},
        },
        replicates=300,
        generations=5,
    )
    m = run(cfg).metrics
    wide = m.pivot_table(index=["generation", "replicate"], columns="metric", values="value")
    starved = wide[wide["train_size"] < 2].reset_index()
    assert len(starved) > 20
    for row in starved.itertuples():
        if row.generation == 1:
            continue
        prev = wide.loc[(row.generation - 1, row.replicate)]
        assert row.trace_ratio == prev["trace_ratio"]
        assert row.mean_error_sq == prev["mean_error_sq"]


# -- curation -------------------------------------------------------------------------------------
def test_likelihood_curation_acts_like_a_sampling_bias():
    """Pure self-consumption after generation 1 (adoption 1, max_age 1): keeping the n most likely
    of n / keep candidates shrinks E[Σ] by the order-statistics factor every generation."""
    n, keep, T = 100, 0.5, 4
    cfg = config(
        {"scrape_size": n, "adoption": 1.0, "max_age": 1, "curation": {"keep": keep}},
        model={"mode": "exact"},
        replicates=400,
        generations=T,
        arms=[{"name": "plain", "loop.curation.keep": 1.0, "model.mode": "sample"}],
    )
    result = run(cfg)
    assert result.manifest["modes"]["base"] == "sample"  # curation looks at content
    s = result.summary
    cur = s[(s.arm == "base") & (s.metric == "trace_ratio")].sort_values("generation")
    assert cur["theory"].isna().all()
    c = curation_contraction(2, n, int(n / keep))
    want = c ** (cur["generation"].to_numpy() - 1.0)
    z = np.abs(cur["mean"].to_numpy() - want) / cur["std_error"].to_numpy()
    assert np.all(z[1:] < 4.5), (cur["mean"].to_numpy(), want)
    plain = s[(s.arm == "plain") & (s.metric == "trace_ratio") & (s.generation == T)]
    assert plain["mean"].iloc[0] > 5 * cur["mean"].iloc[-1]


# -- configs, CLI and the run directory ------------------------------------------------------------
BAD = [
    ({"detector": {"tpr": 1.5}}, "loop.detector.tpr"),
    ({"detector": {"tprr": 0.5}}, "loop.detector.tprr: unknown key; did you mean 'tpr'?"),
    ({"lineages": [{"name": "A"}, {"name": "A"}]}, "duplicate lineage name 'A'"),
    ({"real_size": 10}, "loop.real_size: not used by regime 'web-pool'"),
    ({"refill": False, "curation": {"keep": 0.5}}, "loop.refill"),
    ({"lineages": [{"name": "A", "bias": 1.5}]}, "loop.lineages[A].bias"),
    ({"lineages": [{"name": "A", "model": {"family": "nope"}}]}, "loop.lineages[A].model.family"),
    ({"lineages": [{"name": "A", "model": {"mode": "fast"}}]}, "loop.lineages[A].model.mode"),
    ({"adoption": {"kind": "linear", "end": 2.0}}, "loop.adoption: end: input should be less"),
    ({"adoption": {"kind": "sigmoid"}}, "loop.adoption: kind must be one of"),
    ({"adoption": [0.2, 1.5]}, "loop.adoption: a share of generated content must be"),
    ({"lineages": [{"name": "A", "lagg": 1}]}, "did you mean 'lag'?"),
    ({"curation": {"score": "vibes"}}, "loop.curation.score"),
    ({"lineages": [{"name": "a:b"}]}, "loop.lineages"),
]


@pytest.mark.parametrize(("loop", "expected"), BAD, ids=[b[1] for b in BAD])
def test_bad_configs_name_the_field(loop, expected):
    with pytest.raises(ConfigError) as err:
        parse(config(loop))
    assert any(expected in line for line in err.value.problems), err.value.problems


def test_detector_that_leaves_nothing_is_a_config_error():
    cfg = config({"adoption": 1.0, "max_age": 1, "detector": {"tpr": 1.0}})
    with pytest.raises(ConfigError, match="loop.detector: at generation 2"):
        run(cfg)


def test_cli_reports_bad_pool_config(tmp_path):
    from typer.testing import CliRunner

    from madloop.cli import app

    bad = tmp_path / "bad.toml"
    bad.write_text(
        (ROOT / "examples" / "web-pool.toml").read_text().replace("tpr = 0.8", "tpr = 8.0")
    )
    res = CliRunner().invoke(app, ["validate", str(bad)])
    assert res.exit_code == 2
    assert "loop.detector.tpr" in res.output


def test_example_runs_and_writes_the_run_dir(tmp_path):
    from typer.testing import CliRunner

    from madloop.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        ["run", str(ROOT / "examples" / "web-pool.toml"), "--out", str(out)]
        + ["--generations", "3", "--replicates", "8", "-q"],
    )
    assert res.exit_code == 0, res.output
    for name in ("metrics.parquet", "summary.csv", "provenance.csv", "manifest.json"):
        assert (out / name).exists()
    assert (out / "plots" / "synthetic_share.png").exists()
    summary = pd.read_csv(out / "summary.csv")
    arms = set(summary["arm"])
    assert {"base:open", "base:tuned", "base:laggard", "curated:open"} <= arms
    exact = summary[summary.arm.str.startswith(("base:", "detector:", "watermark:"))]
    assert exact[exact.metric == "mean_error_sq"]["theory"].notna().all()
    assert summary[summary.arm.str.startswith("curated:")]["theory"].isna().all()
    prov = pd.read_csv(out / "provenance.csv")
    assert {"published", "origin_generation", "source"} <= set(prov.columns)
    assert set(prov["source"]) <= {"real", "lineage:open", "lineage:tuned", "lineage:laggard"}
    wm = prov[prov.arm.str.startswith("watermark:") & (prov.source == "lineage:open")]
    assert (wm["count_max"] == 0).all()


def test_regime_has_no_single_chain_recipe():
    with pytest.raises(TypeError, match="PoolLoop"):
        WebPool().compose(2)


# -- any family: a toy one-data-set model wrapped by PerReplicate ----------------------------------
@pytest.fixture
def toy_family():
    from typing import Literal

    from madloop.config import ModelConfig
    from madloop.models.base import FAMILIES, FamilySpec, PerReplicate, register_family

    class ToyConfig(ModelConfig):
        family: Literal["toy-diagonal"] = "toy-diagonal"

    def build(config, *, replicates, real):
        return PerReplicate(ToyDiagonal, replicates)

    register_family(FamilySpec("toy-diagonal", ToyConfig, build))
    yield "toy-diagonal"
    FAMILIES.pop("toy-diagonal", None)


def test_lineages_of_different_families_share_the_pool(toy_family):
    loop_cfg = {
        "scrape_size": 40,
        "adoption": 0.8,
        "max_age": 2,
        "lineages": [
            {"name": "gauss"},
            {"name": "toy", "model": {"family": toy_family}, "bias": 0.5},
        ],
    }
    loop = pool_of(config(loop_cfg, replicates=12, generations=5))
    assert not loop.exact  # a family without sufficient statistics: everything in sample mode
    published = {}
    for _ in range(5):
        loop.step()
        t = loop.generation
        toy = loop.lineages[1]
        published[t] = toy.model.get_state()["r0/scale"].copy()
        gauss_train, _ = loop.last_train["gauss"]
        if t >= 2:
            assert np.any(gauss_train.source == 2)  # the toy's content reached the Gaussian
    # a snapshot is frozen: later fits of the live model never change what was published
    for (k, g), sampler in loop.samplers.items():
        if k == 1:
            np.testing.assert_array_equal(sampler.get_state()["r0/scale"], published[g])
    with pytest.raises(ConfigError, match="loop.curation.score"):
        pool_of(config({**loop_cfg, "curation": {"keep": 0.5}}, replicates=4))
