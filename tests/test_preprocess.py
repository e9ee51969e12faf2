"""``loop.preprocess``: clipping's variance factor against its closed form (population and plug-in),
the loops against their recursions, dedup, provenance, config errors, the masked fits, exact mode,
resume, and bit-identical numbers without steps.

Tolerances: k = 4 standard errors from the simulation's own spread over replicates, plus, for the
plug-in clip, the stated per-generation allowance for c_n(k, d) - c(k, d) (the closed form is the
n -> ∞ limit; ``madloop.theory.preprocess``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from blas import bit_for_bit
from madloop.config import ConfigError, resolve_arms, validate
from madloop.config.preprocess import PreprocessStep
from madloop.engines import build_engine
from madloop.experiment import run
from madloop.preprocess import Masked, Preprocessor, clip_mask, dedup_mask, mahalanobis_sq
from madloop.theory.preprocess import clip_factor, clip_share, expected_trace_ratio
from madloop.types import REAL, SYNTHETIC, Points

K_SE = 4.0
#: |c_n / c - 1| per generation at n = 1000, d = 2 (measured: -0.05% .. +0.2%, k = 1.5 .. 3)
PLUG_IN_ALLOWANCE = 0.003


def config(steps=(), *, bias=1.0, n=1000, R=200, T=8, dim=2, mode="sample", **loop) -> dict:
    return {
        "name": "pre",
        "seed": 3,
        "generations": T,
        "replicates": R,
        "include_base": True,
        "data": {"source": "gaussian", "dim": dim, "covariance": "random"},
        "model": {"family": "gaussian", "mode": mode},
        "sampling": {"bias": bias},
        "loop": {"regime": "fully-synthetic", "synthetic_size": n, **loop}
        | ({"preprocess": list(steps)} if steps else {}),
    }


def trace_ratio(result) -> pd.DataFrame:
    s = result.summary
    return s[s.metric == "trace_ratio"].sort_values("generation").reset_index(drop=True)


# -- the clip's closed form ------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "d"), [(2.0, 2), (1.5, 5)])
def test_population_clip_keeps_a_truncated_gaussian_with_covariance_c_sigma(k, d):
    """Clip draws of N(0, Σ) at the true radius (true mean and Σ): share p(k, d), covariance
    c(k, d) Σ, within 4 standard errors over 100 replicates of 5,000 draws."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((d, d))
    cov = A @ A.T + d * np.eye(d)
    R, n = 100, 5000
    X = rng.standard_normal((R, n, d)) @ np.linalg.cholesky(cov).T
    mask = np.ones((R, n), dtype=bool)
    inside = mahalanobis_sq(X, mask, np.zeros((R, d)), cov) < k * k
    share = inside.mean(axis=1)
    assert abs(share.mean() - clip_share(k, d)) < K_SE * share.std(ddof=1) / np.sqrt(R)
    ratio = []
    for r in range(R):
        kept = X[r][inside[r]]
        ratio.append(np.trace(np.cov(kept.T)) / np.trace(cov))
    ratio = np.asarray(ratio)
    assert abs(ratio.mean() - clip_factor(k, d)) < K_SE * ratio.std(ddof=1) / np.sqrt(R)
    # the whole matrix, not only its trace: c Σ entry by entry (relative to Σ's scale)
    full = np.mean([np.cov(X[r][inside[r]].T) for r in range(R)], axis=0)
    np.testing.assert_allclose(full, clip_factor(k, d) * cov, atol=0.02 * np.trace(cov) / d)


def test_the_closed_form_values():
    assert clip_factor(2.0, 2) == pytest.approx(1 - 2 * np.exp(-2) / (1 - np.exp(-2)))
    assert clip_share(2.0, 2) == pytest.approx(1 - np.exp(-2))
    assert clip_factor(50.0, 3) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("n", "low", "high"), [(1000, -PLUG_IN_ALLOWANCE, PLUG_IN_ALLOWANCE), (100, 0.0, 0.02)]
)
def test_plug_in_clip_factor_is_the_closed_form_to_order_one_over_n(n, low, high):
    """The loop clips at the radius of the set's own mean and covariance: one generation's
    factor c_n(2, 2) is within the stated band of c(2, 2) (4 SE added): |c_n/c - 1| <= 0.3% at
    n = 1000; at n = 100 it is larger, by a positive 0 .. 2% (the clip is a little wider)."""
    rng = np.random.default_rng(2)
    R, d, k = 2000, 2, 2.0
    X = rng.standard_normal((R, n, d))
    mask = np.ones((R, n), dtype=bool)
    kept = clip_mask(X, mask, radius=k)
    ratio = np.array([np.trace(np.cov(X[r][kept[r]].T)) / d for r in range(R)])
    rel = ratio.mean() / clip_factor(k, d) - 1
    se = ratio.std(ddof=1) / np.sqrt(R) / clip_factor(k, d)
    assert low - K_SE * se < rel < high + K_SE * se


# -- loops against their recursions ---------------------------------------------------------------
def check_against_theory(result, arm: str, *, allowance: float = PLUG_IN_ALLOWANCE) -> None:
    tr = trace_ratio(result)
    tr = tr[tr.arm == arm]
    assert tr.theory.notna().all(), "the preprocess predictor must apply"
    t = tr.generation.to_numpy()
    gap = np.abs(tr["mean"] - tr.theory).to_numpy()
    bound = K_SE * tr.std_error.to_numpy() + allowance * t * tr.theory.to_numpy()
    assert (gap <= bound).all(), tr[["generation", "mean", "theory", "std_error"]]


def test_clip_loop_follows_c_to_the_t_times_lambda_to_the_t_minus_1():
    """Fully synthetic, d = 2, n = 1000, 200 chains, 8 generations: clip k = 2 at λ = 1 and
    λ = 0.9 against E[tr Σ_t]/tr Σ_0 = c^t λ^(t-1) (clipping alone collapses the variance)."""
    cfg = config([{"step": "clip", "radius": 2.0}])
    cfg["include_base"] = False
    cfg["arms"] = [
        {"name": "clip", "sampling": {"bias": 1.0}},
        {"name": "clip-biased", "sampling": {"bias": 0.9}},
    ]
    result = run(cfg)
    check_against_theory(result, "clip")
    check_against_theory(result, "clip-biased")
    c = clip_factor(2.0, 2)
    tr = trace_ratio(result)
    theory = tr[tr.arm == "clip-biased"].theory.to_numpy()
    np.testing.assert_allclose(theory, c ** np.arange(1, 9) * 0.9 ** np.arange(8))


def test_composed_loops_follow_their_recursions():
    """Clip of synthetic rows only: (λc)^(t-1); standardise then clip: c every generation;
    clip then standardise: 1 exactly (the unbiased fit of standardised rows has the real
    diagonal); dedup at tolerance 0 and align change no trace."""
    clip = {"step": "clip", "radius": 2.0}
    cfg = config([clip], bias=0.9, T=5)
    cfg["include_base"] = False
    cfg["arms"] = [
        {"name": "synthetic-clip", "loop": {"preprocess": [clip | {"applies_to": "synthetic"}]}},
        {"name": "std-clip", "loop": {"preprocess": [{"step": "standardise"}, clip]}},
        {"name": "clip-std", "loop": {"preprocess": [clip, {"step": "standardise"}]}},
        {
            "name": "dedup-align-clip",
            "loop": {"preprocess": [{"step": "dedup"}, {"step": "align"}, clip]},
        },
    ]
    result = run(cfg)
    for arm in ("synthetic-clip", "std-clip", "dedup-align-clip"):
        check_against_theory(result, arm)
    tr = trace_ratio(result)
    c = clip_factor(2.0, 2)
    np.testing.assert_allclose(
        tr[tr.arm == "synthetic-clip"].theory, (0.9 * c) ** np.arange(5), rtol=1e-12
    )
    np.testing.assert_allclose(tr[tr.arm == "std-clip"].theory, c, rtol=1e-12)
    np.testing.assert_allclose(tr[tr.arm == "clip-std"]["mean"], 1.0, rtol=1e-9)
    np.testing.assert_allclose(tr[tr.arm == "clip-std"].theory, 1.0)


def test_two_clips_of_one_set_have_no_prediction():
    steps = tuple(PreprocessStep(step="clip", radius=2.0) for _ in range(2))
    assert np.isnan(expected_trace_ratio(steps, 3, dim=2, bias=1.0)).all()


# -- dedup ----------------------------------------------------------------------------------------
def test_dedup_at_tolerance_zero_removes_exact_duplicates_and_nothing_else():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((3, 50, 4))
    X[:, 10] = X[:, 3]  # an exact copy of an earlier row
    X[:, 20] = X[:, 3]
    X[:, 30] = X[:, 7] + 1e-12  # a near copy: kept at tolerance 0
    mask = np.ones((3, 50), dtype=bool)
    kept = dedup_mask(X, mask, tolerance=0.0)
    expected = mask.copy()
    expected[:, [10, 20]] = False
    np.testing.assert_array_equal(kept, expected)
    near = dedup_mask(X, mask, tolerance=1e-9)
    expected[:, 30] = False
    np.testing.assert_array_equal(near, expected)


def test_dedup_is_greedy_in_row_order():
    X = np.array([[[0.0], [0.8], [1.6]]])  # 0 - 0.8 - 1.6: the middle one goes, the last stays
    kept = dedup_mask(X, np.ones((1, 3), dtype=bool), tolerance=1.0)
    np.testing.assert_array_equal(kept, [[True, False, True]])


def test_dedup_of_token_sequences_is_exact():
    X = np.array([[[1, 2, 3], [1, 2, 3], [1, 2, 4], [3, 2, 1]]])
    kept = dedup_mask(X, np.ones((1, 4), dtype=bool), tolerance=0.0)
    np.testing.assert_array_equal(kept, [[True, False, True, True]])


# -- provenance and sizes -------------------------------------------------------------------------
def test_provenance_counts_add_up_per_source_and_the_fit_sees_only_kept_rows():
    cfg = config(
        [
            {"step": "clip", "radius": 1.5, "applies_to": "synthetic"},
            {"step": "dedup", "tolerance": 0.05},
            {"step": "clip", "keep": 0.9, "applies_to": "real"},
        ],
        R=4,
        T=3,
        n=60,
        regime="synthetic-augmentation",
        real_size=40,
        synthetic_size=60,
    )
    engine = build_engine(resolve_arms(validate(cfg))[0])
    for _ in range(3):
        (rec,) = engine.step()
        composed = {REAL: 40, SYNTHETIC: 60} if rec.generation > 1 else {REAL: 100}
        assert rec.provenance_columns == ("removed_by",)
        kept_total = np.zeros(4)
        for source, size in composed.items():
            rows = {k: v for k, v in rec.provenance.items() if k[0] == source}
            np.testing.assert_array_equal(sum(rows.values()), size)  # kept + removed = composed
            kept_total += sum(v for k, v in rows.items() if k[2] == 0)
        composed_size = sum(composed.values())
        np.testing.assert_allclose(rec.metrics["removed_share"], 1 - kept_total / composed_size)
        np.testing.assert_array_equal(rec.train_size, kept_total)
        np.testing.assert_array_equal(engine.model.n_samples_, kept_total)
    left = 40 - rec.provenance[(REAL, 0, 2)]  # the real rows the dedup left; keep = 0.9 of them
    np.testing.assert_array_equal(rec.provenance[(REAL, 0, 3)], left - np.ceil(0.9 * left))


def test_the_gaussian_masked_fit_equals_fitting_the_kept_rows_alone():
    from madloop.models.gaussian import GaussianFamily

    rng = np.random.default_rng(6)
    X = rng.standard_normal((3, 40, 3)) * [1.0, 2.0, 0.5] + 3.0
    points = Points.tagged(X, source=SYNTHETIC, origin=1)
    pre = Preprocessor((PreprocessStep(step="clip", radius=1.5),), None, min_train_size=2)
    train, _ = pre(points)
    assert isinstance(train, Masked) and len(set(train.counts)) > 1
    masked = GaussianFamily(3)
    pre.fit(masked, train, rng=rng)
    for r in range(3):
        alone = GaussianFamily(1).fit(X[r][train.keep[r]])
        np.testing.assert_allclose(masked.mean_[r], alone.mean_[0], rtol=1e-12)
        np.testing.assert_allclose(masked.covariance_[r], alone.covariance_[0], rtol=1e-10)


def test_a_per_replicate_family_fits_each_chain_on_its_own_kept_rows():
    cfg = config([{"step": "clip", "radius": 1.5}], R=3, T=2, n=80)
    cfg["generations"] = 2
    cfg["model"] = {"family": "sklearn", "estimator": "gmm", "params": {"n_components": 1}}
    engine = build_engine(resolve_arms(validate(cfg))[0])
    for _ in range(2):
        (rec,) = engine.step()
        assert not rec.failures
    sizes = [m.estimator.n_features_in_ and len(m.estimator.means_) for m in engine.model.models]
    assert sizes == [1, 1, 1]
    assert len(set(rec.train_size)) > 1  # the chains kept different numbers of points
    assert np.isfinite(rec.metrics["removed_share"]).all()


def test_a_step_that_leaves_too_few_points_stops_the_chain_with_a_reason():
    cfg = config([{"step": "clip", "keep": 0.01}], R=2, T=2, n=100)  # keeps 1 point < 2
    engine = build_engine(resolve_arms(validate(cfg))[0])
    (rec,) = engine.step()
    assert set(rec.failures) == {0, 1}
    assert "loop.preprocess left 1 training points, fewer than the 2" in rec.failures[0]
    assert engine.stopped is not None


# -- exact mode -----------------------------------------------------------------------------------
def test_standardise_keeps_exact_mode_and_a_clip_runs_in_sample_mode():
    cfg = config([{"step": "standardise"}], mode="exact", R=50, T=5, n=30, dim=3)
    cfg["include_base"] = False
    cfg["arms"] = [
        {"name": "standardise"},
        {"name": "clip", "loop": {"preprocess": [{"step": "clip", "radius": 2.0}]}},
    ]
    arms = resolve_arms(validate(cfg))
    assert build_engine(arms[0]).exact and not build_engine(arms[1]).exact
    result = run(cfg)
    tr = trace_ratio(result)
    np.testing.assert_allclose(tr[tr.arm == "standardise"]["mean"], 1.0, rtol=1e-12)


# -- config errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("step", "needle"),
    [
        ({"step": "blur"}, "loop.preprocess[0].step: unknown step 'blur'"),
        ({"step": "blur"}, "(valid: align, clip, dedup, standardise)"),
        ({"step": "clip", "radius": 0.0}, "loop.preprocess[0].radius: must be > 0"),
        ({"step": "clip", "radius": -1.0}, "loop.preprocess[0].radius: must be > 0"),
        ({"step": "clip", "keep": 0.0}, "loop.preprocess[0].keep: must be > 0"),
        ({"step": "clip", "keep": 1.5}, "loop.preprocess[0].keep: must be <= 1"),
        ({"step": "clip"}, "loop.preprocess[0]: radius: step 'clip' needs exactly one"),
        ({"step": "dedup", "tolerance": -0.1}, "loop.preprocess[0].tolerance: must be >= 0"),
        ({"step": "dedup", "radius": 1.0}, "radius: step 'dedup' takes tolerance; remove it"),
        ({"step": "clip", "radius": 2, "applies_to": "fake"}, "applies_to: unknown source"),
        ({"step": "clip", "radius": 2, "colour": 1}, "loop.preprocess[0].colour: unknown key"),
    ],
)
def test_bad_steps_are_config_errors_naming_the_field(step, needle):
    with pytest.raises(ConfigError) as err:
        validate(config([step]))
    assert any(needle in line for line in err.value.problems), err.value.problems


def test_steps_a_family_or_data_cannot_take_are_refused_at_validation():
    cat = {
        "data": {"source": "categorical", "symbols": 5},
        "model": {"family": "categorical"},
        "loop": {
            "regime": "fully-synthetic",
            "synthetic_size": 50,
            "preprocess": [{"step": "dedup"}],
        },
    }
    with pytest.raises(ConfigError, match=r"loop.preprocess\[0\].step: 'dedup' removes points"):
        validate(cat)
    cat["loop"]["preprocess"] = [{"step": "standardise"}]
    with pytest.raises(ConfigError, match=r"'standardise' maps vectors; data.source 'categorical"):
        validate(cat)
    text = config([{"step": "clip", "radius": 2.0}])
    text["data"] = {"source": "categorical", "symbols": 5}
    text["model"] = {"family": "ngram"}
    with pytest.raises(ConfigError, match=r"'clip' is a Mahalanobis clip of vectors"):
        validate(text)
    pool = config([{"step": "clip", "radius": 2.0}])
    pool["loop"] = {"regime": "web-pool", "preprocess": pool["loop"]["preprocess"]}
    with pytest.raises(ConfigError, match=r"loop.preprocess: not supported by a regime"):
        validate(pool)


# -- unchanged without steps; resume ------------------------------------------------------------
#: trace_ratio and mean_error_sq (every third value) of ``reference_config`` before
#: loop.preprocess existed (commit 4e7d435), as float.hex: the loop without steps is unchanged
REFERENCE = {
    ("sample", "gaussian"): [
        "0x1.856d443141e36p-5",
        "0x1.cd594ed07f168p-6",
        "0x1.940fd450c33d3p-4",
        "0x1.2071646019260p+0",
        "0x1.a43076987374ap-1",
        "0x1.4ebbd5fd519f8p-1",
    ],
    ("exact", "gaussian"): [
        "0x1.cad8b18c02ad0p-6",
        "0x1.b81ab90ef3a3fp-7",
        "0x1.1456bc4d0f6e0p-7",
        "0x1.d7bd9f3471a0cp-1",
        "0x1.9b4a1aa99bfdbp-1",
        "0x1.8f2e9aae32ae4p-1",
    ],
    ("sample", "sklearn"): [
        "0x1.856d443141e32p-5",
        "0x1.b3f2e2a57c430p-6",
        "0x1.ee3a9a8706840p-5",
        "0x1.1aaca1399fa23p+0",
        "0x1.b60f003ff416ep-1",
        "0x1.9e6ea8c5728e9p-1",
    ],
}


def reference_config(mode: str, family: str) -> dict:
    cfg = {
        "name": "ref",
        "seed": 5,
        "generations": 3,
        "replicates": 3,
        "data": {"source": "gaussian", "dim": 3, "covariance": "random"},
        "model": {"family": "gaussian", "mode": mode},
        "sampling": {"bias": 0.9},
        "loop": {"regime": "synthetic-augmentation", "real_size": 20, "synthetic_size": 30},
    }
    if family == "sklearn":
        cfg["model"] = {"family": "sklearn", "estimator": "gmm", "params": {"n_components": 1}}
        cfg["sampling"] = {"bias": 1.0}
    return cfg


@bit_for_bit
@pytest.mark.parametrize(("mode", "family"), list(REFERENCE))
def test_no_steps_gives_the_numbers_of_before_bit_for_bit(mode, family):
    m = run(reference_config(mode, family)).metrics
    v = m[m.metric.isin(["trace_ratio", "mean_error_sq"])]
    v = v.sort_values(["metric", "generation", "replicate"])["value"].to_numpy()
    assert [float(x).hex() for x in v[::3]] == REFERENCE[(mode, family)]
    assert "removed_share" not in set(m.metric)


def test_steps_that_remove_nothing_give_the_unprocessed_numbers():
    """Dedup at tolerance 0 of continuous draws keeps every row: the fit is the plain one."""
    plain = run(reference_config("sample", "gaussian")).metrics
    cfg = reference_config("sample", "gaussian")
    cfg["loop"]["preprocess"] = [{"step": "dedup"}]
    deduped = run(cfg).metrics
    for metric in ("trace_ratio", "mean_error_sq"):
        a = plain[plain.metric == metric].sort_values(["generation", "replicate"])["value"]
        b = deduped[deduped.metric == metric].sort_values(["generation", "replicate"])["value"]
        np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert (deduped[deduped.metric == "removed_share"]["value"] == 0).all()


def test_resume_with_steps_is_bit_identical(tmp_path):
    cfg = config(
        [{"step": "clip", "radius": 2.0}, {"step": "dedup", "tolerance": 0.01}], R=3, T=4, n=50
    )
    straight = run(cfg, out=tmp_path / "straight")
    run(cfg, out=tmp_path / "resumed", generations=2)
    resumed = run(cfg, out=tmp_path / "resumed", resume=True)
    cols = ["arm", "generation", "replicate", "metric"]
    a = straight.metrics.sort_values(cols).reset_index(drop=True)
    b = resumed.metrics.sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    pa = straight.provenance.sort_values(list(straight.provenance.columns)).reset_index(drop=True)
    pb = resumed.provenance.sort_values(list(resumed.provenance.columns)).reset_index(drop=True)
    pd.testing.assert_frame_equal(pa, pb, check_exact=True)


def test_the_cli_says_why_a_processed_arm_runs_in_sample_mode(capsys):
    from madloop.cli import note_exact_fallback

    cfg = config([{"step": "clip", "radius": 2.0}], mode="exact")
    note_exact_fallback(resolve_arms(validate(cfg)))
    err = capsys.readouterr().err
    assert "loop.preprocess has a step that looks at each point" in err
    assert "runs in sample mode" in err


def test_align_centres_each_image_on_its_mass():
    from madloop.preprocess import centred_images

    X = np.zeros((2, 3, 9, 9))
    X[0, 0, 1:3, 1:3] = 1.0  # a blob in the top-left corner
    X[0, 1, 5:8, 2:4] = 0.5
    X[1, 2, 4, 4] = 1.0  # already centred
    rows = np.ones((2, 3), dtype=bool)
    out = centred_images(X, rows)
    for r, i in [(0, 0), (0, 1), (1, 2)]:
        img = out[r, i]
        assert img.sum() == pytest.approx(X[r, i].sum())  # nothing shifted out
        cy = (img.sum(axis=1) @ np.arange(9)) / img.sum()
        cx = (img.sum(axis=0) @ np.arange(9)) / img.sum()
        assert abs(cy - 4) <= 0.5 and abs(cx - 4) <= 0.5
    np.testing.assert_array_equal(out[1, 2], X[1, 2])
    np.testing.assert_array_equal(out[0, 2], 0.0)  # an empty image stays empty
    rows[0, 0] = False  # a row the step does not apply to is left alone
    np.testing.assert_array_equal(centred_images(X, rows)[0, 0], X[0, 0])


def test_image_data_takes_align_and_dedup_but_not_a_mahalanobis_clip():
    cfg = {
        "data": {"source": "digits"},
        "model": {"family": "vae"},
        "loop": {"regime": "fully-synthetic", "synthetic_size": 50},
    }
    cfg["loop"]["preprocess"] = [{"step": "align"}, {"step": "dedup", "tolerance": 0.1}]
    assert len(validate(cfg).loop.preprocess) == 2
    cfg["loop"]["preprocess"] = [{"step": "clip", "keep": 0.9}]
    with pytest.raises(ConfigError, match=r"score-based clip of images is not implemented"):
        validate(cfg)
