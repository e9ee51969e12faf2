"""Property-based config fuzzing: every invalid config gets one line per problem naming a field
and exit status 2, never a traceback; every valid tiny config runs.

Generated configs go through ``madloop.experiment.validate`` / ``parse`` / ``run`` in-process, and
a sample of them through the CLI (typer's ``CliRunner``: ``madloop validate`` and ``madloop run``).
Invalid configs are valid ones with one (or several) targeted mutations - unknown keys, wrong
types, out-of-range, NaN/inf, malformed matrices, unknown family/source/regime, bad arms, names
that are paths - so each one knows which field its message must name.

How many cases run (Hypothesis, derandomized so every run tests the same cases):

=====================================  ===============  ===========
test                                   ``make test``    ``CI=true``
=====================================  ===============  ===========
valid configs validate                  400              1,500
valid tiny configs run                  60               200
one mutation -> names its field         2,000            4,000
several mutations -> clean errors       400              1,000
CLI validate (invalid files)            60               200
CLI run (valid files)                   12               40
CLI on arbitrary text files             150              500
total                                   3,082            7,440
=====================================  ===============  ===========

``CI=true`` selects the larger profile. Measured CPU time of this module on this machine: about
15 s by default and 45 s under ``CI=true`` (the whole of ``make test`` is split over 2 cores).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from _toml import to_toml
from madloop.cli import app
from madloop.config import TOP_LEVEL, ConfigError, parse, validate
from madloop.experiment import run

CI = os.environ.get("CI", "").lower() == "true"
COUNTS = {
    "valid": (400, 1500),
    "runs": (60, 200),
    "one_mutation": (2000, 4000),
    "mutations": (400, 1000),
    "cli_invalid": (60, 200),
    "cli_run": (12, 40),
    "cli_text": (150, 500),
}


def cases(name: str) -> settings:
    return settings(
        max_examples=COUNTS[name][CI],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


# -- valid configs ---------------------------------------------------------------------------------
REGIMES = [
    "fully-synthetic",
    "synthetic-augmentation",
    "fresh-data",
    "accumulate",
    "accumulate-subsample",
]
names = st.text(
    alphabet=st.characters(categories=["L", "N"], include_characters="-_+=λ "),
    min_size=1,
    max_size=12,
).filter(lambda s: s[0] not in ". ")
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@st.composite
def covariances(draw, dim: int):
    kind = draw(st.sampled_from(["identity", "random", "matrix"]))
    if kind != "matrix":
        return kind
    a = np.array(
        draw(st.lists(st.lists(finite, min_size=dim, max_size=dim), min_size=dim, max_size=dim))
    )
    cov = a @ a.T + np.eye(dim)  # positive definite by construction
    return [[float(v) for v in row] for row in (cov + cov.T) / 2]


sizes = st.one_of(st.integers(2, 12), st.lists(st.integers(2, 12), min_size=1, max_size=3))


@st.composite
def loops(draw):
    regime = draw(st.sampled_from(REGIMES))
    loop = {"regime": regime, "synthetic_size": draw(sizes)}
    if regime != "fully-synthetic" and draw(st.booleans()):
        loop["real_size"] = draw(
            st.one_of(st.integers(0, 8), st.lists(st.integers(0, 8), min_size=1, max_size=3))
        )
    if draw(st.booleans()):
        first = loop.get("real_size", 0)
        first = first if isinstance(first, int) else first[0]
        loop["initial_real_size"] = draw(st.integers(max(2, first), 20))
    return loop


@st.composite
def valid_configs(draw):
    dim = draw(st.integers(1, 4))
    cfg = {
        "name": draw(names),
        "seed": draw(st.integers(0, 2**32)),
        "generations": draw(st.integers(1, 3)),
        "replicates": draw(st.integers(1, 3)),
        "data": {"source": "gaussian", "dim": dim},
        "model": {"family": "gaussian"},
        "loop": draw(loops()),
    }
    if draw(st.booleans()):
        cfg["data"]["mean"] = draw(st.one_of(finite, st.lists(finite, min_size=dim, max_size=dim)))
    cfg["data"]["covariance"] = draw(covariances(dim))
    if draw(st.booleans()):
        cfg["data"]["condition_number"] = draw(st.floats(1.0, 1e6))
    if draw(st.booleans()):
        cfg["model"]["mode"] = draw(st.sampled_from(["exact", "sample"]))
    if draw(st.booleans()):
        cfg["model"]["covariance_estimator"] = draw(st.sampled_from(["unbiased", "mle"]))
    if draw(st.booleans()):
        cfg["sampling"] = {"bias": draw(st.floats(1e-12, 1.0))}
    arm_names = draw(st.lists(names, max_size=2, unique=True).filter(lambda v: "base" not in v))
    arms = []
    for n in arm_names:
        arm = {"name": n}
        what = draw(st.sampled_from(["bias", "mode", "loop"]))
        if what == "bias":
            arm["sampling.bias"] = draw(st.floats(1e-6, 1.0))
        elif what == "mode":
            arm["model.mode"] = draw(st.sampled_from(["exact", "sample"]))
        else:
            arm["loop"] = draw(loops())
        arms.append(arm)
    if arms:
        cfg["arms"] = arms
        cfg["include_base"] = draw(st.booleans())
    return cfg


# -- mutations: (config, field the message must name) ---------------------------------------------
def _section(cfg: dict, name: str) -> dict:
    return cfg.setdefault(name, {})


@st.composite
def mutated(draw, base=None):
    cfg = draw(valid_configs()) if base is None else base
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    kind = draw(st.sampled_from(sorted(MUTATIONS)))
    return MUTATIONS[kind](cfg, draw)


def _unknown_top(cfg, draw):
    key = draw(
        st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True).filter(lambda k: k not in TOP_LEVEL)
    )
    cfg[key] = draw(st.one_of(st.integers(), st.text(max_size=5)))
    return cfg, key


def _unknown_in(section):
    def mutate(cfg, draw):
        key = draw(
            st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True).filter(
                lambda k: (
                    k
                    not in {
                        "source",
                        "family",
                        "regime",
                        "dim",
                        "mean",
                        "covariance",
                        "condition_number",
                        "mode",
                        "covariance_estimator",
                        "bias",
                        "real_size",
                        "synthetic_size",
                        "initial_real_size",
                    }
                )
            )
        )
        _section(cfg, section)[key] = 1
        return cfg, f"{section}.{key}"

    return mutate


def _bad_top_number(field):
    def mutate(cfg, draw):
        bad = [-1, "ten", 1.5, [3], {"x": 1}, float("nan"), float("inf")]
        bad += [2**63] if field == "seed" else [0, 10**7]
        cfg[field] = draw(st.sampled_from(bad))
        return cfg, field

    return mutate


def _bad_dim(cfg, draw):
    cfg["data"]["dim"] = draw(st.sampled_from([0, -3, 5000, "two", 2.5, None, [2]]))
    cfg["data"].pop("mean", None)
    cfg["data"]["covariance"] = "identity"
    return cfg, "data.dim"


def _bad_mean(cfg, draw):
    dim = cfg["data"]["dim"]
    cfg["data"]["mean"] = draw(
        st.sampled_from(
            [
                [0.0] * (dim + 1),
                float("nan"),
                float("inf"),
                [float("nan")] * dim,
                "zero",
                {"a": 1},
            ]
        )
    )
    return cfg, "data.mean"


def _bad_cov(cfg, draw):
    dim = cfg["data"]["dim"]
    nan = float("nan")
    options = [
        "diagonal",
        3,
        [[1.0]] * (dim + 1),
        [[1.0 if i == j else 0.0 for j in range(dim)] for i in range(dim - 1 or 2)],
        [[nan] * dim for _ in range(dim)],
        [[-1.0 if i == j else 0.0 for j in range(dim)] for i in range(dim)],
        [[0.0] * dim for _ in range(dim)],
        [["a"] * dim for _ in range(dim)],
    ]
    if dim >= 2:
        options.append(
            [[1.0 if i == j else (0.5 if i < j else 0.0) for j in range(dim)] for i in range(dim)]
        )
    cfg["data"]["covariance"] = draw(st.sampled_from(options))
    return cfg, "data.covariance"


def _bad_condition(cfg, draw):
    cfg["data"]["condition_number"] = draw(st.sampled_from([0.5, -1, float("nan"), 1e20, "big"]))
    return cfg, "data.condition_number"


def _bad_choice(section, key, registry_like):
    def mutate(cfg, draw):
        value = draw(
            st.one_of(st.sampled_from(registry_like), st.text(max_size=8), st.integers()).filter(
                lambda v: v not in _VALID_CHOICES[key]
            )
        )
        _section(cfg, section)[key] = value
        return cfg, f"{section}.{key}"

    return mutate


_VALID_CHOICES = {
    "family": {"gaussian"},
    "source": {"gaussian"},
    "regime": set(REGIMES),
    "mode": {"exact", "sample"},
    "covariance_estimator": {"unbiased", "mle"},
}


def _bad_bias(cfg, draw):
    _section(cfg, "sampling")["bias"] = draw(
        st.one_of(
            st.floats(max_value=0.0),
            st.floats(min_value=1.0, exclude_min=True),
            st.sampled_from([float("nan"), "high", [0.5]]),
        )
    )
    return cfg, "sampling.bias"


def _bad_size(cfg, draw):
    field = draw(st.sampled_from(["synthetic_size", "real_size"]))
    cfg["loop"][field] = draw(st.sampled_from([-1, [], [3, -2], "many", 2.5, {"a": 1}, [[2]]]))
    return cfg, f"loop.{field}"


def _real_in_fully_synthetic(cfg, draw):
    cfg["loop"] = {
        "regime": "fully-synthetic",
        "real_size": draw(st.integers(1, 9)),
        "synthetic_size": 5,
    }
    return cfg, "loop.real_size"


def _one_sample(cfg, draw):
    loop = cfg["loop"]
    if draw(st.booleans()):
        loop["initial_real_size"] = 1
        loop["real_size"] = 0
        return cfg, "loop.initial_real_size"
    loop.pop("initial_real_size", None)
    loop["regime"] = draw(
        st.sampled_from(["fully-synthetic", "fresh-data", "accumulate-subsample"])
    )
    loop["synthetic_size"] = 1
    loop["real_size"] = 0
    return cfg, "loop.synthetic_size"


def _not_a_table(cfg, draw):
    section = draw(st.sampled_from(["data", "model", "loop", "sampling"]))
    cfg[section] = draw(st.sampled_from([3, "gaussian", [1, 2], True]))
    return cfg, section


def _missing_source(cfg, draw):
    section, key = draw(st.sampled_from([("data", "source"), ("model", "family")]))
    if draw(st.booleans()):
        cfg.pop(section)
    else:
        cfg[section] = {k: v for k, v in cfg[section].items() if k != key}
    return cfg, f"{section}.{key}"


def _bad_name(cfg, draw):
    cfg["name"] = draw(
        st.sampled_from(
            ["", "../escape", "a/b", ".hidden", "x\x00y", "a\\b", " lead", "n" * 101, 7]
        )
    )
    return cfg, "name"


def _bad_arms(cfg, draw):
    how = draw(
        st.sampled_from(
            [
                "not-list",
                "not-dict",
                "no-name",
                "path-name",
                "duplicate",
                "override-seed",
                "unknown-key",
                "bad-value",
                "none-left",
            ]
        )
    )
    arms = list(cfg.get("arms", []))
    if how == "not-list":
        cfg["arms"] = draw(st.sampled_from([3, "arm", {"name": "a"}]))
    elif how == "not-dict":
        cfg["arms"] = arms + [draw(st.sampled_from([1, "x", [1]]))]
    elif how == "no-name":
        cfg["arms"] = arms + [{"sampling.bias": 0.5}]
    elif how == "path-name":
        cfg["arms"] = arms + [{"name": "../../x", "sampling.bias": 0.5}]
    elif how == "duplicate":
        cfg["arms"] = arms + [{"name": "twin"}, {"name": "twin", "sampling.bias": 0.5}]
    elif how == "override-seed":
        cfg["arms"] = arms + [
            {"name": "s", draw(st.sampled_from(["seed", "generations", "replicates"])): 3}
        ]
    elif how == "unknown-key":
        cfg["arms"] = arms + [{"name": "u", "sampling.biass": 0.5}]
    elif how == "bad-value":
        cfg["arms"] = arms + [{"name": "v", "sampling.bias": 3.0}]
    else:
        cfg["arms"] = []
        cfg["include_base"] = False
    return cfg, "arms"


MUTATIONS = {
    "unknown_top": _unknown_top,
    "unknown_data": _unknown_in("data"),
    "unknown_model": _unknown_in("model"),
    "unknown_loop": _unknown_in("loop"),
    "unknown_sampling": _unknown_in("sampling"),
    "seed": _bad_top_number("seed"),
    "generations": _bad_top_number("generations"),
    "replicates": _bad_top_number("replicates"),
    "dim": _bad_dim,
    "mean": _bad_mean,
    "covariance": _bad_cov,
    "condition": _bad_condition,
    "family": _bad_choice("model", "family", ["gauss", "os:system", "builtins.eval", "ddpm_"]),
    "source": _bad_choice("data", "source", ["gausian", "/etc/passwd", "subprocess.run"]),
    "regime": _bad_choice("loop", "regime", ["accumulate-all", "fresh", "os.system"]),
    "mode": _bad_choice("model", "mode", ["exactly", "samples", "Exact"]),
    "estimator": _bad_choice("model", "covariance_estimator", ["biased", "MLE"]),
    "bias": _bad_bias,
    "size": _bad_size,
    "real_in_fs": _real_in_fully_synthetic,
    "one_sample": _one_sample,
    "not_a_table": _not_a_table,
    "missing": _missing_source,
    "name": _bad_name,
    "arms": _bad_arms,
}

_FIELD = r"[A-Za-z_][\w]*(\[[^\]]*\])?(\.[\w\[\]-]+)*"
FIELD_LINE = re.compile(rf"^(arms\[[^\]]*\]: )?{_FIELD}( \+ {_FIELD})*: \S")


def _problems(cfg: dict) -> list[str]:
    try:
        parse(cfg)
    except ConfigError as err:
        return err.problems
    pytest.fail(f"accepted an invalid config: {cfg!r}")


# -- properties ------------------------------------------------------------------------------------
@cases("valid")
@given(valid_configs())
def test_valid_configs_validate(cfg) -> None:
    base, arms = parse(cfg)
    assert len(arms) == len(cfg.get("arms", [])) + (cfg.get("include_base", True))
    for arm in arms:  # the round trip through the validated form is stable
        assert validate(arm.config.to_dict()) == arm.config


@cases("runs")
@given(valid_configs())
def test_valid_tiny_configs_run(cfg) -> None:
    res = run(cfg)
    _, arms = parse(cfg)
    expected = sum(a.config.generations * a.config.replicates for a in arms) * 5
    assert len(res.metrics) == expected
    assert not res.metrics.value.isna().any() and not res.manifest["failures"]
    ok = res.metrics[res.metrics.metric.isin(["wasserstein2", "trace_ratio", "mean_error_sq"])]
    assert np.isfinite(ok.value).all()


@cases("one_mutation")
@given(mutated())
def test_one_mutation_names_its_field(case) -> None:
    cfg, field = case
    lines = _problems(cfg)
    assert lines and all(FIELD_LINE.match(line) for line in lines), lines
    stripped = [re.sub(r"^arms\[[^\]]*\]: ", "", line) for line in lines]
    named = [line.split(": ", 1)[0] for line in stripped]  # "loop.real_size + loop.x" names both
    assert any(field in where.split(" + ") or where.startswith(field) for where in named) or (
        field == "arms" and lines[0].startswith("arms")
    ), (field, lines)


@cases("mutations")
@given(st.data())
def test_several_mutations_give_clean_errors(data) -> None:
    cfg, _ = data.draw(mutated())
    for _ in range(data.draw(st.integers(1, 3))):
        try:
            cfg, _ = data.draw(mutated(base=cfg))
        except (AttributeError, KeyError, TypeError, IndexError):  # a section already mangled
            break
    try:
        parse(cfg)
    except ConfigError as err:
        assert all(FIELD_LINE.match(line) for line in err.problems), err.problems


# -- the CLI ---------------------------------------------------------------------------------------
runner = CliRunner()


def _clean_exit(result, code: int) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output


@cases("cli_invalid")
@given(mutated())
def test_cli_invalid_file_exits_2_naming_the_field(tmp_path_factory, case) -> None:
    cfg, field = case
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    try:
        path.write_text(to_toml(cfg))
    except TypeError:  # a value TOML cannot hold (None)
        return
    result = runner.invoke(app, ["validate", str(path)])
    _clean_exit(result, 2)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors and any(field in line for line in errors), (field, result.output)


@cases("cli_run")
@given(valid_configs())
def test_cli_runs_valid_files(tmp_path_factory, cfg) -> None:
    tmp = tmp_path_factory.mktemp("run")
    path = tmp / "c.toml"
    path.write_text(to_toml(cfg))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp / "out"), "-q", "--no-plots"])
    _clean_exit(result, 0)
    assert (tmp / "out" / "metrics.parquet").exists()
    dry = runner.invoke(app, ["run", str(path), "--out", str(tmp / "new"), "--dry-run"])
    _clean_exit(dry, 0)
    assert "total: peak memory" in dry.output and not (tmp / "new").exists()


@cases("cli_text")
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    "[data]",
                    "[model]",
                    "source = 'gaussian'",
                    "family = 'gaussian'",
                    "dim = 2",
                    "dim = -1",
                    "[[arms]]",
                    "name = 'a'",
                    "seed = 'x'",
                    "[loop]",
                    "synthetic_size = 1",
                    "x = [1, 'a']",
                    "= 3",
                    "[data",
                    "generations = 2",
                    "replicates = 1",
                    "bias = nan",
                ]
            ),
            max_size=12,
        ).map("\n".join),
    )
)
def test_cli_on_arbitrary_text_never_tracebacks(tmp_path_factory, text) -> None:
    path = tmp_path_factory.mktemp("txt") / "c.toml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    result = runner.invoke(app, ["validate", str(path)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 2)
    if result.exit_code == 2:
        assert result.output.startswith("error: ")


def test_missing_file_and_directory_are_clean_errors(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00name = 1")
    for target in (tmp_path / "nope.toml", tmp_path, binary):
        result = runner.invoke(app, ["validate", str(target)])
        assert result.exit_code == 2 and "Traceback" not in result.output
