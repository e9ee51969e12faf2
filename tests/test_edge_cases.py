"""Numerical edge cases and diverging training have defined behaviour (docs/reliability.md, "Edge
cases"): singular fits report log det = -inf with W2 finite, λ -> 0 gives no NaN, bad
covariances and one-sample Gaussian sources are config errors, and a chain whose fit diverges
stops with its reason while the other chains (bit for bit) and arms go on.

Failures are injected through ``flaky-gaussian``, a Gaussian family registered only here.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from madloop.cli import app
from madloop.config import ConfigError, ModelConfig, validate
from madloop.data.gaussian import GaussianSource
from madloop.experiment import run
from madloop.loop import Loop
from madloop.models.base import FAMILIES, FamilySpec, FitFailed, PerReplicate, register_family
from madloop.models.gaussian import GaussianConfig, GaussianFamily
from madloop.regimes import FullySynthetic


# -- a family that fails on purpose ---------------------------------------------------------------
class FlakyConfig(GaussianConfig):
    family: Literal["flaky-gaussian"] = "flaky-gaussian"
    fail_at: int = 3
    fail_replicates: list[int] | None = [1]
    how: Literal["nan", "raise", "shared-nan"] = "nan"


class FlakyGaussian(GaussianFamily):
    """Fits like the Gaussian family, then breaks as configured at its ``fail_at``-th fit."""

    def __init__(self, replicates: int, cfg: FlakyConfig) -> None:
        super().__init__(replicates, covariance_estimator=cfg.covariance_estimator)
        self.cfg = cfg
        self.fits = 0
        self.shared = 1.0

    def fit_points(self, points, *, rng=None):
        super().fit_points(points, rng=rng)
        return self._after_fit()

    def fit_stats(self, stats):
        super().fit_stats(stats)
        return self._after_fit()

    def _after_fit(self):
        self.fits += 1
        if self.fits != self.cfg.fail_at:
            return self
        reps = self.cfg.fail_replicates
        if self.cfg.how == "raise":
            raise FitFailed("loss is NaN at step 17", replicates=reps)
        if self.cfg.how == "nan":
            self.mean_ = self.mean_.copy()
            self.mean_[reps] = np.nan
        else:
            self.shared = np.nan
        return self

    def get_state(self):
        return {**super().get_state(), "fits": np.array(self.fits), "shared": np.array(self.shared)}

    def set_state(self, state):
        super().set_state(state)
        self.fits, self.shared = int(state["fits"]), float(state["shared"])


@pytest.fixture(autouse=True)
def flaky_family():
    register_family(
        FamilySpec(
            "flaky-gaussian",
            FlakyConfig,
            lambda c, *, replicates, real: FlakyGaussian(replicates, c),
        )
    )
    yield
    FAMILIES.pop("flaky-gaussian", None)


def cfg(mode: str = "exact", **model) -> dict:
    return {
        "name": "edge",
        "seed": 2,
        "generations": 8,
        "replicates": 4,
        "data": {"source": "gaussian", "dim": 3, "covariance": "random"},
        "model": {"family": "flaky-gaussian", "mode": mode, **model},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 12},
        "arms": [{"name": "healthy", "model": {"family": "gaussian", "mode": mode}}],
    }


def _wide(metrics: pd.DataFrame, arm: str) -> pd.DataFrame:
    m = metrics[metrics.arm == arm]
    return m.pivot_table(
        index=["generation", "replicate"], columns="metric", values="value", dropna=False
    )


# -- diverging training ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "sample"])
def test_nan_state_stops_that_chain_only(mode) -> None:
    res = run(cfg(mode))
    healthy = run({**cfg(mode), "model": {"family": "gaussian", "mode": mode}})
    flaky, ref = _wide(res.metrics, "base"), _wide(healthy.metrics, "base")
    dead = flaky.index.get_level_values("replicate") == 1
    later = flaky.index.get_level_values("generation") >= 3
    assert flaky[dead & later].isna().all().all()  # stopped at generation 3, NaN from then on
    assert np.isfinite(flaky[dead & ~later].to_numpy()).all()
    # the other chains are exactly those of an undisturbed run
    pd.testing.assert_frame_equal(flaky[~dead], ref[~dead], check_exact=True)
    pd.testing.assert_frame_equal(flaky[dead & ~later], ref[dead & ~later], check_exact=True)
    assert res.manifest["failures"] == [
        {"arm": "base", "generation": 3, "replicate": 1, "reason": "non-finite fitted state 'mean'"}
    ]
    s = res.summary[(res.summary.arm == "base") & (res.summary.metric == "trace_ratio")]
    assert s.set_index("generation")["n"].to_dict() == {g: 4 if g < 3 else 3 for g in range(1, 9)}
    # the other arm ran in full
    assert res.metrics[res.metrics.arm == "healthy"].value.notna().all()


def test_fit_failed_names_its_chains_and_reason() -> None:
    res = run(cfg(how="raise", fail_replicates=[0, 2]))
    assert [(f["replicate"], f["generation"], f["reason"]) for f in res.manifest["failures"]] == [
        (0, 3, "loss is NaN at step 17"),
        (2, 3, "loss is NaN at step 17"),
    ]
    wide = _wide(res.metrics, "base")
    alive = wide.xs(8, level="generation")
    assert alive.loc[[0, 2]].isna().all().all() and alive.loc[[1, 3]].notna().all().all()


@pytest.mark.parametrize(
    "model, reason",
    [
        ({"how": "raise", "fail_replicates": None}, "loss is NaN at step 17"),
        ({"how": "shared-nan"}, "non-finite fitted state 'shared' (shared by all chains)"),
    ],
)
def test_whole_arm_failure_stops_the_arm_and_others_go_on(model, reason) -> None:
    notes: list[str] = []
    res = run(cfg(**model), log=notes.append)
    base = res.metrics[res.metrics.arm == "base"]
    assert sorted(base.generation.unique()) == [1, 2, 3]  # the arm ended at its failure
    assert base[base.generation == 3].value.isna().all()
    assert base[base.generation < 3].value.notna().all()
    assert {f["reason"] for f in res.manifest["failures"]} == {reason}
    assert len(res.manifest["failures"]) == 4
    assert res.metrics[res.metrics.arm == "healthy"].generation.max() == 8
    assert f"arm 'base': chain 0 stopped at generation 3: {reason}" in notes


def test_failure_survives_a_resume_bit_for_bit(tmp_path) -> None:
    class Crash(Exception):
        pass

    def crash(arm, g, T):
        if arm == "base" and g == 5:
            raise Crash

    ref = run(cfg("sample"))
    with pytest.raises(Crash):
        run(cfg("sample"), out=tmp_path, progress=crash)
    res = run(cfg("sample"), out=tmp_path, resume=True)
    pd.testing.assert_frame_equal(res.metrics, ref.metrics, check_exact=True)
    assert res.manifest["failures"] == ref.manifest["failures"]


def test_per_replicate_collects_fit_failed() -> None:
    class OneShot:
        def __init__(self, bad: bool) -> None:
            self.bad, self.fitted = bad, False

        def fit(self, X, y=None, *, rng):
            if self.bad:
                raise FitFailed("loss is NaN")
            self.fitted = True
            return self

    bad = iter([False, True, False])
    chains = PerReplicate(lambda: OneShot(next(bad)), 3)
    from madloop.types import Points

    with pytest.raises(FitFailed) as err:
        chains.fit_points(
            Points.tagged(np.zeros((3, 4, 2)), source=0, origin=0), rng=np.random.default_rng(0)
        )
    assert err.value.replicates == [1] and err.value.reason_for(1) == "loss is NaN"
    assert [m.fitted for m in chains.models] == [True, False, True]  # the others were fitted


def test_gaussian_on_one_point_fails_its_chains_not_the_program() -> None:
    """Past validation (a custom regime), a one-point fit has an undefined unbiased covariance:
    the loop marks every chain failed with the reason instead of carrying NaN along."""
    real = GaussianSource(np.zeros(2), np.eye(2))
    loop = Loop(
        FullySynthetic(synthetic_size=1, initial_real_size=5),
        GaussianFamily(3),
        real,
        replicates=3,
        exact=True,
    )
    records = list(loop.run(5))
    assert [r.generation for r in records] == [1, 2]
    assert records[1].failures == dict.fromkeys(range(3), "non-finite fitted state 'cov_factor'")
    assert loop.stopped is not None


# -- singular fits, tiny bias ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "sample"])
def test_n_at_most_d_gives_minus_inf_log_det_and_finite_w2(mode, tmp_path) -> None:
    config = {
        "generations": 6,
        "replicates": 5,
        "seed": 1,
        "data": {"source": "gaussian", "dim": 6},
        "model": {"family": "gaussian", "mode": mode},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 6},  # n = d: rank n - 1 < d
    }
    res = run(config, out=tmp_path)
    res.write_plots()
    wide = _wide(res.metrics, "base")
    assert (wide["log_det_change"] == -np.inf).all()
    assert (wide["kl_divergence"] == np.inf).all()
    for m in ("wasserstein2", "trace_ratio", "mean_error_sq"):
        assert np.isfinite(wide[m]).all() and (wide[m] > 0).all()
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert (summary[summary.metric == "log_det_change"]["mean"] == -np.inf).all()
    assert pd.read_parquet(tmp_path / "metrics.parquet").value.isna().sum() == 0


@pytest.mark.parametrize("mode", ["exact", "sample"])
@pytest.mark.parametrize("regime", ["fully-synthetic", "accumulate"])
def test_bias_near_zero_never_gives_nan(mode, regime) -> None:
    config = {
        "generations": 80,
        "replicates": 3,
        "seed": 4,
        "data": {"source": "gaussian", "dim": 4, "covariance": "random"},
        "model": {"family": "gaussian", "mode": mode},
        "sampling": {"bias": 1e-12},
        "loop": {"regime": regime, "synthetic_size": 20},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no stray floating-point warnings either
        res = run(config)
    values = res.metrics.value
    assert values.isna().sum() == 0 and not res.manifest["failures"]
    last = _wide(res.metrics, "base").xs(80, level="generation")
    # λ -> 0: new samples sit on the mean. Fully synthetic collapses to 0; accumulate keeps the
    # 20 real points in a pool of 20 + 79 * 20, so tr Σ_80 / tr Σ_0 ≈ 19 / 1599 ≈ 0.012 (a
    # chi-square with 19 dof: sd ≈ 32 %); 0.03 is that plus 5 sd.
    assert (last["trace_ratio"] < (0.03 if regime == "accumulate" else 1e-12)).all()
    assert np.isfinite(last["wasserstein2"]).all()
    if regime == "fully-synthetic":  # the factor underflows to 0: singular, reported as such
        assert (last["log_det_change"] == -np.inf).all() and (last["kl_divergence"] == np.inf).all()
    assert res.summary["mean"].isna().sum() == 0


# -- data and one-sample configs are config errors ------------------------------------------------
def _problems(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(config)
    return err.value.problems


@pytest.mark.parametrize(
    "cov, words",
    [
        ([[1.0, 0.0], [0.0, 0.0]], "zero-variance direction"),
        ([[float("nan"), 0.0], [0.0, 1.0]], "NaN"),
        ([[1.0, 2.0], [2.0, 1.0]], "negative variance"),
    ],
)
def test_degenerate_covariance_is_a_config_error(cov, words) -> None:
    (line,) = _problems(
        {
            "data": {"source": "gaussian", "dim": 2, "covariance": cov},
            "model": {"family": "gaussian"},
        }
    )
    assert line.startswith("data.covariance: ") and words in line


def test_nan_mean_and_bias_are_config_errors() -> None:
    lines = _problems(
        {
            "data": {"source": "gaussian", "dim": 2, "mean": float("nan")},
            "model": {"family": "gaussian"},
            "sampling": {"bias": float("nan")},
        }
    )
    assert any(x.startswith("data.mean: must be finite") for x in lines)
    assert any(x.startswith("sampling.bias: must be in (0, 1]") for x in lines)


@pytest.mark.parametrize(
    "loop, field",
    [
        ({"synthetic_size": 1}, "loop.synthetic_size"),
        ({"initial_real_size": 1}, "loop.initial_real_size"),
        (
            {"regime": "accumulate-subsample", "synthetic_size": 1, "initial_real_size": 9},
            "loop.synthetic_size",
        ),
        ({"regime": "fresh-data", "real_size": 1, "synthetic_size": [5, 0]}, "loop.synthetic_size"),
    ],
)
def test_one_sample_gaussian_is_a_config_error(loop, field) -> None:
    (line,) = _problems(
        {"data": {"source": "gaussian", "dim": 2}, "model": {"family": "gaussian"}, "loop": loop}
    )
    assert line.split(": ")[0].split(" + ")[-1].endswith(field.split(".")[-1]), line
    assert "must give >= 2 training points (a Gaussian fit needs 2)" in line


class PointMassConfig(ModelConfig):
    family: Literal["point-mass"] = "point-mass"


class PointMass:
    """The mean of its data, sampled without spread: defined on a single point."""

    def __init__(self, replicates: int) -> None:
        self.mean_ = None

    def fit_points(self, points, *, rng):
        self.mean_ = points.global_X().mean(axis=1)
        return self

    def sample_points(self, n, *, bias, rng):
        from madloop.types import Points

        return Points.tagged(np.repeat(self.mean_[:, None], n, axis=1), source=1, origin=-1)

    def moments(self):
        R, d = self.mean_.shape
        return self.mean_, np.zeros((R, d, d))

    def get_state(self):
        return {"mean": self.mean_}

    def set_state(self, state):
        self.mean_ = state["mean"]


def test_one_sample_source_is_defined_for_a_family_that_accepts_it(tmp_path) -> None:
    register_family(
        FamilySpec(
            "point-mass", PointMassConfig, lambda c, *, replicates, real: PointMass(replicates)
        )
    )
    try:
        config = {
            "generations": 4,
            "replicates": 2,
            "data": {"source": "gaussian", "dim": 2},
            "model": {"family": "point-mass"},
            "loop": {"regime": "fully-synthetic", "synthetic_size": 1},
        }
        res = run(config, out=tmp_path)
        wide = _wide(res.metrics, "base")
        assert (wide["trace_ratio"] == 0).all() and (wide["log_det_change"] == -np.inf).all()
        assert np.isfinite(wide["wasserstein2"]).all()
        # a one-point fit of the real law, then its copies: the mean never moves again
        assert (wide["mean_error_sq"].unstack().nunique(axis=0) == 1).all()
    finally:
        FAMILIES.pop("point-mass", None)


def test_cli_notes_stopped_chains(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "generations = 4\nreplicates = 3\n[data]\nsource = 'gaussian'\ndim = 2\n"
        "[model]\nfamily = 'flaky-gaussian'\nfail_at = 2\nfail_replicates = [2]\n"
        "[loop]\nsynthetic_size = 5\n"
    )
    res = CliRunner().invoke(
        app, ["run", str(path), "--out", str(tmp_path / "r"), "-q", "--no-plots"]
    )
    assert res.exit_code == 0, res.output
    assert "chain 2 stopped at generation 2: non-finite fitted state 'mean'" in " ".join(
        res.output.split()
    )


class StatelessConfig(ModelConfig):
    family: Literal["stateless"] = "stateless"


class Stateless:
    """PointMass without get_state / set_state (outside the checkpoint contract)."""

    def __init__(self) -> None:
        self.inner = PointMass(1)

    def fit_points(self, points, *, rng):
        self.inner.fit_points(points, rng=rng)
        return self

    def sample_points(self, n, *, bias, rng):
        return self.inner.sample_points(n, bias=bias, rng=rng)

    def moments(self):
        return self.inner.moments()


def test_family_without_get_state_runs_uncheckpointed(tmp_path) -> None:
    register_family(
        FamilySpec("stateless", StatelessConfig, lambda c, *, replicates, real: Stateless())
    )
    try:
        config = {
            "generations": 3,
            "replicates": 2,
            "data": {"source": "gaussian", "dim": 2},
            "model": {"family": "stateless"},
            "loop": {"synthetic_size": 4},
        }
        notes: list[str] = []
        res = run(config, out=tmp_path, log=notes.append)
        assert len(res.metrics) == 3 * 2 * 5
        assert notes == ["arm 'base': family 'stateless' has no get_state(); not checkpointed"]
        assert not (tmp_path / "checkpoints").exists()
    finally:
        FAMILIES.pop("stateless", None)
