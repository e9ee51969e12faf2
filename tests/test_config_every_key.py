"""Every key, every type: a seeded mutator over every example config.

Each case takes one of ``examples/*.toml`` (including its ``[[arms]]``, nested tables such as
``loop.adoption``, ``loop.detector``, ``[[loop.lineages]]`` and ``[sweep]``), picks random keys at
any depth and, one to three times, replaces a value with one of every TOML type (string, int,
float incl. nan/inf/-inf, bool, array, array of tables, empty and non-empty table,
datetime/date/time), deletes a key, misspells a key or adds an unknown one. ``parse`` must either
accept the result or raise :class:`ConfigError` whose every problem line starts with a field path
of the config (``model.family: ...``, ``arms[name].sampling.bias: ...``); any other exception, or
a pydantic message leaking through, fails and prints the mutated config.

A share of the valid mutants of the Gaussian and categorical examples is then run tiny
(generations = 2, replicates = 2) in-process, and a few through the CLI (``madloop run``), with
a few invalid ones that must exit with status 2 and ``error:`` lines naming fields.

How many cases run (plain ``random.Random``, seeded per example and chunk: every run tests the
same cases):

===========================  ===============  ===========
test                         default          ``CI=true``
===========================  ===============  ===========
parse, mutated configs       2,700            8,100
run, valid mutants           30               90
CLI run, valid mutants       10               30
CLI run, invalid mutants     10               30
===========================  ===============  ===========
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import random
import re
import tomllib
import traceback
import zlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from _toml import to_toml
from madloop.config import TOP_LEVEL, ConfigError, parse

CI = os.environ.get("CI", "").lower() == "true"
SCALE = 3 if CI else 1
EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
RAW = {p.stem: tomllib.loads(p.read_text(encoding="utf-8")) for p in EXAMPLES}
#: no example uses the scikit-learn family: mutate one such config too (its ``model.estimator``
#: and ``model.params`` are looked up in registries of their own)
RAW["sklearn-gmm"] = {
    "name": "sklearn-gmm",
    "generations": 3,
    "replicates": 2,
    "data": {"source": "gaussian", "dim": 2},
    "model": {"family": "sklearn", "estimator": "gmm", "params": {"n_components": 2}},
    "sampling": {"bias": 0.9},
    "loop": {"regime": "fully-synthetic", "synthetic_size": 50},
    "arms": [{"name": "kde", "model": {"estimator": "kde", "params": {}}, "sampling": {"bias": 1}}],
}
#: examples that run in-process in a second or so (no neural network, no corpus download)
RUNNABLE = {
    name
    for name, raw in RAW.items()
    if raw.get("data", {}).get("source") in {"gaussian", "categorical"}
    and raw.get("model", {}).get("family") in {"gaussian", "categorical"}
}
CHUNKS = 3  # test items per example (spread over the xdist workers)
PER_CHUNK = 60 * SCALE  # 15 configs x 3 chunks x 60 = 2,700 parse cases by default
RUNS_PER_CHUNK = 1 * SCALE
CLI_RUNS = 1 * SCALE  # per runnable example


# -- values of every TOML type -----------------------------------------------------------------
def scalar(rng: random.Random) -> Any:
    return rng.choice(
        [
            "",
            "x",
            "gaussian",
            "exact",
            "sample",
            "logistic",
            "fully-synthetic",
            "1",
            "nan",
            "../x",
            0,
            1,
            -1,
            2,
            3,
            7,
            10**6,
            2**63 - 1,
            -(2**63),
            0.0,
            0.5,
            -0.5,
            1.5,
            1e300,
            float("nan"),
            float("inf"),
            float("-inf"),
            True,
            False,
            dt.datetime(2024, 1, 2, 3, 4, 5),
            dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            dt.date(2024, 1, 2),
            dt.time(3, 4, 5),
        ]
    )


def value(rng: random.Random, depth: int = 0) -> Any:
    """A random TOML value: scalar, array, array of tables or table (empty or not)."""
    kind = rng.choice(["scalar"] * 4 + ["array", "tables", "table", "empty"])
    if depth >= 2 or kind == "scalar":
        return scalar(rng)
    if kind == "array":
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "tables":
        return [table(rng, depth + 1) for _ in range(rng.randint(1, 2))]
    if kind == "empty":
        return rng.choice([{}, []])
    return table(rng, depth + 1)


KEYS = ["kind", "name", "source", "family", "regime", "bias", "mode", "tpr", "score", "dim", "x"]


def table(rng: random.Random, depth: int) -> dict[str, Any]:
    return {rng.choice(KEYS): value(rng, depth + 1) for _ in range(rng.randint(1, 3))}


# -- where to mutate ---------------------------------------------------------------------------
Path_ = tuple[Any, ...]


def tables(node: Any, path: Path_ = ()) -> list[Path_]:
    """Paths of every table in the config: top level, nested, arms and arrays of tables."""
    out: list[Path_] = []
    if isinstance(node, dict):
        out.append(path)
        for k, v in node.items():
            out += tables(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, dict):
                out += tables(v, (*path, i))
    return out


def get(node: Any, path: Path_) -> Any:
    for p in path:
        node = node[p]
    return node


def misspell(rng: random.Random, key: str) -> str:
    if len(key) < 2:
        return key + "_"
    i = rng.randrange(len(key))
    how = rng.choice(["drop", "double", "swap", "case", "suffix"])
    if how == "drop":
        return key[:i] + key[i + 1 :]
    if how == "double":
        return key[:i] + key[i] + key[i:]
    if how == "swap" and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    if how == "case":
        return key.upper()
    return key + "s"


def mutate(rng: random.Random, cfg: dict[str, Any]) -> str:
    """One mutation of ``cfg`` in place; returns what it did (for the failure message)."""
    where = rng.choice(tables(cfg))
    node = get(cfg, where)
    how = rng.choice(["replace"] * 5 + ["delete", "misspell", "unknown", "other"])
    if how == "unknown" or not node:
        key = rng.choice(
            ["foo", "x_y", "kind", "colour", "seeds", "grid", "mode", "lag"]
            + ["family", "source", "regime", "estimator", "score", "name"]  # selectors
        )
        node[key] = value(rng)
        return f"add {where}+{key}"
    key = rng.choice(list(node))
    if how == "delete":
        del node[key]
    elif how == "misspell":
        node[misspell(rng, str(key))] = node.pop(key)
    elif how == "other":  # a value found elsewhere in this or another config: often well typed
        source = cfg if rng.random() < 0.5 else RAW[rng.choice(sorted(RAW))]
        pool = [v for p in tables(source) for v in get(source, p).values()]
        node[key] = copy.deepcopy(rng.choice(pool))
    else:
        node[key] = value(rng)
    return f"{how} {(*where, key)}"


def mutant(example: str, seed: int) -> tuple[dict[str, Any], list[str]]:
    rng = random.Random(seed)
    cfg = copy.deepcopy(RAW[example])
    done = [mutate(rng, cfg) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    return cfg, done


# -- what an error must look like --------------------------------------------------------------
_SEG = r"[A-Za-z_][\w-]*(?:\[[^\]]*\])*"
_PATH = rf"{_SEG}(?:\.{_SEG})*"
LINE = re.compile(rf"^(?P<arm>arms\[[^\]]*\]\.)?(?P<path>{_PATH}(?: \+ {_PATH})*): \S")
#: internals a problem line must not show (a field's own bound in pydantic's lower-case words,
#: "loop.adoption: end: input should be less than or equal to 1", is an accepted wording)
LEAKS = ("pydantic", "validation error", "Input should", "Traceback", "<class")


def keys_of(cfg: dict[str, Any]) -> set[str]:
    """Top-level keys an error may start with: the schema's, the config's and its arms'."""
    heads = set(TOP_LEVEL) | {str(k) for k in cfg}
    arms = cfg.get("arms")
    if isinstance(arms, list):
        for arm in arms:
            if isinstance(arm, dict):
                heads |= {str(k).split(".")[0] for k in arm}
    return heads


def bad_lines(cfg: dict[str, Any], problems: list[str]) -> list[str]:
    """Problem lines that do not start with a field path of ``cfg`` (or that leak internals)."""
    heads = keys_of(cfg)
    bad = []
    for line in problems:
        m = LINE.match(line) if isinstance(line, str) else None
        if m is None or any(leak in line for leak in LEAKS):
            bad.append(repr(line))
            continue
        for path in m["path"].split(" + "):
            head = re.sub(r"\[.*$", "", path.split(".")[0])
            if head not in heads:
                bad.append(repr(line))
    return bad




def check(cfg: dict[str, Any]) -> tuple[bool, str | None]:
    """(valid, why it failed cleanly-or-not: None for a clean ConfigError or a valid config)."""
    try:
        parse(copy.deepcopy(cfg))
    except ConfigError as err:
        if not err.problems:
            return False, "ConfigError with no problems"
        bad = bad_lines(cfg, err.problems)
        if not bad:
            return False, None
        return False, f"problem lines naming no field: {bad}"
    except Exception as err:  # noqa: BLE001 - any other exception is what this test looks for
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "madloop" in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        why = f"{type(err).__name__}: {err}\n  at {where}\n" + traceback.format_exc(-3)
        return False, why
    return True, None


def report(failures: list[str]) -> str:
    return f"{len(failures)} failing cases; the first ones:\n\n" + "\n\n".join(failures[:5])


def seeds(example: str, chunk: int, n: int) -> range:
    start = zlib.crc32(f"{example}/{chunk}".encode()) * 10_000
    return range(start, start + n)


def tiny(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """A valid mutant made tiny (2 generations x 2 replicates), or None where it could be large."""
    out = copy.deepcopy(cfg)
    out.update(generations=2, replicates=2)
    out.pop("sweep", None)

    def small(v: Any) -> bool:
        if isinstance(v, dict):
            return all(small(x) for k, x in v.items() if k != "seed")
        if isinstance(v, list):
            return len(v) <= 50 and all(small(x) for x in v)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return True
        return not math.isfinite(v) or abs(v) <= 2_000

    return out if small({k: v for k, v in out.items() if k != "seed"}) else None


# -- the tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("example", sorted(RAW))
def test_every_mutant_validates_or_names_its_fields(example: str, chunk: int) -> None:
    failures, valid, total = [], 0, 0
    for seed in seeds(example, chunk, PER_CHUNK):
        cfg, done = mutant(example, seed)
        ok, why = check(cfg)
        total += 1
        valid += ok
        if why is not None:
            failures.append(f"seed {seed}: {done}\nconfig: {cfg!r}\n{why}")
    assert not failures, report(failures)
    assert total == PER_CHUNK and valid < total  # most mutants are invalid; some are not


def valid_tiny_mutants(example: str, chunk: int, n: int) -> list[tuple[int, dict[str, Any]]]:
    """The first ``n`` valid mutants of ``example`` that run tiny (and are still valid so)."""
    out = []
    for seed in seeds(example, 1000 + chunk, 400):
        cfg, _ = mutant(example, seed)
        small = tiny(cfg)
        if small is not None and check(small)[0]:
            out.append((seed, small))
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("example", sorted(RUNNABLE))
def test_valid_mutants_run_tiny(example: str) -> None:
    from madloop.experiment import run

    cases = valid_tiny_mutants(example, 0, RUNS_PER_CHUNK * CHUNKS)
    assert cases, f"no valid tiny mutant of {example}"
    failures = []
    for seed, cfg in cases:
        try:
            res = run(cfg)
        except ConfigError as err:  # a check only the run makes must still name its fields
            bad = bad_lines(cfg, err.problems)
            if bad:
                failures.append(f"seed {seed}: config: {cfg!r}\nlines naming no field: {bad}")
            continue
        except Exception:  # noqa: BLE001
            failures.append(f"seed {seed}: config: {cfg!r}\n{traceback.format_exc(limit=-4)}")
            continue
        # generation 0 is the real-data floor of the sample-based metrics, where they apply
        if res.metrics.empty or set(res.metrics.generation) - {0} != {1, 2}:
            failures.append(f"seed {seed}: config: {cfg!r}\nno metrics for generations 1, 2")
    assert not failures, report(failures)


runner = CliRunner()


@pytest.mark.parametrize("example", sorted(RUNNABLE))
def test_valid_mutants_run_through_the_cli(tmp_path: Path, example: str) -> None:
    from madloop.cli import app

    written = []
    for seed, cfg in valid_tiny_mutants(example, 7, 5 * CLI_RUNS):
        try:
            written.append((seed, cfg, to_toml(cfg)))
        except TypeError:  # a datetime: the test writer does not write them
            continue
    assert written, f"no valid tiny mutant of {example} to write"
    for seed, cfg, text in written[:CLI_RUNS]:
        path = tmp_path / f"{seed}.toml"
        path.write_text(text, encoding="utf-8")
        out = tmp_path / f"out-{seed}"
        result = runner.invoke(app, ["run", str(path), "--out", str(out), "-q", "--no-plots"])
        assert "Traceback" not in result.output, (cfg, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            cfg,
            result.exception,
        )
        assert result.exit_code in (0, 2), (cfg, result.output)
        if result.exit_code == 0:
            assert (out / "metrics.parquet").exists()
        else:
            assert result.output.startswith("error: "), result.output


@pytest.mark.parametrize("example", sorted(RUNNABLE))
def test_invalid_mutants_exit_2_through_the_cli(tmp_path: Path, example: str) -> None:
    from madloop.cli import app

    done = 0
    for seed in seeds(example, 2000, 40):
        cfg, _ = mutant(example, seed)
        ok, why = check(cfg)
        assert ok or why is None, why  # the parse-only test reports these
        if ok:
            continue
        try:
            text = to_toml(cfg)
        except TypeError:  # a datetime: the test writer does not write them
            continue
        path = tmp_path / f"{seed}.toml"
        path.write_text(text, encoding="utf-8")
        result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o"), "-q"])
        assert "Traceback" not in result.output, (cfg, result.output)
        assert isinstance(result.exception, SystemExit), (cfg, result.exception)
        assert result.exit_code == 2, (cfg, result.output)
        errors = [line.removeprefix("error: ") for line in result.output.splitlines()]
        assert errors and not bad_lines(cfg, [e for e in errors if e]), (cfg, result.output)
        done += 1
        if done == CLI_RUNS:
            break
    assert done == CLI_RUNS


# -- regressions: the crashes this fuzzer found --------------------------------------------------
def _problems(cfg: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(cfg)
    assert not bad_lines(cfg, err.value.problems), err.value.problems
    return err.value.problems


def test_regression_selector_that_is_a_list() -> None:
    cfg = copy.deepcopy(RAW["fully-synthetic"])
    cfg["model"]["family"] = [1]
    lines = _problems(cfg)
    assert lines[0].startswith("model.family: must be a string naming a family (one of: ")
    assert "gaussian" in lines[0] and lines[0].endswith("got [1]"), lines


@pytest.mark.parametrize(
    "section, key, bad",
    [
        ("data", "source", [1]),
        ("data", "source", {"a": 1}),
        ("loop", "regime", {}),
        ("loop", "regime", ["fresh-data"]),
        ("model", "family", {"kind": {}}),
        ("model", "family", 3),
        ("model", "family", dt.date(2024, 1, 2)),
    ],
)
def test_regression_every_selector_is_type_checked(section: str, key: str, bad: Any) -> None:
    cfg = copy.deepcopy(RAW["mad-gaussian"])
    cfg[section][key] = bad
    lines = _problems(cfg)
    assert any(
        line.startswith(f"{section}.{key}: must be a string naming a {key}") for line in lines
    )
    arm = copy.deepcopy(RAW["mad-gaussian"])  # the same in an arm's override
    arm["arms"][0][section] = {key: bad}
    lines = _problems(arm)
    want = f"arms[{arm['arms'][0]['name']}].{section}.{key}: must be a string naming a {key}"
    assert any(line.startswith(want) for line in lines), lines


@pytest.mark.parametrize("bad", [[1], {}, {"a": 1}, 2, ["gmm"]])
def test_regression_sklearn_estimator_is_type_checked(bad: Any) -> None:
    cfg = copy.deepcopy(RAW["sklearn-gmm"])
    cfg["model"]["estimator"] = bad
    lines = _problems(cfg)
    assert any(line.startswith("model.estimator: must be a string") for line in lines), lines


def test_regression_list_items_are_named_by_index() -> None:
    cfg = copy.deepcopy(RAW["fresh-data"])
    cfg["loop"]["synthetic_size"] = [50, "x", 3.5]
    cfg["data"]["mean"] = [0.0, "a"]
    lines = _problems(cfg)
    assert any(line.startswith("loop.synthetic_size[1]: must be an integer") for line in lines)
    assert any(line.startswith("data.mean[1]: must be a number") for line in lines), lines
    text = copy.deepcopy(RAW["text-ngram"])
    text["data"]["plays"] = ["hamlet", 1.5]
    assert _problems(text)[0].startswith("data.plays[1]: must be a string"), _problems(text)


def test_regression_lineage_fields_are_named() -> None:
    cfg = copy.deepcopy(RAW["web-pool"])
    cfg["loop"]["lineages"][1]["lag"] = "soon"
    del cfg["loop"]["lineages"][0]["name"]
    lines = _problems(cfg)
    assert "loop.lineages[0].name: required" in lines, lines
    assert any(line.startswith("loop.lineages[1].lag: must be an integer") for line in lines)


def test_regression_training_size_names_both_fields() -> None:
    cfg = copy.deepcopy(RAW["accumulate-subsample"])
    cfg["loop"]["synthetic_size"] = [20, 0]
    cfg["loop"]["real_size"] = 0
    cfg["loop"]["initial_real_size"] = 20
    cfg["model"]["mode"] = "sample"
    lines = _problems(cfg)
    assert any(
        line.startswith("loop.real_size + loop.synthetic_size: must give >= 2") for line in lines
    ), lines




@pytest.mark.parametrize("kind", [{}, [1], {"a": 1}])
def test_regression_web_pool_adoption_kind_table(kind: Any) -> None:
    cfg = copy.deepcopy(RAW["web-pool"])
    cfg["loop"]["adoption"] = {"kind": kind}
    lines = _problems(cfg)
    assert any(line.startswith("loop.adoption: ") for line in lines), lines


def test_regression_web_pool_lineage_family_list() -> None:
    cfg = copy.deepcopy(RAW["web-pool"])
    cfg["loop"]["lineages"][0]["model"] = {"family": [1]}
    lines = _problems(cfg)
    assert any(
        line.startswith("loop.lineages[open].model.family: must be a string") for line in lines
    )

