"""Image metrics in the features of a small classifier trained once on the real training split.

The MAD paper measured MNIST models in LeNet features; here the feature network is a two-layer
MLP classifier (scikit-learn's ``MLPClassifier``, no torch needed) trained deterministically (its
seed derives from the data set's checksum) on the source's training split. Its last hidden layer
(64 units) gives the features; its prediction the class. Per replicate, from ``real.eval_size``
samples drawn with the metric generator and the loop's bias, against the held-out split:

- ``fd``: the Fréchet distance of the features (Heusel et al.; ``scipy.linalg.sqrtm``);
- ``precision``, ``recall`` (Kynkäänniemi et al., k = 5), ``density``, ``coverage`` (Naeem et al.);
- ``class_accuracy``: the share of samples the classifier assigns to the class they were drawn
  for (class-conditional models only);
- ``class_entropy``: the entropy (nats) of the histogram of predicted classes; log K when every
  class is equally present, lower as classes vanish.

The feature network is cached per process by (data set, checksum), and on disk under the run
directory (``cache/features-<source>-<checksum>.npz`` with a ``.sha256`` of the file beside it)
when the run has one; a file whose hash or data checksum does not match is retrained, not trusted.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from madloop.metrics.base import MetricSuite, register_suite
from madloop.metrics.manifold import frechet_between, prdc
from madloop.storage import write_atomic

if TYPE_CHECKING:  # metrics do not import data at run time
    from madloop.data.images import ImageSource

IMAGE_METRICS = (
    "fd",
    "precision",
    "recall",
    "density",
    "coverage",
    "class_accuracy",
    "class_entropy",
)
HIDDEN = (128, 64)
_CACHE: dict[tuple[str, str], FeatureNet] = {}


class FeatureNet:
    """A ReLU MLP given by its weights: ``features`` (last hidden layer) and ``predict``."""

    def __init__(self, coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> None:
        self.coefs, self.intercepts = coefs, intercepts

    def _hidden(self, X: np.ndarray) -> np.ndarray:
        h = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        for W, b in zip(self.coefs[:-1], self.intercepts[:-1], strict=True):
            h = np.maximum(h @ W + b, 0.0)
        return h

    def features(self, X: np.ndarray) -> np.ndarray:
        return self._hidden(X)  # (n, 64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        logits = self._hidden(X) @ self.coefs[-1] + self.intercepts[-1]
        return logits.argmax(axis=1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"coef{i}": w for i, w in enumerate(self.coefs)}
        out.update({f"intercept{i}": b for i, b in enumerate(self.intercepts)})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureNet:
        n = sum(k.startswith("coef") for k in arrays)
        return cls(
            [arrays[f"coef{i}"] for i in range(n)], [arrays[f"intercept{i}"] for i in range(n)]
        )


def train_feature_net(real: ImageSource) -> FeatureNet:
    """Deterministic: the seed (weights and minibatch order) derives from the data checksum."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    X = real.train_X.reshape(len(real.train_X), -1)
    clf = MLPClassifier(
        hidden_layer_sizes=HIDDEN,
        solver="adam",
        batch_size=128,
        max_iter=60,
        alpha=1e-3,
        random_state=int(real.checksum[:8], 16),
    )
    # one BLAS thread: on a busy machine a threaded BLAS makes these small products ~20x slower
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, real.train_y)
    if len(clf.classes_) != real.n_classes:
        raise ValueError(f"{real.name}: the training split lacks some classes")
    return FeatureNet([np.asarray(w) for w in clf.coefs_], [np.asarray(b) for b in clf.intercepts_])


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def feature_net(real: ImageSource, cache_dir: Path | None = None) -> FeatureNet:
    """The source's feature network: from the process cache, the run directory's cache, or
    trained now (and then written to both)."""
    key = (real.name, real.checksum)
    if key in _CACHE and cache_dir is None:
        return _CACHE[key]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"features-{real.name}-{real.checksum[:16]}.npz"
        side = path.with_suffix(".sha256")
        if path.exists() and side.exists() and side.read_text().strip() == _file_hash(path):
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if str(arrays.pop("checksum")) == real.checksum:
                _CACHE[key] = FeatureNet.from_arrays(arrays)
                return _CACHE[key]
    net = _CACHE.get(key) or train_feature_net(real)
    _CACHE[key] = net
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, checksum=np.asarray(real.checksum), **net.to_arrays())
        write_atomic(path, buf.getvalue())
        write_atomic(path.with_suffix(".sha256"), (_file_hash(path) + "\n").encode())
    return net


def class_entropy(pred: np.ndarray, n_classes: int) -> float:
    p = np.bincount(pred, minlength=n_classes) / len(pred)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _applies(model: Any, real: Any) -> bool:
    # duck-typed: a labelled image set with a held-out split, e.g. data/images.py
    needed = ("heldout_X", "train_X", "checksum", "n_classes", "eval_size")
    return all(hasattr(real, a) for a in needed) and hasattr(model, "sample_points")


def _compute(
    model: Any, real: ImageSource, *, rng: np.random.Generator, generation: int, bias: float
) -> dict[str, np.ndarray]:
    net = feature_net(real, getattr(real, "cache_dir", None))
    ref = _reference_features(real, net)
    pts = model.sample_points(real.eval_size, bias=bias, rng=rng)
    X = np.clip(pts.global_X(), 0.0, 1.0)  # (R, n, H, W)
    rows = []
    for r in range(X.shape[0]):
        feats = net.features(X[r])
        pred = net.predict(X[r])
        row = {"fd": frechet_between(ref, feats), **prdc(ref, feats, k=5)}
        row["class_accuracy"] = float((pred == pts.y[r]).mean()) if pts.y is not None else np.nan
        row["class_entropy"] = class_entropy(pred, real.n_classes)
        rows.append(row)
    return {k: np.array([row[k] for row in rows]) for k in rows[0]}


def _reference_features(real: ImageSource, net: FeatureNet) -> np.ndarray:
    cached = getattr(real, "_heldout_features", None)
    if cached is None:
        cached = net.features(real.heldout_X)
        real._heldout_features = cached
    return cached


register_suite(MetricSuite("images", _applies, _compute, samples=True))
