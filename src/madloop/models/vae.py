"""A (class-conditional) variational autoencoder with latent temperature as the bias.

References: Kingma & Welling (2014) "Auto-Encoding Variational Bayes"; Sohn, Lee & Yan (2015)
(conditional VAE: encoder and decoder both see the label); Alemohammad et al. (2024) (sampling bias
λ in (0, 1], λ = 1 meaning none).

The bias λ = ``sampling.bias`` in (0, 1] is a latent scale τ = √λ (the latent variance times λ;
natively ``sampling.truncation = τ``): samples decode z = τ ε with
ε ~ N(0, I), so τ = 1 samples the prior and τ < 1 draws closer to its mode, trading diversity for
typicality (the VAE analogue of the truncation trick). A sample is the decoder's mean: pixel
probabilities for images (a Bernoulli decoder), the Gaussian decoder mean for vectors (standardised
coordinates, one learned noise scale per coordinate used only in training). Encoder and decoder
are MLPs on the flattened input; with labels they also see a one-hot class, and samples draw their
class from the training set's class frequencies (``class_prior_``).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from madloop.config import LATENT_SCALE, BiasKnob, DataConfig
from madloop.config.sections import reals_problem
from madloop.models.base import FamilySpec, PerReplicate, check_is_fitted, register_family
from madloop.models.torchkit import (
    TorchModelConfig,
    init_weights,
    load_module_arrays,
    load_optimizer_arrays,
    module_arrays,
    optimizer_arrays,
    resolve_device,
    threads,
    torch_generator,
)


class VAEConfig(TorchModelConfig):
    family: Literal["vae"] = "vae"
    steps: int = Field(2000, ge=1, le=10_000_000)
    latent_dim: int = Field(8, ge=1, le=4096)
    hidden: int = Field(256, ge=8, le=8192)
    kl_weight: float = Field(1.0, gt=0.0, le=1000.0)  # β of β-VAE; 1 is the ELBO

    bias_knob: ClassVar[BiasKnob] = LATENT_SCALE  # τ = √λ

    def data_problem(self, data: DataConfig) -> str | None:
        return reals_problem("vae", data)


def bias_knob(lam: float) -> dict[str, float]:
    """The latent scale for the paper's bias λ: ``{"latent_scale": √λ}`` (latent variance × λ)."""
    return VAEConfig.bias_knob.knob(lam)


class CVAE(nn.Module):
    """q(z | x, c) = N(μ, σ²) and p(x | z, c); c is a one-hot label (zeros when unlabelled)."""

    def __init__(self, dim: int, n_classes: int, hidden: int, latent: int, bernoulli: bool):
        super().__init__()
        k = max(n_classes, 1)
        self.enc = nn.Sequential(
            nn.Linear(dim + k, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.mu, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.dec = nn.Sequential(
            nn.Linear(latent + k, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )
        # a Gaussian decoder learns its per-coordinate noise scale (log σ_x); unused for Bernoulli
        self.log_sigma = nn.Parameter(torch.zeros(dim), requires_grad=not bernoulli)

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(torch.cat([x, c], dim=1))  # (B, hidden)
        return self.mu(h), self.logvar(h)  # (B, latent) x 2

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.cat([z, c], dim=1))  # (B, dim): logits or means


class VAE:
    """A VAE of one data set: ``fit(X, y=None, *, rng)``, ``sample(n, *, bias, rng)``.

    X is (n, d) vectors (standardised inside, Gaussian decoder) or (n, H, W) images in [0, 1]
    (Bernoulli decoder). With labels the model is conditional and ``sample`` returns (X, y).

    Attributes
    ----------
    net_ : CVAE
    event_shape_ : tuple of int
    n_classes_ : int
    class_prior_ : ndarray of shape (n_classes_,) or None
    shift_, scale_ : ndarray
        x_model = (x - shift_) / scale_ for vectors (fixed at the first fit); 0 and 1 for images.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        self.config = config or VAEConfig()
        self.device = resolve_device(self.config.device)
        self.net_: CVAE | None = None
        self.opt_: torch.optim.Optimizer | None = None
        self.event_shape_: tuple[int, ...] | None = None
        self.n_classes_ = 0
        self.class_prior_: np.ndarray | None = None
        self.shift_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    @property
    def bernoulli(self) -> bool:
        return self.event_shape_ is not None and len(self.event_shape_) == 2

    def _build(self, event_shape: tuple[int, ...], n_classes: int) -> None:
        cfg = self.config
        self.event_shape_, self.n_classes_ = tuple(int(s) for s in event_shape), int(n_classes)
        if len(self.event_shape_) not in (1, 2):
            raise ValueError(
                f"vae fits vectors (n, d) or images (n, H, W); got event shape {self.event_shape_}"
            )
        dim = math.prod(self.event_shape_)
        self.net_ = CVAE(dim, self.n_classes_, cfg.hidden, cfg.latent_dim, self.bernoulli)
        self.net_.to(self.device)
        self.opt_ = torch.optim.Adam(
            [p for p in self.net_.parameters() if p.requires_grad], lr=cfg.learning_rate
        )

    def _onehot(self, labels: torch.Tensor) -> torch.Tensor:
        if self.n_classes_ == 0:
            return torch.zeros((len(labels), 1), device=self.device)
        return F.one_hot(labels, self.n_classes_).float()

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray | None = None, *, rng: np.random.Generator) -> Self:
        cfg = self.config
        X = np.asarray(X, dtype=np.float32)
        if X.ndim not in (2, 3) or len(X) < 1:
            raise ValueError(f"X must be (n, d) or (n, H, W) with n >= 1, got {X.shape}")
        n_classes = 0 if y is None else int(np.max(y)) + 1
        warm = cfg.warm_start and self.net_ is not None
        if warm and (self.event_shape_ != X.shape[1:] or n_classes > self.n_classes_):
            raise ValueError("warm start: the data's shape or labels differ from the last fit")
        g = torch_generator(rng, self.device)
        if not warm:
            if X.ndim == 3:
                self.shift_, self.scale_ = np.zeros(1, np.float32), np.ones(1, np.float32)
            else:
                self.shift_ = X.mean(axis=0).astype(np.float32)
                self.scale_ = (X.std(axis=0) + 1e-8).astype(np.float32)
            self._build(X.shape[1:], n_classes)
            init_weights(self.net_, g)
        labels = np.zeros(len(X), np.int64) if y is None else np.asarray(y, np.int64)
        counts = np.bincount(labels, minlength=max(self.n_classes_, 1))
        self.class_prior_ = (counts / counts.sum()) if self.n_classes_ else None
        with threads(cfg.threads):
            self._train(X, labels, g)
        return self

    def _train(self, X: np.ndarray, labels: np.ndarray, g: torch.Generator) -> None:
        cfg, dev = self.config, self.device
        x_all = torch.as_tensor(((X - self.shift_) / self.scale_).reshape(len(X), -1), device=dev)
        c_all = torch.as_tensor(labels, device=dev)
        N, B = len(X), cfg.batch_size
        self.net_.train()
        for _ in range(cfg.steps):
            idx = torch.randint(0, N, (B,), generator=g, device=dev)
            x, c = x_all[idx], self._onehot(c_all[idx])  # (B, D), (B, K)
            mu, logvar = self.net_.encode(x, c)  # (B, L) x 2
            eps = torch.randn(mu.shape, generator=g, device=dev)
            z = mu + (0.5 * logvar).exp() * eps  # the reparameterisation trick
            out = self.net_.decode(z, c)  # (B, D)
            if self.bernoulli:
                nll = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(1)
            else:
                ls = self.net_.log_sigma
                nll = (0.5 * ((x - out) / ls.exp()) ** 2 + ls + 0.5 * math.log(2 * math.pi)).sum(1)
            kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)  # KL(q(z|x,c) || N(0, I))
            loss = (nll + cfg.kl_weight * kl).mean()
            self.opt_.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_.step()

    # -- sampling ------------------------------------------------------------------------------
    def sample(
        self, n: int, *, bias: float = 1.0, rng: np.random.Generator
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """n decoder means at bias λ = ``bias``: latent scale τ = √λ; (X, y) when
        class-conditional."""
        check_is_fitted(self, "net_")
        if not 0.0 < bias <= 1.0:
            raise ValueError(f"vae: the bias λ (sampling.bias) must be in (0, 1], got {bias}")
        tau = LATENT_SCALE.forward(float(bias))
        y = rng.choice(self.n_classes_, size=n, p=self.class_prior_) if self.n_classes_ else None
        g = torch_generator(rng, self.device)
        labels = torch.as_tensor(y if y is not None else np.zeros(n, np.int64), device=self.device)
        with threads(self.config.threads), torch.no_grad():
            self.net_.eval()
            z = tau * torch.randn((n, self.config.latent_dim), generator=g, device=self.device)
            out = self.net_.decode(z, self._onehot(labels))  # (n, D)
            if self.bernoulli:
                out = torch.sigmoid(out)
            X = out.cpu().numpy().reshape(n, *self.event_shape_) * self.scale_ + self.shift_
        return (X, y) if y is not None else X

    # -- checkpoints ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.net_ is None:
            return {}
        state = {
            "event_shape": np.asarray(self.event_shape_, np.int64),
            "n_classes": np.asarray(self.n_classes_, np.int64),
            "shift": self.shift_,
            "scale": self.scale_,
            **module_arrays("net", self.net_),
        }
        if self.class_prior_ is not None:
            state["class_prior"] = self.class_prior_
        if self.config.warm_start:
            state.update(optimizer_arrays("opt", self.opt_))
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        self._build(tuple(np.asarray(state["event_shape"]).tolist()), int(state["n_classes"]))
        load_module_arrays("net", self.net_, state)
        self.shift_, self.scale_ = np.asarray(state["shift"]), np.asarray(state["scale"])
        self.class_prior_ = np.asarray(state["class_prior"]) if "class_prior" in state else None
        if any(k.startswith("opt/") for k in state):
            load_optimizer_arrays("opt", self.opt_, state)


def _build(config: VAEConfig, *, replicates: int, real: object) -> PerReplicate:
    return PerReplicate(lambda: VAE(config), replicates)


register_family(FamilySpec("vae", VAEConfig, _build, requires="torch"))
