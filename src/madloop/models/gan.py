"""A small GAN for vector data (2-D points, flattened images), with latent truncation ψ as the bias.

References:
- Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017 (WGAN-GP: a critic with
  a gradient penalty; the 8-Gaussians toy).
- Lim & Ye, "Geometric GAN", 2017 / Miyato et al., "Spectral Normalization", ICLR 2018 (hinge loss).
- Karras et al., "A Style-Based Generator Architecture for GANs" (StyleGAN), CVPR 2019: the
  truncation trick w' = w̄ + ψ (w - w̄), which Alemohammad et al. (ICLR 2024) use as the sampling
  bias of their StyleGAN experiments.

Bias: ``sample(n, bias=λ)`` draws z ~ N(0, I) and feeds ψ z to the generator, ψ = √λ in (0, 1]
(the latent variance times λ, as in the Gaussian family; natively ``sampling.truncation = ψ``).
This is StyleGAN's truncation applied in the input latent space, whose mean w̄ is known to be 0 (an
MLP generator has no mapping network to average over); it scales every latent rather than resampling
the coordinates beyond a threshold (BigGAN's variant), so ψ = 1 is unbiased sampling and ψ -> 0
collapses all samples onto G(0).

Data are standardised per feature before the networks see them (images are flattened; samples
come back in the input's shape). With labels ``y`` and ``conditional = true`` the generator and the
critic both see the one-hot class, and samples come with labels drawn from the training class
shares.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from madloop.config import TRUNCATION, BiasKnob, DataConfig, ModelConfig
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


class GANConfig(ModelConfig):
    family: Literal["gan"] = "gan"
    loss: Literal["wgan-gp", "hinge"] = "wgan-gp"
    steps: int = Field(1000, ge=1, le=10_000_000)  # generator updates per fit (per generation)
    critic_steps: int = Field(2, ge=1, le=100)  # critic updates per generator update
    batch_size: int = Field(256, ge=1, le=1_000_000)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    latent_dim: int = Field(8, ge=1, le=4096)
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [128, 128], min_length=1
    )
    gp_weight: float = Field(1.0, ge=0.0)  # WGAN-GP's λ; unit-scale data needs less than 10
    conditional: bool = True  # use class labels when the data has them
    warm_start: bool = False  # continue from generation t-1's weights and optimizer states
    device: Literal["auto", "cpu", "cuda"] = "auto"

    _device = field_validator("device")(check_device)

    bias_knob: ClassVar[BiasKnob] = TRUNCATION  # ψ = √λ

    def data_problem(self, data: DataConfig) -> str | None:
        return reals_problem("gan", data)


def bias_knob(lam: float) -> dict[str, float]:
    """The latent truncation for the paper's bias λ: ``{"truncation": √λ}``."""
    return GANConfig.bias_knob.knob(lam)


# Adam's β1 = 0.5, β2 = 0.9 as in WGAN-GP: a smaller first moment damps the adversarial rotation.
BETAS = (0.5, 0.9)


# -- the networks ---------------------------------------------------------------------------------
class Generator(nn.Module):
    def __init__(self, latent_dim: int, n_classes: int, dim: int, hidden: list[int]):
        super().__init__()
        self.latent_dim, self.n_classes, self.dim = latent_dim, n_classes, dim
        self.net = mlp([latent_dim + n_classes, *hidden, dim])

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, c], dim=1))  # (B, L + K) -> (B, D)


class Critic(nn.Module):
    def __init__(self, dim: int, n_classes: int, hidden: list[int]):
        super().__init__()
        self.net = mlp([dim + n_classes, *hidden, 1])

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, c], dim=1)).squeeze(1)  # (B, D + K) -> (B,)


# -- the estimator --------------------------------------------------------------------------------
class GANModel:
    """A GAN on one data set (scikit-learn style).

    Parameters
    ----------
    config : GANConfig, default=GANConfig()

    Attributes
    ----------
    generator_ : Generator
    critic_ : Critic
    mean_, scale_ : ndarray of shape (D,)
        The standardisation, x_std = (x - mean_) / scale_.
    classes_ : ndarray of shape (K,)
        Class labels seen in training (empty when unconditional).
    class_prior_ : ndarray of shape (K,)
        Their training shares; sampled labels follow them.
    event_shape_ : tuple of int

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 2))
    >>> gan = GANModel(GANConfig(steps=10, device="cpu")).fit(X, rng=rng)
    >>> gan.sample(5, bias=0.7, rng=rng).shape
    (5, 2)
    """

    def __init__(self, config: GANConfig | None = None) -> None:
        self.config = config or GANConfig()
        self.generator_: Generator | None = None
        self.critic_: Critic | None = None
        self.opt_g_: torch.optim.Optimizer | None = None
        self.opt_c_: torch.optim.Optimizer | None = None
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.classes_ = np.zeros(0, dtype=np.int64)
        self.class_prior_ = np.zeros(0)
        self.event_shape_: tuple[int, ...] = ()
        self.device_ = resolve_device(self.config.device)

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray | None = None, *, rng: np.random.Generator) -> Self:
        """Adversarial training on minibatches of X (n, *event) drawn with replacement; from
        scratch unless ``warm_start`` and a compatible model exists."""
        X = np.asarray(X, dtype=float)
        if X.ndim < 2 or X.shape[0] < 1:
            raise ValueError(f"X must have shape (n >= 1, *event), got {X.shape}")
        cfg = self.config
        flat = X.reshape(X.shape[0], -1)  # (n, D)
        gen = torch_generator(rng, self.device_)
        classes = label_classes(y, cfg.conditional)
        warm = (
            cfg.warm_start
            and self.generator_ is not None
            and self.generator_.dim == flat.shape[1]
            and np.isin(classes, self.classes_).all()
            and (len(classes) > 0) == (len(self.classes_) > 0)
        )
        if not warm:
            self.classes_ = classes
            # Warm fits keep the first standardisation, so the weights keep meaning the same map.
            self.mean_, self.scale_ = standardizer(flat)
            self.event_shape_ = X.shape[1:]
            self._new_nets(flat.shape[1], len(classes))
            materialize(self.generator_, self.device_, gen)
            materialize(self.critic_, self.device_, gen)
            self._new_optimizers()
        self.class_prior_ = class_shares(y, self.classes_)

        data = torch.as_tensor((flat - self.mean_) / self.scale_, dtype=torch.float32)
        data = data.to(self.device_)  # (n, D)
        labels = label_index(y, self.classes_, self.device_, flat.shape[0])  # (n,)
        K, B, L = len(self.classes_), cfg.batch_size, cfg.latent_dim
        G, C = self.generator_, self.critic_

        def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            idx = torch.randint(0, data.shape[0], (B,), generator=gen, device=self.device_)
            # fakes share the real batch's labels, so the critic compares like with like
            c = one_hot(labels[idx], K)  # (B, K)
            z = torch.randn(B, L, generator=gen, device=self.device_)  # (B, L)
            return data[idx], c, z

        for _ in range(cfg.steps):
            for _ in range(cfg.critic_steps):
                real, c, z = batch()
                with torch.no_grad():
                    fake = G(z, c)  # (B, D)
                loss_c = self._critic_loss(real, fake, c, gen)
                self.opt_c_.zero_grad(set_to_none=True)
                loss_c.backward()
                self.opt_c_.step()
            _, c, z = batch()
            C.requires_grad_(False)  # the generator step needs ∂C/∂x only, not the critic's grads
            loss_g = -C(G(z, c), c).mean()  # the same generator loss for both critics
            self.opt_g_.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g_.step()
            C.requires_grad_(True)
        return self

    def _critic_loss(
        self, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        C = self.critic_
        if self.config.loss == "hinge":
            return torch.relu(1 - C(real, c)).mean() + torch.relu(1 + C(fake, c)).mean()
        # WGAN-GP: Wasserstein critic plus (‖∇ C‖ - 1)² on random interpolates
        eps = torch.rand(real.shape[0], 1, generator=gen, device=real.device)  # (B, 1)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(C(mix, c).sum(), mix, create_graph=True)  # (B, D)
        penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
        return C(fake, c).mean() - C(real, c).mean() + self.config.gp_weight * penalty

    # -- sampling ---------------------------------------------------------------------------------
    def sample(
        self, n: int, *, bias: float = 1.0, rng: np.random.Generator
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """n samples at bias λ = ``bias``: truncation ψ = √λ, x = G(ψ z), z ~ N(0, I). Returns X
        of shape (n, *event), or (X, y) when the model is class-conditional."""
        check_is_fitted(self, "generator_")
        if not 0.0 < bias <= 1.0:
            raise ValueError(f"gan: the bias λ (sampling.bias) must be in (0, 1], got {bias}")
        psi = TRUNCATION.forward(bias)
        K = len(self.classes_)
        idx = rng.choice(K, size=n, p=self.class_prior_) if K else np.zeros(n, dtype=np.int64)
        gen = torch_generator(rng, self.device_)
        with torch.no_grad():
            z = torch.randn(n, self.config.latent_dim, generator=gen, device=self.device_)
            c = one_hot(torch.as_tensor(idx, device=self.device_), K)  # (n, K)
            x = self.generator_(psi * z, c).cpu().numpy().astype(float)  # (n, D)
        X = (x * self.scale_ + self.mean_).reshape((n, *self.event_shape_))
        return (X, self.classes_[idx]) if K else X

    # -- checkpoints: arrays only -----------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.generator_ is None:
            return {}
        state = {
            "mean": self.mean_,
            "scale": self.scale_,
            "classes": self.classes_,
            "class_prior": self.class_prior_,
            "event_shape": np.asarray(self.event_shape_, dtype=np.int64),
            **module_arrays("generator", self.generator_),
            **module_arrays("critic", self.critic_),
        }
        if self.config.warm_start:
            state.update(optimizer_arrays("opt_g", self.opt_g_))
            state.update(optimizer_arrays("opt_c", self.opt_c_))
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        self.mean_ = np.asarray(state["mean"], dtype=float)
        self.scale_ = np.asarray(state["scale"], dtype=float)
        self.classes_ = np.asarray(state["classes"])
        self.class_prior_ = np.asarray(state["class_prior"], dtype=float)
        self.event_shape_ = tuple(int(v) for v in state["event_shape"])
        self._new_nets(len(self.mean_), len(self.classes_))
        self.generator_.to_empty(device=self.device_)
        self.critic_.to_empty(device=self.device_)
        load_module_arrays("generator", self.generator_, state)
        load_module_arrays("critic", self.critic_, state)
        self._new_optimizers()
        load_optimizer_arrays("opt_g", self.opt_g_, state)
        load_optimizer_arrays("opt_c", self.opt_c_, state)

    def _new_nets(self, dim: int, n_classes: int) -> None:
        hidden = list(self.config.hidden)
        with torch.device("meta"):
            self.generator_ = Generator(self.config.latent_dim, n_classes, dim, hidden)
            self.critic_ = Critic(dim, n_classes, hidden)

    def _new_optimizers(self) -> None:
        lr = self.config.learning_rate
        self.opt_g_ = torch.optim.Adam(self.generator_.parameters(), lr=lr, betas=BETAS)
        self.opt_c_ = torch.optim.Adam(self.critic_.parameters(), lr=lr, betas=BETAS)


def _build(config: GANConfig, *, replicates: int, real: object) -> PerReplicate:
    return PerReplicate(lambda: GANModel(config), replicates)


register_family(FamilySpec("gan", GANConfig, _build, requires="torch"))
