"""One engine for every arm: web-pool arms are checkpointed and resumed bit for bit like any arm
(SIGKILL mid-run, alone or next to an ordinary arm), their metrics are measured with each
lineage's bias, and a failing chain of one lineage stops alone.

The SIGKILL tests follow ``test_checkpoint.py``: the real ``madloop`` command in a subprocess,
killed once a checkpoint of a late enough generation exists, then resumed with ``--resume``.
"""

from __future__ import annotations

import itertools
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from madloop.config import ConfigError, parse
from madloop.engines import build_engine
from madloop.experiment import run
from madloop.loop import Engine, Loop
from madloop.metrics.base import METRIC_SUITES, MetricSuite, register_suite
from madloop.models.base import FitFailed
from madloop.pool import PoolLoop, build_pool
from processes import madloop_run, wait_until
from toy_models import ToyDiagonal

POOL_CFG = """
name = "pool-kill"
seed = 3
generations = 30
replicates = 40

[data]
source = "gaussian"
dim = 3

[model]
family = "gaussian"
mode = "sample"

[loop]
regime = "web-pool"
scrape_size = 150
initial_real = 2.0
adoption = 0.7
max_age = 4

[[loop.lineages]]
name = "open"

[[loop.lineages]]
name = "late"
lag = 2
bias = 0.8
"""

MIXED_ARM = """
[[arms]]
name = "plain"
loop.regime = "fully-synthetic"
loop.synthetic_size = 120
"""


def _kill_when(proc, arm_dir: Path, generation: int) -> None:
    """SIGKILL ``proc`` once ``arm_dir`` holds a checkpoint of ``generation`` or later."""
    def checkpointed() -> bool:
        found = [int(p.parent.name[3:]) for p in arm_dir.glob("gen*/index.json")]
        return max(found, default=0) >= generation

    try:
        wait_until(proc, checkpointed, 120, f"checkpoint of generation {generation}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _kill_resume_compare(tmp_path: Path, text: str, arm: str) -> tuple[Path, str]:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(text)
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    proc = madloop_run(str(cfg), "--out", str(killed))
    _kill_when(proc, killed / "checkpoints" / arm, 4)
    assert not (killed / "metrics.parquet").exists()  # it really died mid-loop
    resumed = madloop_run(str(cfg), "--out", str(killed), "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    run(str(cfg), out=ref)  # uninterrupted
    got = pd.read_parquet(killed / "metrics.parquet")
    want = pd.read_parquet(ref / "metrics.parquet")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    prov = [pd.read_csv(d / "provenance.csv") for d in (killed, ref)]
    pd.testing.assert_frame_equal(*prov, check_exact=True)
    return killed, " ".join(err.split())


def test_sigkill_a_web_pool_run_then_resume_is_bit_exact(tmp_path) -> None:
    killed, err = _kill_resume_compare(tmp_path, POOL_CFG, "base")
    assert "arm 'base': resuming after generation" in err
    assert "base:open restored at generation" in err and "base:late restored" in err
    got = pd.read_parquet(killed / "metrics.parquet")
    assert set(got.arm) == {"base:open", "base:late"} and got.generation.max() == 30


def test_sigkill_a_mixed_run_then_resume_is_bit_exact(tmp_path) -> None:
    killed, err = _kill_resume_compare(tmp_path, POOL_CFG + MIXED_ARM, "plain")
    assert "arm 'base': finished at generation 30; not recomputed" in err
    assert "arm 'plain': resuming after generation" in err
    for arm in ("base", "plain"):
        assert list((killed / "checkpoints" / arm).glob("gen*/index.json")), arm
    got = pd.read_parquet(killed / "metrics.parquet")
    assert set(got.arm) == {"base:open", "base:late", "plain"}


def _pool_cfg(**loop) -> dict:
    return {
        "name": "engine",
        "seed": 9,
        "generations": 6,
        "replicates": 5,
        "data": {"source": "gaussian", "dim": 2},
        "model": {"family": "gaussian", "mode": "sample"},
        "loop": {"regime": "web-pool", "scrape_size": 30, "adoption": 0.6, **loop},
    }


def test_both_engines_are_engines_built_from_one_table() -> None:
    _, arms = parse({**_pool_cfg(), "arms": [{"name": "one", "loop.regime": "fresh-data"}]})
    pool, single = build_engine(arms[0]), build_engine(arms[1])
    assert isinstance(pool, PoolLoop) and isinstance(single, Loop)
    assert isinstance(pool, Engine) and isinstance(single, Engine)
    assert single.labels == ["one"] and pool.labels == ["base"]
    [rec] = single.step()
    assert rec.arm == "one" and rec.generation == 1


@pytest.mark.parametrize("mode", ["sample", "exact"])
def test_pool_state_round_trips_bit_for_bit(mode) -> None:
    lineages = [{"name": "A"}, {"name": "B", "lag": 1, "bias": 0.7}]
    cfg = _pool_cfg(lineages=lineages, max_age=2)
    cfg["model"]["mode"] = mode
    _, arms = parse(cfg)
    straight, first = build_pool(arms[0]), build_pool(arms[0])
    for _ in range(3):
        straight.step()
        first.step()
    from madloop.checkpoint import load_npz, npz_bytes, split_state

    files = split_state(first.get_state())
    state = {
        f"{f.removesuffix('.npz')}/{k}": v
        for f, arrays in files.items()
        for k, v in load_npz(npz_bytes(arrays)).items()
    }
    resumed = build_pool(arms[0])
    resumed.set_state(state)
    assert resumed.generation == 3 and resumed.samplers.keys() == straight.samplers.keys()
    for _ in range(3):
        for a, b in zip(straight.step(), resumed.step(), strict=True):
            assert a.arm == b.arm and a.provenance.keys() == b.provenance.keys()
            for name in a.metrics:
                np.testing.assert_array_equal(a.metrics[name], b.metrics[name])


# -- metrics with the lineage's bias --------------------------------------------------------------
@pytest.fixture
def bias_suite():
    """A metric suite that reports the sampling bias it was measured with."""

    def compute(model, real, *, rng, generation, bias):
        return {"seen_bias": np.full(model.replicates, float(bias))}

    register_suite(MetricSuite("test-seen-bias", lambda m, r: True, compute, samples=True))
    yield
    METRIC_SUITES.pop("test-seen-bias", None)


def test_pool_metrics_are_measured_with_each_lineages_bias(bias_suite) -> None:
    cfg = _pool_cfg(lineages=[{"name": "half", "bias": 0.5}, {"name": "full"}])
    cfg["sampling"] = {"bias": 1.0}
    m = run(cfg).metrics
    seen = m[(m.metric == "seen_bias") & (m.generation >= 1)]  # 0: the real-data floor
    seen = seen.groupby("arm")["value"].unique()
    assert seen["base:half"].tolist() == [0.5] and seen["base:full"].tolist() == [1.0]


# -- a failing chain of one lineage ----------------------------------------------------------------
class Flaky(ToyDiagonal):
    """A diagonal Gaussian fitted one data set at a time; the instance made ``fail_on`` fails
    its third fit (raising FitFailed, or with a NaN scale)."""

    made = itertools.count()
    fail_on = -1
    how = "raise"

    def __init__(self) -> None:
        super().__init__()
        self.index, self.fits = next(Flaky.made), 0

    def fit(self, X, y=None, *, rng):
        super().fit(X, rng=rng)
        self.fits += 1
        if self.index == Flaky.fail_on and self.fits == 3:
            if Flaky.how == "raise":
                raise FitFailed("loss is NaN")
            self.scale_ = np.full_like(self.scale_, np.nan)
        return self


@pytest.fixture
def flaky_family():
    from typing import Literal

    from madloop.config import ModelConfig
    from madloop.models.base import FAMILIES, FamilySpec, PerReplicate, register_family

    class FlakyConfig(ModelConfig):
        family: Literal["test-flaky"] = "test-flaky"

    register_family(
        FamilySpec(
            "test-flaky",
            FlakyConfig,
            lambda c, *, replicates, real: PerReplicate(Flaky, replicates),
        )
    )
    yield
    FAMILIES.pop("test-flaky", None)


def _flaky_run(fail_on: int, how: str = "raise"):
    # the live lineage models are built first: instances 0..R-1 are the flaky lineage's chains
    Flaky.made, Flaky.fail_on, Flaky.how = itertools.count(), fail_on, how
    lineages = [{"name": "flaky", "model": {"family": "test-flaky"}}, {"name": "gauss"}]
    return run(_pool_cfg(lineages=lineages, max_age=2))


@pytest.mark.parametrize(
    "how, reason", [("raise", "loss is NaN"), ("nan", "non-finite fitted state 'r1/scale'")]
)
def test_a_failing_chain_of_one_lineage_stops_alone(flaky_family, how, reason) -> None:
    res, ref = _flaky_run(1, how), _flaky_run(-1)
    assert res.manifest["failures"] == [
        {"arm": "base:flaky", "generation": 3, "replicate": 1, "reason": reason}
    ]
    assert not ref.manifest["failures"]
    m = res.metrics.set_index(["arm", "generation", "replicate", "metric"])["value"]
    r = ref.metrics.set_index(["arm", "generation", "replicate", "metric"])["value"]
    dead = m.xs(("base:flaky", 1), level=("arm", "replicate"))
    assert dead[dead.index.get_level_values("generation") >= 3].isna().all()
    assert dead[dead.index.get_level_values("generation") < 3].notna().all()
    # every other chain, of both lineages, has the numbers of an undisturbed run
    others = m.index.get_level_values("replicate") != 1
    pd.testing.assert_series_equal(m[others], r[others], check_exact=True)
    assert m[m.index.get_level_values("arm") == "base:gauss"].notna().all()


def test_config_errors_of_a_pool_arm_still_come_first(tmp_path) -> None:
    cfg = _pool_cfg(adoption=1.0, max_age=1, detector={"tpr": 1.0})
    with pytest.raises(ConfigError, match="loop.detector: at generation 2"):
        run(cfg, out=tmp_path)
