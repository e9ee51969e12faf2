"""One meaning for ``sampling.bias``: the paper's λ in (0, 1], 1 = no bias, for every family.

Each family maps λ to its own knob (``bias_knob``); λ = 1 is the family's unbiased sampler and
λ < 1 lowers the spread of its samples (the entropy for the token families). Native keys
(``guidance_scale``, ``truncation``, ``temperature``) resolve to λ; conflicts and wrong-family
keys are config errors naming the fields; validate and the report show both forms.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from madloop.cli import app
from madloop.config import ConfigError, parse, validate
from madloop.engines import build_loop
from madloop.report.parts import describe_arm

torch = pytest.importorskip("torch")

GAUSS = {"source": "gaussian", "dim": 2}
TEXT = {"source": "text", "doc_length": 16}
#: per family: its data, a tiny model table (a few steps: the ordering of spreads under
#: truncation / temperature holds for any fitted net) and how the spread is measured
FAMILIES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "gaussian": (GAUSS, {}, "trace"),
    "sklearn": (GAUSS, {"estimator": "gmm", "params": {"n_components": 2}}, "trace"),
    "flow": (GAUSS, {"steps": 30, "hidden": [16], "coupling_layers": 2, "device": "cpu"}, "trace"),
    "gan": (GAUSS, {"steps": 20, "hidden": [16], "latent_dim": 2, "device": "cpu"}, "trace"),
    "vae": (GAUSS, {"steps": 30, "hidden": 16, "latent_dim": 2, "batch_size": 32}, "trace"),
    "ddpm": (
        {"source": "grid", "eval_size": 50},
        {"steps": 20, "timesteps": 8, "sample_steps": 4, "hidden": 16, "batch_size": 32},
        "trace",
    ),
    "categorical": ({"source": "categorical"}, {"mode": "sample"}, "entropy"),
    "ngram": (TEXT, {"order": 2}, "entropy"),
    "char-transformer": (
        TEXT,
        {"n_layer": 1, "n_head": 1, "n_embd": 16, "steps": 30, "device": "cpu"},
        "entropy",
    ),
}
KNOBS = {
    "gaussian": ("variance_scale", lambda lam: lam),
    "sklearn": ("variance_scale", lambda lam: lam),
    "flow": ("variance_scale", lambda lam: lam),
    "gan": ("truncation", math.sqrt),
    "vae": ("latent_scale", math.sqrt),
    "ddpm": ("guidance_scale", lambda lam: 1 / lam - 1),
    "categorical": ("temperature", lambda lam: lam),
    "ngram": ("temperature", lambda lam: lam),
    "char-transformer": ("temperature", lambda lam: lam),
}


def module(family: str) -> Any:
    return importlib.import_module(f"madloop.models.{family.replace('-', '_')}")


def config(family: str, sampling: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    data, model, _ = FAMILIES[family]
    return {
        "seed": 1,
        "generations": 1,
        "replicates": 1,
        "data": dict(data),
        "model": {"family": family, **model},
        "sampling": sampling or {},
        "loop": {"synthetic_size": 200},
        **over,
    }


def fitted(family: str) -> Any:
    """The arm's chain model fitted once on real data (generation 1, by hand)."""
    _, arms = parse(config(family))
    loop = build_loop(arms[0])
    real = loop.real.sample_points(200, replicates=1, rng=np.random.default_rng(0))
    return loop.model.fit_points(real, rng=np.random.default_rng(1))


def spread(points: Any, kind: str) -> tuple[float, float]:
    """(value, standard error): tr Cov of the rows, or the plug-in entropy of the tokens (its SE
    by the delta method: sd of -log p̂(x) over the draws / sqrt(n))."""
    X = np.asarray(points.global_X() if kind == "trace" else points.X)[0]
    if kind == "trace":  # the global frame: a Gaussian's points are whitened deviations
        rows = X.reshape(len(X), -1)
        sq = ((rows - rows.mean(axis=0)) ** 2).sum(axis=1)
        return float(sq.mean()), float(sq.std(ddof=1) / np.sqrt(len(sq)))
    tokens = X.ravel().astype(int)
    p = np.bincount(tokens) / tokens.size
    info = -np.log(p[tokens])
    return float(info.mean()), float(info.std(ddof=1) / np.sqrt(tokens.size))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bias_knob_maps_lambda_to_the_native_knob(family):
    name, forward = KNOBS[family]
    for lam in (1.0, 0.5, 0.25):
        got = module(family).bias_knob(lam)
        assert set(got) == {name} and got[name] == pytest.approx(forward(lam))
    neutral = {"guidance_scale": 0.0}.get(name, 1.0)  # λ = 1: w = 0, every other knob 1
    assert module(family).bias_knob(1.0) == {name: neutral}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lambda_one_is_unbiased_and_smaller_lambda_lowers_the_spread(family):
    model, kind = fitted(family), FAMILIES[family][2]
    n = 600 if kind == "trace" else 200
    at_one = model.sample_points(n, bias=1.0, rng=np.random.default_rng(5))
    inner = getattr(model, "models", None)
    if inner is not None:  # one model per chain: its own sampler without a bias argument
        child = np.random.default_rng(5).spawn(1)[0]
        plain = inner[0].sample(n, rng=child)
        plain = plain[0] if isinstance(plain, tuple) else plain
        assert np.array_equal(np.asarray(at_one.global_X())[0], np.asarray(plain))
    else:
        again = model.sample_points(n, bias=1.0, rng=np.random.default_rng(5))
        assert np.array_equal(np.asarray(at_one.X), np.asarray(again.X))
    lam = 0.5 if family == "ddpm" else 0.05
    if family == "ddpm":
        return  # its spread under guidance depends on the net; see the guidance test below
    hi, se_hi = spread(at_one, kind)
    lo, se_lo = spread(model.sample_points(n, bias=lam, rng=np.random.default_rng(6)), kind)
    assert hi - lo > 4 * math.hypot(se_hi, se_lo), (hi, lo)


def test_gaussian_spread_scales_by_lambda():
    """E tr Cov = λ tr Σ: the ratio of sample traces at λ and 1 within 5 standard errors."""
    model, n = fitted("gaussian"), 20_000
    t1, s1 = spread(model.sample_points(n, bias=1.0, rng=np.random.default_rng(3)), "trace")
    t2, s2 = spread(model.sample_points(n, bias=0.3, rng=np.random.default_rng(4)), "trace")
    se = (t2 / t1) * math.hypot(s1 / t1, s2 / t2)
    assert abs(t2 / t1 - 0.3) < 5 * se


def test_ddpm_samples_with_guidance_one_over_lambda_minus_one(monkeypatch):
    model = fitted("ddpm")
    seen: list[float] = []
    inner = type(model.models[0])
    real_chunk = inner._sample_chunk

    def spy(self: Any, c: Any, w: float, g: Any) -> Any:
        seen.append(w)
        return real_chunk(self, c, w, g)

    monkeypatch.setattr(inner, "_sample_chunk", spy)
    for lam in (1.0, 0.5, 0.25):
        out = model.sample_points(20, bias=lam, rng=np.random.default_rng(2))
        assert np.isfinite(np.asarray(out.X)).all()  # λ = 0.5 (w = 1) runs
    assert seen == [0.0, 1.0, 3.0]


# -- config: native keys, conflicts, defaults -----------------------------------------------------
@pytest.mark.parametrize(
    ("family", "key", "value", "lam"),
    [
        ("ddpm", "guidance_scale", 1.0, 0.5),
        ("ddpm", "guidance_scale", 0.0, 1.0),
        ("gan", "truncation", 0.5, 0.25),
        ("vae", "truncation", 0.5, 0.25),
        ("categorical", "temperature", 0.5, 0.5),
        ("ngram", "temperature", 2.0, 2.0),  # T > 1 flattens: only the native key allows it
    ],
)
def test_native_keys_resolve_to_lambda_and_keep_the_knob(family, key, value, lam):
    cfg = validate(config(family, {key: value}))
    assert cfg.sampling.bias == pytest.approx(lam)
    assert cfg.sampling.knob == module(family).bias_knob(lam)
    assert validate(cfg.to_dict()) == cfg  # the resolved config validates to itself


def test_ddpm_default_is_unguided():
    cfg = validate(config("ddpm"))
    assert cfg.sampling.bias == 1.0 and cfg.sampling.knob == {"guidance_scale": 0.0}
    assert cfg.bias_text() == "λ = 1 (guidance w = 0)"


def test_bias_and_a_native_key_together_is_an_error_naming_both():
    with pytest.raises(ConfigError) as err:
        validate(config("ddpm", {"bias": 0.5, "guidance_scale": 1.0}))
    (line,) = err.value.problems
    assert line.startswith("sampling.bias, sampling.guidance_scale:")


@pytest.mark.parametrize(
    ("family", "key", "own"),
    [
        ("gaussian", "temperature", "sampling.bias"),
        ("ddpm", "truncation", "sampling.guidance_scale"),
        ("gan", "guidance_scale", "sampling.truncation"),
        ("ngram", "truncation", "sampling.temperature"),
    ],
)
def test_a_native_key_of_another_family_names_the_familys_own(family, key, own):
    with pytest.raises(ConfigError) as err:
        validate(config(family, {key: 0.5}))
    (line,) = err.value.problems
    assert line.startswith(f"sampling.{key}:") and own in line and f"'{family}'" in line


@pytest.mark.parametrize(
    ("family", "sampling", "field"),
    [
        ("ddpm", {"bias": 0.0}, "sampling.bias"),
        ("ddpm", {"guidance_scale": -1.0}, "sampling.guidance_scale"),
        ("gan", {"truncation": 1.5}, "sampling.truncation"),
        ("categorical", {"bias": 2.0}, "sampling.bias"),  # λ > 1: say so, point to temperature
        ("categorical", {"temperature": 101.0}, "sampling.temperature"),
    ],
)
def test_out_of_range_values_name_their_field(family, sampling, field):
    with pytest.raises(ConfigError) as err:
        validate(config(family, sampling))
    (line,) = err.value.problems
    assert line.startswith(f"{field}:")
    if family == "categorical" and "bias" in sampling:
        assert "sampling.temperature" in line


def test_an_arm_bias_in_another_form_replaces_the_bases():
    raw = config("ddpm", {"guidance_scale": 1.0})
    raw["arms"] = [{"name": "plain", "sampling.bias": 1.0}]
    _, arms = parse(raw)
    assert [a.config.sampling.bias for a in arms] == [0.5, 1.0]


# -- validate-time data checks --------------------------------------------------------------------
def test_ddpm_guidance_on_unlabelled_2d_data_is_a_validate_time_error():
    with pytest.raises(ConfigError) as err:
        validate(config("ddpm", {"bias": 0.5}, data=GAUSS))
    (line,) = err.value.problems
    assert line.startswith("sampling.bias:") and "'gaussian'" in line and "labels" in line
    validate(config("ddpm", {"bias": 1.0}, data=GAUSS))  # unguided is fine


@pytest.mark.parametrize("family", ["gan", "flow", "vae", "ddpm"])
def test_vector_families_refuse_token_data(family):
    with pytest.raises(ConfigError) as err:
        validate(config(family, data=TEXT))
    assert any(p.startswith("data.source:") for p in err.value.problems)


# -- both forms shown -----------------------------------------------------------------------------
def _ddpm_file(tmp_path: Path) -> Path:
    text = (
        'seed = 1\ngenerations = 1\n[data]\nsource = "grid"\neval_size = 50\n'
        '[model]\nfamily = "ddpm"\nsteps = 5\ntimesteps = 4\nsample_steps = 2\nhidden = 16\n'
        'batch_size = 32\n[loop]\nsynthetic_size = 60\n'
        '[[arms]]\nname = "guided"\nsampling.bias = 0.5\n'
    )
    path = tmp_path / "ddpm.toml"
    path.write_text(text)
    return path


def test_validate_prints_both_forms(tmp_path):
    res = CliRunner().invoke(app, ["validate", str(_ddpm_file(tmp_path))], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "guided:" in res.output and "λ = 0.5 (guidance w = 1)" in res.output
    assert "λ = 1 (guidance w = 0)" in res.output  # the base arm: no guidance


def test_manifest_and_report_show_both_forms(tmp_path):
    from madloop.experiment import run

    run(str(_ddpm_file(tmp_path)), out=tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    entry = manifest["bias"]["guided"]
    assert entry == {"lambda": 0.5, "knob": {"guidance_scale": 1.0}, "text": entry["text"]}
    assert entry["text"] == "λ = 0.5 (guidance w = 1)"
    assert manifest["arms"]["guided"]["sampling"] == {
        "bias": 0.5,
        "knob": {"guidance_scale": 1.0},
    }
    assert "λ = 0.5 (guidance w = 1)" in describe_arm(manifest["arms"]["guided"], entry)
    assert "λ = 0.5 (guidance_scale = 1)" in describe_arm(manifest["arms"]["guided"])
    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert "λ = 0.5 (guidance w = 1)" in page and "bias λ =" not in page


def test_summary_csv_shows_both_forms_of_the_bias(tmp_path):
    from madloop.experiment import run

    cfg = {
        "name": "b", "generations": 2, "replicates": 2,
        "data": {"source": "gaussian", "dim": 2}, "model": {"family": "gaussian"},
        "sampling": {"bias": 0.7}, "loop": {"synthetic_size": 10},
        "arms": [{"name": "unbiased", "sampling.bias": 1.0}],
    }  # fmt: skip
    run(cfg, out=tmp_path)
    summary = pd.read_csv(tmp_path / "summary.csv")
    by_arm = summary.groupby("arm")["bias"].unique().to_dict()
    assert list(by_arm["base"]) == ["λ = 0.7 (variance scale = 0.7)"]
    assert list(by_arm["unbiased"]) == ["λ = 1 (variance scale = 1)"]


def test_a_unet_on_points_is_refused_at_validation():
    from madloop.config import ConfigError, validate

    cfg = {
        "data": {"source": "ring"}, "model": {"family": "ddpm", "architecture": "unet"},
        "loop": {"synthetic_size": 50},
    }  # fmt: skip
    with pytest.raises(ConfigError, match="model.architecture = 'unet' needs image data"):
        validate(cfg)
