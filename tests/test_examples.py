"""Every example config validates, there is one per regime, and each runs (shortened)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

import madloop
from madloop.config import parse
from madloop.regimes import REGIMES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BUILTIN_REGIMES = (
    "fully-synthetic",
    "synthetic-augmentation",
    "fresh-data",
    "accumulate",
    "accumulate-subsample",
)


def test_one_example_per_regime():
    assert set(BUILTIN_REGIMES) <= set(REGIMES)
    for regime in BUILTIN_REGIMES:
        path = EXAMPLES / f"{regime}.toml"
        assert path.is_file(), f"missing example {path.name}"
        base, _ = parse(path)
        assert base.loop.regime == regime


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_validates_and_runs(path: Path):
    base, arms = parse(path)
    assert arms and base.name == path.stem
    raw = tomllib.loads(path.read_text())
    neural = "steps" in raw["model"]
    if neural:  # a neural example: validate its arms, train each only briefly, on two chains
        raw["model"]["steps"] = 3
        for arm in raw.get("arms", []):
            arm.pop("model.steps", None)
            arm.get("model", {}).pop("steps", None)
        if "eval_size" in raw["data"]:
            raw["data"]["eval_size"] = 100
    res = madloop.run(raw, generations=3, replicates=2 if neural else 4)
    # a web-pool arm reports one chain per lineage, as "<arm>:<lineage>"
    assert {name.split(":")[0] for name in res.metrics["arm"]} == {a.name for a in arms}
    assert np.isfinite(res.metrics["value"]).all()


def test_flagship_study_is_the_seeds():
    """examples/mad-gaussian.toml: fully synthetic at λ = 1 and λ < 1, augmentation, fresh data."""
    _, arms = parse(EXAMPLES / "mad-gaussian.toml")
    seen = {(a.config.loop.regime, a.config.sampling.bias < 1) for a in arms}
    assert {
        ("fully-synthetic", False),
        ("fully-synthetic", True),
        ("synthetic-augmentation", False),
        ("fresh-data", False),
    } <= seen
