"""Each kind of bad config gets its one clear line naming the field and the value, exit status 2,
never a traceback (checked through the CLI, the way a user meets them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from madloop.cli import app
from madloop.config import ConfigError, parse

BASE = """\
name = "tiny"
seed = 1
generations = 3
replicates = 4

[data]
source = "gaussian"
dim = 2

[model]
family = "gaussian"
mode = "exact"

[sampling]
bias = 1.0

[loop]
regime = "fully-synthetic"
real_size = 0
synthetic_size = 10
"""


def _edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# (case id, config text, the exact expected line)
CASES = [
    (
        "out-of-range",
        _edit("synthetic_size = 10", "synthetic_size = -5"),
        "loop.synthetic_size: must be >= 1, got -5",
    ),
    (
        "out-of-range-in-list",
        _edit('regime = "fully-synthetic"', 'regime = "fresh-data"').replace(
            "synthetic_size = 10", "synthetic_size = [10, -2]"
        ),
        "loop.synthetic_size: must be >= 0, got -2 (in [10, -2])",
    ),
    (
        "unknown-key",
        _edit("dim = 2", "dimm = 2"),
        "data.dimm: unknown key; did you mean 'dim'? "
        "(valid: condition_number, covariance, dim, mean, source)",
    ),
    (
        "unknown-top-level-key",
        _edit("seed = 1", "sed = 1"),
        "sed: unknown key; did you mean 'seed'? (valid: arms, data, generations, include_base, "
        "loop, model, name, replicates, sampling, seed, sweep, tracking)",
    ),
    ("wrong-type", _edit("dim = 2", 'dim = "two"'), "data.dim: must be an integer, got 'two'"),
    (
        "wrong-type-union",
        _edit("synthetic_size = 10", "synthetic_size = 2.5"),
        "loop.synthetic_size: must be an integer or a list, got 2.5",
    ),
    (
        "top-level-out-of-range",
        _edit("generations = 3", "generations = 0"),
        "generations: must be >= 1, got 0",
    ),
    (
        "unknown-family",
        _edit('family = "gaussian"', 'family = "gausian"'),
        "model.family: unknown family 'gausian'; did you mean 'gaussian'?",
    ),
    (
        "unknown-source",
        _edit('source = "gaussian"', 'source = "gaussan"'),
        "data.source: unknown source 'gaussan'; did you mean 'gaussian'?",
    ),
    (
        "unknown-regime",
        _edit('regime = "fully-synthetic"', 'regime = "fully-synth"'),
        "loop.regime: unknown regime 'fully-synth'; did you mean 'fully-synthetic'?",
    ),
    (
        "bad-mode",
        _edit('mode = "exact"', 'mode = "exakt"'),
        "model.mode: must be 'exact' or 'sample', got 'exakt'",
    ),
    (
        "bad-estimator",
        _edit('mode = "exact"', 'covariance_estimator = "biased"'),
        "model.covariance_estimator: must be 'unbiased' or 'mle', got 'biased'",
    ),
    (
        "bias-out-of-range",
        _edit("bias = 1.0", "bias = 1.5"),
        "sampling.bias: must be in (0, 1] for family 'gaussian', got 1.5",
    ),
    (
        "real-size-in-fully-synthetic",
        _edit("real_size = 0", "real_size = 5"),
        "loop.real_size: must be 0 for regime 'fully-synthetic' (it trains on synthetic data "
        "only), got 5; use regime 'fresh-data' or 'synthetic-augmentation'",
    ),
    (
        "mean-wrong-length",
        _edit("dim = 2", "dim = 2\nmean = [1.0, 2.0, 3.0]"),
        "data.mean: has 3 values but dim = 2; give one number or 2 numbers",
    ),
    (
        "covariance-not-pd",
        _edit("dim = 2", "dim = 2\ncovariance = [[1.0, 2.0], [2.0, 1.0]]"),
        "data.covariance: must be positive definite (all eigenvalues > 0), got smallest "
        "eigenvalue -1",
    ),
    (
        "covariance-bad-name",
        _edit("dim = 2", 'dim = 2\ncovariance = "diag"'),
        "data.covariance: must be 'identity' or 'random' or a list, got 'diag'",
    ),
    (
        "too-few-points",
        _edit("synthetic_size = 10", "synthetic_size = 1"),
        "loop.synthetic_size: must give >= 2 training points (a Gaussian fit needs 2), got 1 at "
        "generation 1",
    ),
    (
        "empty-size-list",
        _edit("synthetic_size = 10", "synthetic_size = []"),
        "loop.synthetic_size: must not be an empty list",
    ),
    (
        "bad-toml",
        _edit("dim = 2", "dim = = 2"),
        "not valid TOML: Invalid value (at line 8, column 7)",
    ),
    (
        "wrong-type-top-level",
        _edit("replicates = 4", "replicates = 2.5"),
        "replicates: must be an integer, got 2.5",
    ),
    (
        "missing-source",
        BASE.replace('source = "gaussian"\n', ""),
        "data.source: required (one of: ",  # every registered source is listed
    ),
    (
        "not-a-table",
        BASE.replace("[sampling]\nbias = 1.0\n", "").replace("[data]", "sampling = 0.5\n[data]"),
        "sampling: must be a table, got 0.5",
    ),
    (
        "arm-unknown-key",
        BASE + '\n[[arms]]\nname = "low"\nsampling.bais = 0.5\n',
        "arms[low].sampling.bais: unknown key; did you mean 'bias'? (valid: bias, guidance_scale, "
        "knob, temperature, top_k, truncation)",
    ),
    (
        "arm-without-name",
        BASE + "\n[[arms]]\nsampling.bias = 0.5\n",
        "arms[0].name: every arm needs a non-empty name",
    ),
    (
        "arm-duplicate",
        BASE + '\n[[arms]]\nname = "a"\n[[arms]]\nname = "a"\n',
        "arms[1].name: duplicate arm name 'a'",
    ),
    (
        "arm-out-of-range",
        BASE + '\n[[arms]]\nname = "neg"\nloop.synthetic_size = -5\n',
        "arms[neg].loop.synthetic_size: must be >= 1, got -5",
    ),
    (
        "arm-overrides-seed",
        BASE + '\n[[arms]]\nname = "s"\nseed = 3\n',
        "arms[s].seed: cannot be overridden per arm",
    ),
]

runner = CliRunner()


def _invoke(args: list[str]):
    return runner.invoke(app, args, catch_exceptions=False)


def _lines(result) -> list[str]:
    text = result.stderr if hasattr(result, "stderr") else result.output
    return [line for line in text.splitlines() if line.strip()]


def _check(tmp_path: Path, command: str, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    args = [command, str(path)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    result = _invoke(args)
    assert result.exit_code == 2, result.output
    lines = _lines(result)
    assert len(lines) == 1, lines  # one problem, one line
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case,text,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_config_one_line(tmp_path: Path, case, text, expected):
    _check(tmp_path, "validate", text, expected)


@pytest.mark.parametrize("command", ["run", "theory"])
@pytest.mark.parametrize("case", ["out-of-range", "unknown-key", "bad-toml", "arm-unknown-key"])
def test_run_and_theory_report_the_same(tmp_path: Path, command, case):
    _, text, expected = next(c for c in CASES if c[0] == case)
    _check(tmp_path, command, text, expected)


def test_missing_file(tmp_path: Path):
    result = _invoke(["run", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert _lines(result) == [f"error: {tmp_path / 'nope.toml'}: no such config file"]


def test_bad_command_line_override(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(BASE)
    result = _invoke(["run", str(path), "--generations", "0", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert _lines(result) == ["error: generations: must be >= 1, got 0"]


def test_all_problems_reported_at_once(tmp_path: Path):
    text = _edit("dim = 2", 'dimm = 2\nmean = "x"').replace("bias = 1.0", "bias = 2.0")
    path = tmp_path / "c.toml"
    path.write_text(text)
    result = _invoke(["validate", str(path)])
    assert result.exit_code == 2
    lines = _lines(result)
    assert len(lines) == 3, lines
    assert any(line.startswith("error: data.dimm: unknown key") for line in lines)
    assert any("data.mean: must be a number or a list, got 'x'" in line for line in lines)
    assert any("sampling.bias: must be in (0, 1]" in line for line in lines)


def test_python_api_raises_config_error():
    import tomllib

    raw = tomllib.loads(_edit("synthetic_size = 10", "synthetic_size = -5"))
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert info.value.problems == ["loop.synthetic_size: must be >= 1, got -5"]


def test_messages_name_field_and_value():
    """Every expected message has the shape 'field.path: what, got VALUE' or names the fix."""
    for case, _, expected in CASES:
        assert re.match(r"^[\w\[\]\-.+ ]+: ", expected) or case == "bad-toml", case


def test_arm_switching_regime_keeps_sizes(tmp_path: Path):
    """An arm that only changes the regime inherits the base's sizes (except real_size for a
    regime that uses no real data)."""
    text = _edit('regime = "fully-synthetic"', 'regime = "fresh-data"').replace(
        "real_size = 0", "real_size = 5"
    )
    text += '\n[[arms]]\nname = "acc"\nloop.regime = "accumulate"\n'
    text += '\n[[arms]]\nname = "fs"\nloop.regime = "fully-synthetic"\n'
    _, arms = parse(tomllib_loads(text))
    by = {a.name: a.config.loop for a in arms}
    assert (by["acc"].real_size, by["acc"].synthetic_size) == (5, 10)
    assert (by["fs"].real_size, by["fs"].synthetic_size) == (0, 10)


def tomllib_loads(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)
