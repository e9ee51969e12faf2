"""A RealNVP-style normalising flow for vector data, with latent temperature as the sampling bias.

References:
- Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017: affine coupling
  layers with alternating binary masks; log-likelihood by the change of variables.
- Kingma & Dhariwal, "Glow", NeurIPS 2018, section 5: sampling at a reduced temperature T trades
  diversity for quality, the flow's analogue of the truncation trick.
- Alemohammad et al., "Self-Consuming Generative Models Go MAD", ICLR 2024: sampling bias λ.

Bias: ``sample(n, bias=λ)`` draws z ~ N(0, λ I), i.e. temperature T = sqrt(λ), and returns
x = f⁻¹(z). λ is a variance scale, exactly as in the Gaussian family: a flow that has learned an
affine map of a Gaussian samples N(μ, λΣ) at bias λ, so the two families' biases agree. λ = 1 is
unbiased sampling; smaller λ concentrates samples on the flow's high-density regions.

Data are standardised per feature before the flow sees them (images are flattened; samples come
back in the input's shape). With labels ``y`` and ``conditional = true`` every coupling network
also sees the one-hot class, and samples come with labels drawn from the training class shares.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Self

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from madloop.config import DataConfig, ModelConfig
from madloop.config.sections import reals_problem
from madloop.models.base import FamilySpec, PerReplicate, check_is_fitted, register_family
from madloop.models.torchkit import (
    check_device,
    class_shares,
    label_classes,
    label_index,
    load_module_arrays,
    load_optimizer_arrays,
    materialize,
    mlp,
    module_arrays,
    one_hot,
    optimizer_arrays,
    resolve_device,
    standardizer,
    torch_generator,
)


class FlowConfig(ModelConfig):
    family: Literal["flow"] = "flow"
    steps: int = Field(1500, ge=1, le=10_000_000)  # Adam steps per fit (per generation)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    coupling_layers: int = Field(8, ge=2, le=256)  # even: each half is transformed equally often
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 64], min_length=1
    )
    max_log_scale: float = Field(2.0, gt=0.0, le=10.0)  # soft bound on each layer's log-scale
    grad_clip: float = Field(10.0, gt=0.0)
    conditional: bool = True  # use class labels when the data has them
    warm_start: bool = False  # continue from generation t-1's weights and optimizer state
    device: Literal["auto", "cpu", "cuda"] = "auto"

    _device = field_validator("device")(check_device)

    def data_problem(self, data: DataConfig) -> str | None:
        return reals_problem("flow", data)


def bias_knob(lam: float) -> dict[str, float]:
    """The latent variance scale for the paper's bias λ: ``{"variance_scale": λ}``."""
    return FlowConfig.bias_knob.knob(lam)


# -- the network ----------------------------------------------------------------------------------
class Coupling(nn.Module):
    """One affine coupling: the masked half passes through and parameterises a scale and shift
    of the other half, so the Jacobian is triangular and its log-det is the sum of log-scales."""

    def __init__(self, dim: int, n_classes: int, hidden: list[int], parity: int, bound: float):
        super().__init__()
        self.dim, self.parity, self.bound = dim, parity, bound
        self.net = mlp([dim + n_classes, *hidden, 2 * dim])

    def mask(self, device: torch.device) -> torch.Tensor:
        # 1 = passes through. Computed, not stored: nothing to checkpoint, nothing to initialise.
        return ((torch.arange(self.dim, device=device) + self.parity) % 2).float()  # (D,)

    def _scale_shift(self, xa: torch.Tensor, c: torch.Tensor, keep: torch.Tensor):
        s, t = self.net(torch.cat([xa, c], dim=1)).chunk(2, dim=1)  # (B, D) each
        # a tanh soft clamp: unbounded log-scales make early training explode
        s = self.bound * torch.tanh(s / self.bound) * (1 - keep)
        return s, t * (1 - keep)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> z and log|det dz/dx| (B,)."""
        keep = self.mask(x.device)
        s, t = self._scale_shift(x * keep, c, keep)
        return x * keep + (1 - keep) * (x * torch.exp(s) + t), s.sum(dim=1)

    def inverse(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        keep = self.mask(z.device)
        s, t = self._scale_shift(z * keep, c, keep)
        return z * keep + (1 - keep) * ((z - t) * torch.exp(-s))


class RealNVP(nn.Module):
    def __init__(self, dim: int, n_classes: int, config: FlowConfig):
        super().__init__()
        self.dim, self.n_classes = dim, n_classes
        self.layers = nn.ModuleList(
            Coupling(dim, n_classes, list(config.hidden), k % 2, config.max_log_scale)
            for k in range(config.coupling_layers)
        )

    def log_prob(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """log density of standardised x (B, D) given one-hot c (B, K) -> (B,)."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, c)
            logdet = logdet + ld
        base = -0.5 * (x * x).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi)
        return base + logdet

    def inverse(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z, c)
        return z


# -- the estimator --------------------------------------------------------------------------------
class FlowModel:
    """A RealNVP flow on one data set (scikit-learn style).

    Parameters
    ----------
    config : FlowConfig, default=FlowConfig()

    Attributes
    ----------
    net_ : RealNVP
    mean_, scale_ : ndarray of shape (D,)
        The standardisation, x_std = (x - mean_) / scale_.
    classes_ : ndarray of shape (K,)
        Class labels seen in training (empty when unconditional).
    class_prior_ : ndarray of shape (K,)
        Their training shares; sampled labels follow them.
    event_shape_ : tuple of int
        Shape of one sample (a flattened image is reshaped back).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 2))
    >>> flow = FlowModel(FlowConfig(steps=20, device="cpu")).fit(X, rng=rng)
    >>> flow.sample(5, bias=0.5, rng=rng).shape
    (5, 2)
    """

    def __init__(self, config: FlowConfig | None = None) -> None:
        self.config = config or FlowConfig()
        self.net_: RealNVP | None = None
        self.optimizer_: torch.optim.Optimizer | None = None
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.classes_ = np.zeros(0, dtype=np.int64)
        self.class_prior_ = np.zeros(0)
        self.event_shape_: tuple[int, ...] = ()
        self.device_ = resolve_device(self.config.device)

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray | None = None, *, rng: np.random.Generator) -> Self:
        """Maximise the log-likelihood of X (n, *event) by Adam on minibatches drawn with
        replacement; from scratch unless ``warm_start`` and a compatible model exists."""
        X = np.asarray(X, dtype=float)
        if X.ndim < 2 or X.shape[0] < 1:
            raise ValueError(f"X must have shape (n >= 1, *event), got {X.shape}")
        flat = X.reshape(X.shape[0], -1)  # (n, D)
        gen = torch_generator(rng, self.device_)
        classes = label_classes(y, self.config.conditional)
        warm = (
            self.config.warm_start
            and self.net_ is not None
            and self.net_.dim == flat.shape[1]
            and np.isin(classes, self.classes_).all()
            and (len(classes) > 0) == (len(self.classes_) > 0)
        )
        if not warm:
            self.classes_ = classes
            # Warm fits keep the first standardisation, so the weights keep meaning the same map.
            self.mean_, self.scale_ = standardizer(flat)
            self.event_shape_ = X.shape[1:]
            self.net_ = self._new_net(flat.shape[1], len(classes))
            _zero_last_layers(materialize(self.net_, self.device_, gen))
            self.optimizer_ = self._new_optimizer()
        self.class_prior_ = class_shares(y, self.classes_)

        data = torch.as_tensor((flat - self.mean_) / self.scale_, dtype=torch.float32)
        data = data.to(self.device_)  # (n, D)
        labels = label_index(y, self.classes_, self.device_, flat.shape[0])  # (n,)
        net, opt = self.net_, self.optimizer_
        net.train()
        for _ in range(self.config.steps):
            idx = torch.randint(
                0, data.shape[0], (self.config.batch_size,), generator=gen, device=self.device_
            )
            c = one_hot(labels[idx], len(self.classes_))
            loss = -net.log_prob(data[idx], c).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), self.config.grad_clip)
            opt.step()
        net.eval()
        return self

    # -- sampling and scoring ---------------------------------------------------------------------
    def sample(
        self, n: int, *, bias: float = 1.0, rng: np.random.Generator
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """n samples at temperature T = sqrt(bias): x = f⁻¹(T z), z ~ N(0, I). Returns X of
        shape (n, *event), or (X, y) when the model is class-conditional."""
        check_is_fitted(self, "net_")
        K = len(self.classes_)
        idx = rng.choice(K, size=n, p=self.class_prior_) if K else np.zeros(n, dtype=np.int64)
        gen = torch_generator(rng, self.device_)
        with torch.no_grad():
            z = torch.randn(n, self.net_.dim, generator=gen, device=self.device_)  # (n, D)
            c = one_hot(torch.as_tensor(idx, device=self.device_), K)  # (n, K)
            x = self.net_.inverse(math.sqrt(bias) * z, c).cpu().numpy().astype(float)
        X = (x * self.scale_ + self.mean_).reshape((n, *self.event_shape_))
        return (X, self.classes_[idx]) if K else X

    def score_samples(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Log-density of each row of X in data coordinates (n,), in nats."""
        check_is_fitted(self, "net_")
        flat = np.asarray(X, dtype=float).reshape(len(X), -1)
        data = torch.as_tensor((flat - self.mean_) / self.scale_, dtype=torch.float32)
        labels = label_index(y, self.classes_, self.device_, len(flat))
        with torch.no_grad():
            c = one_hot(labels, len(self.classes_))
            lp = self.net_.log_prob(data.to(self.device_), c).cpu().numpy().astype(float)
        return lp - float(np.log(self.scale_).sum())  # the standardisation's Jacobian

    def score(self, X: np.ndarray, y: np.ndarray | None = None) -> float:
        """Mean log-likelihood per sample (nats)."""
        return float(self.score_samples(X, y).mean())

    # -- checkpoints: arrays only -----------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.net_ is None:
            return {}
        state = {
            "mean": self.mean_,
            "scale": self.scale_,
            "classes": self.classes_,
            "class_prior": self.class_prior_,
            "event_shape": np.asarray(self.event_shape_, dtype=np.int64),
            **module_arrays("net", self.net_),
        }
        if self.config.warm_start:
            state.update(optimizer_arrays("opt", self.optimizer_))
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        self.mean_ = np.asarray(state["mean"], dtype=float)
        self.scale_ = np.asarray(state["scale"], dtype=float)
        self.classes_ = np.asarray(state["classes"])
        self.class_prior_ = np.asarray(state["class_prior"], dtype=float)
        self.event_shape_ = tuple(int(v) for v in state["event_shape"])
        self.net_ = self._new_net(len(self.mean_), len(self.classes_)).to_empty(device=self.device_)
        load_module_arrays("net", self.net_, state)
        self.net_.eval()
        self.optimizer_ = self._new_optimizer()
        load_optimizer_arrays("opt", self.optimizer_, state)

    def _new_net(self, dim: int, n_classes: int) -> RealNVP:
        with torch.device("meta"):
            return RealNVP(dim, n_classes, self.config)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net_.parameters(), lr=self.config.learning_rate)


def _zero_last_layers(net: RealNVP) -> None:
    # Each coupling starts as the identity (s = t = 0): the flow begins as the standard normal
    # of the standardised data, a good first guess that keeps early gradients tame.
    with torch.no_grad():
        for layer in net.layers:
            last = layer.net[-1]
            last.weight.zero_()
            last.bias.zero_()


def _build(config: FlowConfig, *, replicates: int, real: object) -> PerReplicate:
    return PerReplicate(lambda: FlowModel(config), replicates)


register_family(FamilySpec("flow", FlowConfig, _build, requires="torch"))
