"""``madloop run --dry-run``: the memory estimate bounds the measured peak (tracemalloc, which
numpy reports to) within a factor 4; runs that would not fit are refused with the estimate and
what to lower."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from madloop import resources
from madloop.cli import app
from madloop.config import parse
from madloop.engines import build_loop
from madloop.regimes import REGIMES


@pytest.mark.parametrize(
    "regime, mode, R, n, d, T",
    [
        ("fully-synthetic", "sample", 20, 1500, 12, 2),
        ("accumulate", "sample", 10, 300, 8, 8),
        ("fresh-data", "sample", 10, 800, 30, 2),
        ("accumulate-subsample", "sample", 10, 300, 8, 8),
        ("synthetic-augmentation", "sample", 40, 600, 2, 4),
        ("fully-synthetic", "exact", 300, 10, 40, 2),
        ("accumulate", "exact", 300, 10, 40, 4),
    ],
)
def test_memory_estimate_bounds_the_measured_peak(regime, mode, R, n, d, T) -> None:
    uses_real = regime in ("fresh-data", "synthetic-augmentation")
    cfg = {
        "generations": T,
        "replicates": R,
        "data": {"source": "gaussian", "dim": d},
        "model": {"family": "gaussian", "mode": mode},
        "loop": {"regime": regime, "synthetic_size": n, "real_size": n // 2 if uses_real else 0},
    }
    _, arms = parse(cfg)
    loop = build_loop(arms[0])
    tracemalloc.start()
    try:
        for _ in loop.run(T):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    est = resources.estimate_arm(arms[0])
    assert peak <= est.memory <= 4 * peak, (peak, est.memory)


@pytest.mark.parametrize(
    "name, data, model, loop",
    [
        (  # K candidates a synthetic point: the draw is K times the training set
            "curation K=16",
            {"source": "gaussian", "dim": 8},
            {"family": "gaussian", "mode": "sample"},
            {"regime": "fully-synthetic", "synthetic_size": 400,
             "curation": {"reward": "linear", "choices": 16, "direction": [1.0] * 8}},
        ),
        (  # rows are x and y (d + 1 numbers), and the least-squares fit holds its factors
            "regression",
            {"source": "linear-regression", "dim": 20, "design_size": 100},
            {"family": "linear-regression", "mode": "sample"},
            {"regime": "fully-synthetic", "synthetic_size": 500},
        ),
    ],
)  # fmt: skip
def test_memory_estimate_bounds_curation_and_regression(name, data, model, loop) -> None:
    _, arms = parse({"generations": 3, "replicates": 10, "data": data, "model": model,
                     "loop": loop})  # fmt: skip
    run_loop = build_loop(arms[0])
    tracemalloc.start()
    try:
        for _ in run_loop.run(3):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    est = resources.estimate_arm(arms[0])
    assert peak <= est.memory <= 4 * peak, (name, peak, est.memory)


def test_training_sizes_follow_the_regime() -> None:
    def regime(name, **kw):
        return REGIMES[name](**kw)

    assert resources.training_sizes(regime("accumulate", synthetic_size=10), 5) == (10, 50, 50)
    sub = regime("accumulate-subsample", synthetic_size=10, real_size=0)
    assert resources.training_sizes(sub, 5) == (10, 10, 50)
    aug = regime("synthetic-augmentation", real_size=4, synthetic_size=6)
    assert resources.training_sizes(aug, 3) == (10, 10, 4)
    sched = regime("fresh-data", real_size=[5, 1], synthetic_size=[3, 3, 8])
    assert [s for _, s, _ in resources.iter_training_sizes(sched, 4)] == [8, 4, 9, 9]


def test_machine_figures_are_positive(tmp_path: Path) -> None:
    assert resources.available_memory() > 0
    assert resources.free_disk(tmp_path / "not" / "yet") > 0


def _config(tmp_path: Path, replicates: int, generations: int, dim: int = 10) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        f"name = 'big'\ngenerations = {generations}\nreplicates = {replicates}\n"
        f"[data]\nsource = 'gaussian'\ndim = {dim}\n[model]\nfamily = 'gaussian'\n"
        "mode = 'sample'\n[loop]\nregime = 'accumulate'\nsynthetic_size = 1000\n"
    )
    return path


def test_dry_run_prints_the_estimate_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["run", str(_config(tmp_path, 2, 3)), "--out", str(out), "--dry-run"]
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "arm 'base': points mode, 2 replicates x 3 generations" in text
    assert "training set up to 3,000 rows" in text and "available: memory" in text
    assert not out.exists()


def test_a_run_that_cannot_fit_in_memory_is_refused(tmp_path) -> None:
    # 10^4 replicates x a pool of 10^6 rows x 1,000 numbers: ~ 10^14 floats, far beyond any RAM
    path = _config(tmp_path, 10_000, 1000, dim=1000)
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "error: memory: the run needs about" in text and "is available" in text
    assert "lower replicates (10000)" in text and "model.mode = 'exact'" in text
    assert "error: arm 'base': points mode" in text  # the estimate itself is shown
    assert not (tmp_path / "o").exists()


def test_a_run_that_cannot_fit_on_disk_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(resources, "free_disk", lambda path: 1000)
    res = CliRunner().invoke(
        app, ["run", str(_config(tmp_path, 2, 3)), "--out", str(tmp_path / "o"), "-q"]
    )
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "error: disk: the run writes about" in text and "1000 B is free" in text
    assert "--keep-checkpoints" in text


def test_estimate_grows_with_what_it_should() -> None:
    def mem(**over) -> int:
        cfg = {
            "generations": 5,
            "replicates": 4,
            "data": {"source": "gaussian", "dim": 6},
            "model": {"family": "gaussian", "mode": "sample"},
            "loop": {"regime": "accumulate", "synthetic_size": 100},
        }
        for k, v in over.items():
            section, _, key = k.partition("__")
            if key:
                cfg[section][key] = v
            else:
                cfg[section] = v
        _, arms = parse(cfg)
        return resources.estimate_arm(arms[0]).memory

    base = mem()
    assert mem(replicates=8) > 1.9 * base
    assert mem(generations=10) > 1.9 * base  # the pool grows
    assert mem(data__dim=12) > 1.9 * base
    assert mem(model__mode="exact") < base / 10
    # a fully synthetic loop holds one batch whatever the number of generations
    fully = mem(loop__regime="fully-synthetic")
    assert fully == mem(loop__regime="fully-synthetic", generations=50) and fully < base
