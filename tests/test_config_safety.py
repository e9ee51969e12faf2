"""A config never executes code and never reaches outside the run directory: families and sources
come only from the registry / ``madloop.families`` entry points (a name in a file is never
imported), names cannot be paths, and path fields stay inside the run directory."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import ValidationError

from madloop.checkpoint import arm_dirname
from madloop.config import (
    ConfigError,
    DataConfig,
    RunPath,
    check_run_path,
    parse,
    resolve_run_path,
    validate,
)
from madloop.loop import Loop


def base(**over) -> dict:
    cfg = {"data": {"source": "gaussian"}, "model": {"family": "gaussian"}}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("model", "family", "os:system"),
        ("model", "family", "madloop.models.gaussian:GaussianFamily"),
        ("data", "source", "subprocess.run"),
        ("loop", "regime", "builtins:eval"),
    ],
)
def test_names_in_a_config_are_never_imported(monkeypatch, section, key, value) -> None:
    imported: list[str] = []
    real_import = importlib.import_module

    def spy(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", spy)
    cfg = base()
    cfg.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.problems[0].startswith(f"{section}.{key}: unknown {key}")
    assert not any(value.split(":")[0] in name for name in imported), imported


@pytest.mark.parametrize(
    "value", ["/etc/passwd", "~/.ssh/id_rsa", "../outside", "a/../../b", "C:\\x", "..\\..\\y", ""]
)
def test_run_paths_must_stay_inside(value, tmp_path) -> None:
    with pytest.raises(ValueError):
        check_run_path(value)
    with pytest.raises(ConfigError) as err:
        resolve_run_path(tmp_path, value, field="data.path")
    assert err.value.problems[0].startswith("data.path: ")


def test_run_path_type_in_a_config_section(tmp_path) -> None:
    class FileSource(DataConfig):
        source: Literal["file"] = "file"
        path: RunPath = "data.npy"

    assert FileSource(path="sub/data.npy").path == "sub/data.npy"
    with pytest.raises(ValidationError, match="relative path inside the run directory"):
        FileSource(path="/etc/shadow")
    assert resolve_run_path(tmp_path, "sub/data.npy", field="data.path") == (
        tmp_path.resolve() / "sub" / "data.npy"
    )


def test_symlinks_out_of_the_run_directory_are_refused(tmp_path) -> None:
    run_dir, outside = tmp_path / "run", tmp_path / "secret"
    run_dir.mkdir()
    outside.mkdir()
    os.symlink(outside, run_dir / "link")
    with pytest.raises(ConfigError, match="symlink"):
        resolve_run_path(run_dir, "link/key", field="data.path")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "a\\b", "tab\there", ""])
def test_run_and_arm_names_cannot_be_paths(name) -> None:
    with pytest.raises(ConfigError) as err:
        parse(base(name=name))
    assert err.value.problems[0].startswith("name: ")
    with pytest.raises(ConfigError) as err:
        parse(base(arms=[{"name": name, "sampling.bias": 0.5}]))
    assert err.value.problems[0].startswith("arms[0].name: ")


def test_unicode_names_are_fine_and_dirs_are_safe() -> None:
    _, arms = parse(base(name="λ sweep", arms=[{"name": "λ=0.9 (fresh)", "sampling.bias": 0.9}]))
    assert [a.name for a in arms] == ["base", "λ=0.9 (fresh)"]
    for name in ("λ=0.9 (fresh)", "a..b", "base"):
        d = arm_dirname(name)
        assert "/" not in d and not d.startswith(".") and Path(d).name == d
    assert arm_dirname("a b") != arm_dirname("a_b")  # no collisions after slugging


def test_no_generator_lives_across_generations() -> None:
    """What resume relies on: the loop, its model and its source hold no random generator; each
    generation's comes from SeedSequence(seed, spawn_key=(stream, t))."""
    from madloop.engines import build_loop

    for mode in ("exact", "sample"):
        _, arms = parse(base(model={"family": "gaussian", "mode": mode}, generations=3))
        loop = build_loop(arms[0])
        list(loop.run(3))
        for obj in (loop, loop.model, loop.real, loop.regime):
            for value in vars(obj).values():
                assert not isinstance(value, np.random.Generator | np.random.BitGenerator)
                assert not isinstance(value, np.random.RandomState)
        assert isinstance(loop, Loop)
