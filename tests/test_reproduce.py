"""``madloop reproduce``: every study parses, the quick runs agree with their references, a wrong
reference makes a row disagree and the command exit 1, bad input exits 2, and the report shows
the comparison first."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from madloop.cli import app
from madloop.config import ConfigError, parse
from madloop.reproduce import (
    FORMULAS,
    MEASURES,
    load_study,
    parse_study,
    reproduce,
    run_study,
    study_names,
)
from madloop.reproduce.measures import StudyData
from madloop.reproduce.runner import COMPARISON_COLUMNS, compare, study_data
from madloop.reproduce.spec import check_names, studies_folder

STUDIES = study_names()
FAST = ["mad-gaussian", "shumailov-gaussian", "mad-processing"]  # a few seconds each, quick


def test_the_studies_are_there():
    assert {"mad-gaussian", "mad-fresh-data", "shumailov-gaussian", "kazdan-replace-accumulate",
            "bertrand-stability", "gerstgrasser-regression", "suresh-survival",
            "seddik-homozygosity", "he-golden-ratio", "dohmatob-tails", "ferbach-curation",
            "gillman-correction", "mad-processing", "mad-guidance"} <= set(STUDIES)  # fmt: skip


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_parses_and_names_known_parts(name):
    study = load_study(name)
    for quick in (False, True):
        _, arms = parse(study.experiment(quick=quick))  # the config validates, both modes
        names = {a.name for a in arms}
        for row in study.rows:
            assert row.measure in MEASURES, row.quantity
            if row.reference.kind == "formula":
                assert row.reference.id in FORMULAS, row.quantity
            for arm in [*row.arms, *([row.baseline] if row.baseline else [])]:
                assert arm.split(":")[0] in names, f"{name}: row {row.quantity!r} arm {arm}"
            T = {a.config.generations for a in arms}
            assert all(g == "last" or 1 <= g <= min(T) for g in row.generations)
    assert study.study.minutes > 0 and study.study.paper


def test_study_files_are_installed_package_data():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "studies/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["madloop"]
    assert any(p.name.endswith(".toml") for p in studies_folder().iterdir())


def test_a_bad_spec_is_a_config_error_naming_the_field():
    text = (studies_folder() / "mad-gaussian.toml").read_text()
    with pytest.raises(ConfigError, match="rows.*reference"):
        parse_study(text.replace('kind = "theory"', 'kind = "folklore"'), "bad.toml")
    with pytest.raises(ConfigError, match="paper reference needs source"):
        parse_study(
            text.replace('{ kind = "theory" }', '{ kind = "paper", value = 1.0 }'), "bad.toml"
        )
    with pytest.raises(ConfigError, match="unknown study 'nope'.*mad-gaussian"):
        load_study("nope")
    bad = parse_study(text.replace('"fully_synthetic_trace_ratio"', '"folklore"'), "bad.toml")
    assert any("unknown formula 'folklore'" in p for p in check_names(bad))
    bad = parse_study(text.replace('arms = ["base", "truncated"]', 'arms = ["basis"]'), "bad")
    assert any("no arm 'basis'" in p for p in check_names(bad))
    bad = parse_study(text.replace("generations = [2, 10,", "generations = [2, 45,"), "bad")
    assert any("generations [45] outside 1..20 in quick mode" in p for p in check_names(bad))


@pytest.mark.parametrize("name", FAST)
def test_a_fast_study_agrees_in_quick_mode(name, tmp_path):
    outcome = run_study(load_study(name), tmp_path, quick=True)
    frame = outcome.comparison
    assert list(frame.columns) == COMPARISON_COLUMNS
    assert len(frame) >= 5
    assert frame["reference_source"].str.startswith(("closed form", "paper")).all()
    bad = frame[~frame["agrees"]]
    assert bad.empty, bad.to_string()


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_every_study_agrees_in_quick_mode(name, tmp_path):
    outcome = run_study(load_study(name), tmp_path, quick=True)
    bad = outcome.comparison[~outcome.comparison["agrees"]]
    assert bad.empty, bad.to_string()


def _wrong(study, value: float):
    """The study with its first row's reference replaced by a paper number ``value``."""
    raw = study.model_dump()
    raw["rows"][0]["reference"] = {"kind": "paper", "value": value, "source": "Fig. 0",
                                   "how": "read off a plot", "precision": 0.01}  # fmt: skip
    return type(study).model_validate(raw)


def test_a_wrong_reference_disagrees(tmp_path):
    study = load_study("mad-gaussian")
    data = study_data(study.experiment(quick=True), None, print)
    right = compare(study, data)
    assert right["agrees"].all()
    base = right["quantity"].iloc[0]  # E tr Σ_t / tr Σ_0 of the λ = 1 arm: 1 at every t
    assert base.endswith("[base]")
    wrong = compare(_wrong(study, 1.5), data)
    first = wrong[wrong["quantity"] == base]
    assert len(first) == 3 and not first["agrees"].any()
    assert first["reference_source"].str.startswith("paper: Fig. 0").all()
    assert wrong.loc[wrong["quantity"] != right["quantity"].iloc[3], "agrees"].sum() > 9
    near = compare(_wrong(study, 1.0), data)  # the true value typed in: agrees again
    assert near.loc[near["quantity"] == base, "agrees"].all()


def test_the_command_exits_1_when_a_row_disagrees_and_the_report_is_red(tmp_path, monkeypatch):
    import madloop.reproduce.runner as runner

    study = load_study("shumailov-gaussian")
    monkeypatch.setattr(runner, "load_study", lambda name: _wrong(study, 0.5))
    out = tmp_path / "rep"
    result = CliRunner().invoke(app, ["reproduce", "shumailov-gaussian", "--quick", "--out",
                                      str(out)])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "disagree" in result.output
    frame = pd.read_csv(out / "comparison.csv")
    assert not frame["agrees"].all() and frame["agrees"].any()
    assert (out / "figures" / "shumailov-gaussian.png").stat().st_size > 1000
    page = _report(out)
    assert page.index('data-section="comparison"') < page.index('data-section="studies"')
    assert '<tr class="disagrees">' in page and '<tr class="agrees">' in page


def _report(out) -> str:
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    return (out / "report.html").read_text()


def test_reproduce_writes_a_comparison_the_report_shows_first(tmp_path):
    out = tmp_path / "rep"
    md = tmp_path / "reproductions.md"
    result = reproduce(["mad-gaussian"], out, quick=True, markdown=md)
    assert result.agrees
    frame = pd.read_csv(out / "comparison.csv")
    assert frame.columns[:9].tolist() == COMPARISON_COLUMNS[:9]
    assert frame["agrees"].all()
    text = md.read_text()
    assert "| mad-gaussian |" in text and "figures/mad-gaussian.png" in text
    page = _report(out)
    first = page.index('data-section="')
    assert page[first:].startswith('data-section="comparison"')
    assert '<tr class="agrees">' in page and '<tr class="disagrees">' not in page
    assert "runs/mad-gaussian" in page  # the study's run directory, for its own page


def test_bad_command_lines_exit_2(tmp_path):
    runner = CliRunner()
    unknown = runner.invoke(app, ["reproduce", "nope", "--out", str(tmp_path)])
    assert unknown.exit_code == 2
    assert "unknown study 'nope'" in unknown.output and "mad-gaussian" in unknown.output
    neither = runner.invoke(app, ["reproduce"])
    assert neither.exit_code == 2 and "--all" in neither.output
    listed = runner.invoke(app, ["reproduce", "--list"])
    assert listed.exit_code == 0
    lines = [ln for ln in listed.output.splitlines() if ln.strip()]
    assert len(lines) == len(STUDIES)
    assert all("min)" in ln for ln in lines)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_tail_mass_and_its_log_agree_and_the_log_stays_finite():
    from scipy.stats import norm

    from madloop.reproduce.measures import tail_mass

    mes, tr = np.array([0.0, 0.25, 0.0]), np.array([1.0, 0.3, 1e-4])
    direct = tail_mass(mes, tr, 2.0)
    assert direct[0] == pytest.approx(1.0)
    shifted = norm.sf((2 - 0.5) / np.sqrt(0.3)) + norm.cdf((-2 - 0.5) / np.sqrt(0.3))
    assert direct[1] == pytest.approx(shifted / (2 * norm.sf(2.0)))
    logged = tail_mass(mes, tr, 2.0, log=True)
    assert np.exp(logged[:2]) == pytest.approx(direct[:2])
    assert direct[2] == 0.0 and np.isfinite(logged[2]) and logged[2] < -1000  # σ = 0.01


def test_the_fresh_threshold_is_the_first_n_s_that_does_worse():
    from madloop.reproduce.formulas import fresh_error, fresh_threshold

    alone = fresh_error(10, 0, 0.8, 10, "unbiased")
    assert alone == pytest.approx(0.1)  # 1/n_r, no spread bias
    errors = [fresh_error(10, ns, 0.8, 10, "unbiased") for ns in range(1, 60)]
    first = 1 + next(i for i, e in enumerate(errors) if e >= alone)
    assert fresh_threshold(10, 0.8, 10, "unbiased") == first
    assert fresh_threshold(10, 0.9, 10, "unbiased") > first  # less bias, later threshold
    assert fresh_threshold(10, 1.0, 10, "unbiased", limit=512) == np.inf  # none without bias


def test_a_row_its_run_cannot_answer_is_a_config_error(tmp_path, monkeypatch):
    import madloop.reproduce.runner as runner

    study = load_study("mad-gaussian")
    raw = study.model_dump()
    raw["rows"][0]["measure"] = "tail_mass"  # needs one-dimensional data; this study has ten
    monkeypatch.setattr(runner, "load_study", lambda name: type(study).model_validate(raw))
    with pytest.raises(ConfigError, match="study mad-gaussian: measure tail_mass needs one-dim"):
        reproduce(["mad-gaussian"], tmp_path, quick=True)


def closed_forms_of(name: str) -> StudyData:
    """A study's arms without a run: what the formulas read (the configs), no metrics."""
    _, arms = parse(load_study(name).experiment(quick=True))
    metrics = pd.DataFrame(columns=["arm", "metric", "generation", "replicate", "value"])
    summary = pd.DataFrame(columns=["arm", "metric", "generation", "theory"])
    return StudyData({a.name: a.config for a in arms}, metrics, summary)


def test_the_new_closed_forms_by_hand():
    f = {name: FORMULAS[name].evaluate for name in FORMULAS}
    reg = closed_forms_of("gerstgrasser-regression")  # d = 10, T = 40, σ² = 1
    assert f["replace_excess_risk"](reg, "replace", 3, {}) == pytest.approx(3 * 10 / 29)
    bound = f["accumulate_excess_risk_bound"](reg, "accumulate", 7, {})
    assert bound == pytest.approx(np.pi**2 / 6 * 10 / 29)
    golden = closed_forms_of("he-golden-ratio")  # n_r = n_s = 10, λ = 1
    assert f["optimal_real_weight"](golden, "w=0.618", 1, {}) == pytest.approx(0.6180339887)
    e = f["stationary_weighted_mean_error"](golden, "w=0.3", 1, {})
    assert e == pytest.approx((0.49 / 10 + 0.09 / 10) / 0.51)
    tails = closed_forms_of("dohmatob-tails")  # Zipf(1) over 100 symbols, n = 1000, k = 5
    p = np.arange(1, 101) ** -1.0
    p /= p.sum()
    P5 = p[:5].sum()
    assert f["top_k_floor"](tails, "top-5", 2, {}) == pytest.approx(1 - P5)
    memoriser = p[:5] @ (1 - p[:5] / P5) ** 1000 + 1 - P5
    assert f["top_k_missing_mass"](tails, "top-5", 2, {}) == pytest.approx(memoriser)
    law = np.array([0.4, 0.2, 0.15, 0.1, 0.06, 0.04, 0.02, 0.015, 0.01, 0.005])
    seddik = closed_forms_of("seddik-homozygosity")  # n = 50
    S = f["homozygosity_recursion"](seddik, "base", 7, {})
    assert S == pytest.approx(1 - (1 - 1 / 50) ** 7 * (1 - law @ law))
    suresh = closed_forms_of("suresh-survival")  # Zipf(1) over 50 symbols, n = 200
    q = np.arange(1, 51) ** -1.0
    q /= q.sum()
    assert f["support_size_lower_bound"](suresh, "zipf50", 1, {}) == pytest.approx(
        np.sum(1 - (1 - q) ** 200)
    )  # generation 1: the first sample's support, exactly
    late = np.sum(1 - (1 - q + q * np.exp(-1 / 9)) ** 200)  # t = 10: k = 9 generations later
    assert f["support_size_lower_bound"](suresh, "zipf50", 10, {}) == pytest.approx(late)


def test_a_closed_form_on_an_arm_it_does_not_fit_says_what_it_needs():
    with pytest.raises(ValueError, match="sampling.top_k"):
        FORMULAS["top_k_floor"].evaluate(closed_forms_of("dohmatob-tails"), "base", 2, {})
    with pytest.raises(ValueError, match="linear-regression"):
        FORMULAS["replace_excess_risk"].evaluate(closed_forms_of("seddik-homozygosity"), "base",
                                                 2, {})  # fmt: skip
    text = (studies_folder() / "he-golden-ratio.toml").read_text()
    bad = parse_study(text.replace('id = "optimal_real_weight"', 'id = "folklore"'), "bad.toml")
    assert any("closed_form measure needs id" in p for p in check_names(bad))


def _two_arms() -> tuple:
    """A StudyData of two arms, three chains, generations 1..3 (no generation 0)."""
    from madloop.reproduce.measures import StudyData

    values = {"a": [[1.0, 2.0, 4.0], [1.0, 3.0, 6.0], [2.0, 3.0, 5.0]],
              "b": [[0.0, 1.0, 1.0], [1.0, 1.0, 2.0], [0.0, 2.0, 2.0]]}  # fmt: skip
    records = [dict(arm=arm, metric="m", generation=g + 1, replicate=r, value=v[r][g])
               for arm, v in values.items() for r in range(3) for g in range(3)]  # fmt: skip
    summary = pd.DataFrame(
        [dict(arm=arm, metric="m", generation=g, theory=th * g) for arm, th in (("a", 2.0),
         ("b", 0.5)) for g in (1, 2, 3)]
    )  # fmt: skip
    return StudyData({}, pd.DataFrame.from_records(records), summary), values


def _row(**params):
    from madloop.reproduce.spec import Row

    return Row(quantity="q", metric="m", params=params, reference={"kind": "theory"})


def test_increment_since_the_previous_generation_and_the_difference_between_arms():
    from madloop.reproduce.measures import MEASURES

    data, v = _two_arms()
    metric = MEASURES["metric"]
    a, b = np.array(v["a"]), np.array(v["b"])
    step = _row(since="previous")
    mean, se = metric.value(data, "a", 3, step)
    assert mean == pytest.approx((a[:, 2] - a[:, 1]).mean())
    assert se == pytest.approx((a[:, 2] - a[:, 1]).std(ddof=1) / np.sqrt(3))
    assert metric.theory(data, "a", 3, step) == pytest.approx(2.0)
    assert np.isnan(metric.value(data, "a", 1, step)[0])  # no generation 0: no increment
    diff = _row(minus_arm="b")
    mean, se = metric.value(data, "a", 2, diff)  # chain by chain, replicate i with i
    assert mean == pytest.approx((a[:, 1] - b[:, 1]).mean())
    assert se == pytest.approx((a[:, 1] - b[:, 1]).std(ddof=1) / np.sqrt(3))
    assert metric.theory(data, "a", 2, diff) == pytest.approx(4.0 - 1.0)
    both = _row(since="previous", minus_arm="b")
    assert metric.value(data, "a", 3, both)[0] == pytest.approx(
        ((a[:, 2] - a[:, 1]) - (b[:, 2] - b[:, 1])).mean()
    )


def test_a_tolerance_allowance_adds_and_grows_with_the_generation():
    from madloop.reproduce.spec import Tolerance

    tol = Tolerance(k=4.0, plus=0.01, plus_relative=0.1)
    assert tol.allowance(-2.0, 5) == pytest.approx(0.01 + 0.2)
    grows = Tolerance(plus_relative=0.003, per_generation=True)
    assert grows.allowance(0.5, 10) == pytest.approx(0.015)
    with pytest.raises(ValueError):
        Tolerance(plus=-1.0)


def test_a_minus_arm_that_does_not_exist_is_named():
    text = (studies_folder() / "gillman-correction.toml").read_text()
    bad = parse_study(text.replace('minus_arm = "gamma-0"', 'minus_arm = "gamma-9"'), "bad")
    assert any("no arm 'gamma-9'" in p for p in check_names(bad))


def test_a_measured_reference_compares_two_arms_with_the_difference_s_error():
    """reference.kind = "measured": the other arm's mean, the error sqrt(se1² + se2²)."""
    study = load_study("mad-gaussian")
    _, arms = parse(study.experiment(quick=True))
    chains = {"base": [1.0, 1.2, 1.4, 1.6], "truncated": [0.2, 0.3, 0.4, 0.5]}
    metrics = pd.DataFrame(
        [(arm, "trace_ratio", 20, r, v) for arm, vs in chains.items() for r, v in enumerate(vs)],
        columns=["arm", "metric", "generation", "replicate", "value"],
    )
    summary = pd.DataFrame(columns=["arm", "metric", "generation", "theory"])
    data = StudyData({a.name: a.config for a in arms}, metrics, summary)
    raw = study.model_dump()
    raw["rows"] = [{"quantity": "truncated below base", "metric": "trace_ratio",
                    "arms": ["truncated"], "relation": "below",
                    "reference": {"kind": "measured", "arm": "base"}}]  # fmt: skip
    frame = compare(type(study).model_validate(raw), data)
    se = np.hypot(*(np.std(v, ddof=1) / 2 for v in chains.values()))
    assert frame["reference"].iloc[0] == pytest.approx(1.3)
    assert frame["measured"].iloc[0] == pytest.approx(0.35)
    assert frame["std_error"].iloc[0] == pytest.approx(se)
    assert frame["agrees"].iloc[0] and frame["reference_source"].iloc[0] == "measured: arm base"
    raw["rows"][0]["relation"] = "above"
    assert not compare(type(study).model_validate(raw), data)["agrees"].iloc[0]
    raw["rows"][0]["reference"] = {"kind": "measured"}
    with pytest.raises(ValidationError, match="measured reference needs arm"):
        type(study).model_validate(raw)
    raw["rows"][0]["reference"] = {"kind": "measured", "arm": "nope"}
    assert any("no arm 'nope'" in p for p in check_names(type(study).model_validate(raw)))
