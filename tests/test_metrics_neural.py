"""Sample-based metrics of the neural families: precision/recall/density/coverage, the Fréchet
distance, mixture mode metrics, image metrics and the cached feature network (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest

from madloop.data.toy2d import RingConfig, _ring
from madloop.linalg import lower_factor
from madloop.metrics import images as imgm
from madloop.metrics.gaussian import gaussian_metrics
from madloop.metrics.manifold import frechet_between, frechet_distance, prdc, prdc_numpy
from madloop.metrics.mixture2d import mode_metrics

N = 1000


def _se(p: float, n: int) -> float:
    return np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def ring():
    return _ring(RingConfig(), rng=None)


def test_real_vs_real_precision_recall_near_one_and_fd_near_zero(ring):
    rng = np.random.default_rng(0)
    a = ring.sample_points(N, replicates=1, rng=rng).X[0]
    b = ring.sample_points(N, replicates=1, rng=rng).X[0]
    out = prdc(a, b, k=5)
    # a point of one sample misses the union of the other's 5-NN balls only in the tails
    assert out["precision"] > 0.9 and out["recall"] > 0.9
    assert abs(out["density"] - 1) < 0.15 and out["coverage"] > 0.9
    # FD of two samples of one law: bias ~ tr Σ · d / n, tiny next to tr Σ0 = 4.01
    assert frechet_between(a, b) < 0.05


def test_one_collapsed_mode_has_recall_one_over_k(ring):
    """Samples from one of the 8 modes: high precision, recall ≈ coverage ≈ 1/8."""
    rng = np.random.default_rng(1)
    real = ring.sample_points(N, replicates=1, rng=rng).X[0]
    fake = ring.centers[0] + ring.std * rng.standard_normal((N, 2))
    out = prdc(real, fake, k=5)
    assert out["precision"] > 0.9
    # the real points of mode 0 are ~ Binomial(N, 1/8); a few outside it may be covered too
    assert out["recall"] < 1 / 8 + 4 * _se(1 / 8, N)
    assert out["coverage"] < 1 / 8 + 4 * _se(1 / 8, N)
    assert frechet_between(real, fake) > 3.0  # ≈ |μ_0 - c_0|² + tr Σ_0 = 4 + 4


def test_prdc_numpy_matches_the_prdc_package():
    pytest.importorskip("prdc")
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((300, 4)), 0.7 * rng.standard_normal((250, 4)) + 0.3
    ours, theirs = prdc_numpy(a, b, 5), prdc(a, b, 5)
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12)


def test_frechet_distance_is_gaussian_w2_squared():
    rng = np.random.default_rng(3)
    d = 4
    A, B = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    cov1, cov2 = A @ A.T + np.eye(d), B @ B.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    w2 = gaussian_metrics(mu2[None], lower_factor(cov2)[None], mu1, lower_factor(cov1))
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(
        float(w2["wasserstein2"][0] ** 2), rel=1e-8
    )
    assert frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-8)


def test_mode_metrics_known_cases(ring):
    at_centres = np.repeat(ring.centers, 10, axis=0)
    out = mode_metrics(ring.mode_distance(at_centres), 0.25)
    assert out == {"modes_covered": 8.0, "high_quality": 1.0}
    one = np.repeat(ring.centers[:1], 80, axis=0)
    assert mode_metrics(ring.mode_distance(one), 0.25)["modes_covered"] == 1.0
    far = np.full((50, 2), 100.0)
    assert mode_metrics(ring.mode_distance(far), 0.25) == {
        "modes_covered": 0.0,
        "high_quality": 0.0,
    }
    # the share threshold: 8 modes, 80 samples, fair share 10; a mode with 2 counts at 0.2
    pts = np.concatenate([np.repeat(ring.centers[:1], 78, 0), np.repeat(ring.centers[1:2], 2, 0)])
    assert mode_metrics(ring.mode_distance(pts), 0.2)["modes_covered"] == 2.0
    assert mode_metrics(ring.mode_distance(pts), 0.25)["modes_covered"] == 1.0


def test_class_entropy():
    assert imgm.class_entropy(np.arange(100) % 10, 10) == pytest.approx(np.log(10))
    assert imgm.class_entropy(np.zeros(50, int), 10) == 0.0


def _digits():
    from madloop.data.images import ImageDataConfig, _build

    return _build(ImageDataConfig(source="digits", max_images=600), rng=np.random.default_rng(0))


def test_feature_net_is_deterministic_cached_and_checked(tmp_path, monkeypatch):
    src = _digits()
    imgm._CACHE.clear()
    net = imgm.feature_net(src, tmp_path)
    acc = (net.predict(src.heldout_X) == src.heldout_y).mean()
    assert acc > 0.85  # a working classifier, else its features mean little
    [npz] = tmp_path.glob("features-digits-*.npz")
    assert npz.with_suffix(".sha256").read_text().strip() == imgm._file_hash(npz)
    # a fresh process (empty memory cache) loads the file instead of training
    imgm._CACHE.clear()

    def boom(_):
        raise AssertionError("retrained despite a valid cache")

    monkeypatch.setattr(imgm, "train_feature_net", boom)
    loaded = imgm.feature_net(src, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(net.coefs, loaded.coefs, strict=True))
    # a tampered file fails its checksum and is retrained, not trusted
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    imgm._CACHE.clear()
    with pytest.raises(AssertionError, match="retrained"):
        imgm.feature_net(src, tmp_path)
    monkeypatch.undo()
    imgm._CACHE.clear()
    again = imgm.feature_net(src, None)  # deterministic: retraining gives the same weights
    assert all(np.array_equal(a, b) for a, b in zip(net.coefs, again.coefs, strict=True))


def test_image_metrics_real_vs_real_and_collapse():
    """Real held-out-like images score near the ideal; a model that repeats one class does not."""
    src = _digits()
    net = imgm.feature_net(src)
    ref = net.features(src.heldout_X)

    class Replay:  # a "model" that returns training images: real data
        def __init__(self, only=None):
            self.only = only

        def sample_points(self, n, *, bias, rng):
            if self.only is None:
                return src.sample_points(n, replicates=1, rng=rng)
            idx = np.flatnonzero(src.train_y == self.only)
            pick = rng.choice(idx, size=n)
            from madloop.types import Points

            return Points.tagged(
                src.train_X[pick][None], source=1, origin=1, y=src.train_y[pick][None]
            )

    src.eval_size = 200
    good = imgm._compute(Replay(), src, rng=np.random.default_rng(0), generation=1, bias=1.0)
    bad = imgm._compute(Replay(only=3), src, rng=np.random.default_rng(0), generation=1, bias=1.0)
    assert good["precision"][0] > 0.85 and good["recall"][0] > 0.85
    assert good["class_entropy"][0] > np.log(10) - 0.1
    assert good["class_accuracy"][0] > 0.85
    assert bad["recall"][0] < 0.1 + 4 * _se(0.1, len(ref))  # one class of ten
    assert bad["class_entropy"][0] < 0.5
    assert bad["fd"][0] > 5 * good["fd"][0]
