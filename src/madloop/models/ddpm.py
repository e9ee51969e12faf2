"""A denoising diffusion model, class-conditional, with classifier-free guidance as the bias.

References: Ho, Jain & Abbeel (2020) "Denoising Diffusion Probabilistic Models" (ε-prediction,
ancestral sampler); Nichol & Dhariwal (2021) (cosine noise schedule); Ho & Salimans (2022)
"Classifier-Free Diffusion Guidance"; Song, Meng & Ermon (2021) "DDIM" (fast deterministic
sampler); Alemohammad et al. (2024) "Self-Consuming Generative Models Go MAD" (guidance as
sampling bias).

The bias is the paper's λ in (0, 1] (``sampling.bias``, 1 = none), sampled as classifier-free
guidance w = 1/λ - 1 >= 0 (:func:`bias_knob`, :func:`lambda_to_guidance`; natively
``sampling.guidance_scale = w``): ε̂ = (1 + w) ε(x, t, c) - w ε(x, t, ∅). λ = 1 <-> w = 0 is the
plain conditional model and λ -> 0 <-> w -> ∞; for instance λ = 0.5 is w = 1 and λ = 0.25 is w = 3.
Guidance needs class labels: λ < 1 on unlabelled data is a config error.

The network is an MLP for vector data (2-D toys) and a small U-Net for images. Labels are
dropped with probability ``label_dropout`` during training so the same network also learns the
unconditional ε(x, t, ∅) that guidance needs. Samples draw their class from the training set's
class frequencies (``class_prior_``), so a loop can drift in class balance as well as in shape.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from madloop.config import GUIDANCE, BiasKnob, DataConfig
from madloop.config.sections import number, reals_problem
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


def bias_knob(lam: float) -> dict[str, float]:
    """The guidance scale for the paper's bias λ: ``{"guidance_scale": 1/λ - 1}``."""
    return DDPMConfig.bias_knob.knob(lam)


def guidance_to_lambda(w: float) -> float:
    """The paper's bias λ = 1 / (1 + w) for a guidance scale w >= 0."""
    if not w >= 0:
        raise ValueError(f"guidance scale must be >= 0, got {w}")
    return 1.0 / (1.0 + w)


def lambda_to_guidance(lam: float) -> float:
    """Inverse of :func:`guidance_to_lambda`: w = 1/λ - 1 for λ in (0, 1]."""
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"λ must be in (0, 1], got {lam}")
    return 1.0 / lam - 1.0


class DDPMConfig(TorchModelConfig):
    family: Literal["ddpm"] = "ddpm"
    steps: int = Field(2000, ge=1, le=10_000_000)
    learning_rate: float = Field(2e-3, gt=0.0, le=10.0)
    timesteps: int = Field(200, ge=2, le=10_000)  # T; the cosine schedule makes small T usable
    sampler: Literal["ddpm", "ddim"] = "ddim"
    sample_steps: int = Field(50, ge=1, le=10_000)  # DDIM steps (ignored by the ddpm sampler)
    #: denoiser: "auto" = an MLP for vectors and a U-Net for images; "mlp" also runs an MLP on
    #: flattened images (much cheaper on a CPU, blurrier digits)
    architecture: Literal["auto", "mlp", "unet"] = "auto"
    hidden: int = Field(128, ge=8, le=8192)  # MLP width
    channels: int = Field(16, ge=8, le=1024)  # U-Net base width (images), a multiple of 8
    label_dropout: float = Field(0.1, ge=0.0, le=1.0)  # p(uncond) in training, for guidance
    bias_knob: ClassVar[BiasKnob] = GUIDANCE  # λ = 1/(1+w)

    @field_validator("channels")
    @classmethod
    def _groups(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (GroupNorm uses 8 groups), got {v}")
        return v

    def data_problem(self, data: DataConfig) -> str | None:
        if self.architecture == "unet" and data.kind != "images":
            return (
                f"model.architecture = 'unet' needs image data (digits, mnist, fashion-mnist), "
                f"got '{data.source}'; use model.architecture = 'mlp' (or 'auto')"
            )
        return reals_problem("ddpm", data)

    def bias_data_problem(self, bias: float, data: DataConfig) -> str | None:
        if bias < 1.0 and not data.labelled:
            w = number(GUIDANCE.forward(bias))
            return (
                f"λ = {number(bias)} is classifier-free guidance w = {w} for family 'ddpm', which "
                f"needs class labels, and data.source = '{data.source}' has none; use λ = 1 "
                "(no guidance) or a labelled source (grid, ring, moons, digits, mnist, "
                "fashion-mnist)"
            )
        return None


# -- networks -------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim), as in the Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class Embedding(nn.Module):
    """Time and class (index n_classes = "no label") embedded and summed: (B,) x 2 -> (B, dim)."""

    def __init__(self, n_classes: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(n_classes + 1, dim)

    def forward(self, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.time(timestep_embedding(t, self.dim)) + self.label(c)


class MLPDenoiser(nn.Module):
    """ε(x_t, t, c) for vectors: residual MLP blocks with the embedding added at the input."""

    def __init__(self, dim: int, n_classes: int, hidden: int, depth: int = 3) -> None:
        super().__init__()
        self.emb = Embedding(n_classes, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1)) + self.emb(t, c)  # (B, H); images are flattened
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).view(x.shape)  # (B, *event)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.proj = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = h + self.proj(F.silu(e))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """ε(x_t, t, c) for (B, H, W) images: two down/up levels with skips. Inputs are padded to a
    multiple of 4 (so 14x14 MNIST works) and the output cropped back."""

    def __init__(self, n_classes: int, channels: int) -> None:
        super().__init__()
        c, e = channels, 4 * channels
        self.emb = Embedding(n_classes, e)
        self.inc = nn.Conv2d(1, c, 3, padding=1)
        self.down1 = ResBlock(c, c, e)
        self.pool1 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.down2 = ResBlock(2 * c, 2 * c, e)
        self.pool2 = nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * c, 2 * c, e)
        self.unpool2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.up2 = ResBlock(4 * c, 2 * c, e)
        self.unpool1 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.up1 = ResBlock(2 * c, c, e)
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        ph, pw = (-H) % 4, (-W) % 4
        h = F.pad(x[:, None], (0, pw, 0, ph))  # (B, 1, H', W'), H' = 4k
        e = self.emb(t, c)  # (B, 4c)
        s1 = self.down1(self.inc(h), e)  # (B, c, H', W')
        s2 = self.down2(self.pool1(s1), e)  # (B, 2c, H'/2, W'/2)
        m = self.mid(self.pool2(s2), e)  # (B, 2c, H'/4, W'/4)
        u = self.unpool2(F.interpolate(m, scale_factor=2.0, mode="nearest"))
        u = self.up2(torch.cat([u, s2], dim=1), e)  # (B, 2c, H'/2, W'/2)
        u = self.unpool1(F.interpolate(u, scale_factor=2.0, mode="nearest"))
        u = self.up1(torch.cat([u, s1], dim=1), e)  # (B, c, H', W')
        return self.out(u)[:, 0, :H, :W]  # (B, H, W)


# -- the model ------------------------------------------------------------------------------------
class DDPM:
    """A diffusion model of one data set: ``fit(X, y=None, *, rng)``, ``sample(n, *, bias, rng)``.

    X is (n, d) for vectors (an MLP denoiser; coordinates standardised) or (n, H, W) images in
    [0, 1] (a U-Net; pixels mapped to [-1, 1]). With labels y the model is class-conditional and
    ``sample`` returns (X, y); the bias is the guidance scale w (see the module docstring).

    Attributes
    ----------
    net_ : nn.Module
    event_shape_ : tuple of int
    n_classes_ : int
        0 for unlabelled data (then guidance is unavailable and w must be 0).
    class_prior_ : ndarray of shape (n_classes_,)
        Label frequencies of the last training set; samples draw their class from it.
    shift_, scale_ : ndarray
        x_model = (x - shift_) / scale_ (fixed at the first fit, so warm starts see one scale).
    lo_, hi_ : ndarray
        Bounds of x̂_0 in model coordinates for the DDIM sampler.
    """

    def __init__(self, config: DDPMConfig | None = None) -> None:
        self.config = config or DDPMConfig()
        self.device = resolve_device(self.config.device)
        self.net_: nn.Module | None = None
        self.opt_: torch.optim.Optimizer | None = None
        self.event_shape_: tuple[int, ...] | None = None
        self.n_classes_ = 0
        self.class_prior_: np.ndarray | None = None
        self.shift_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.lo_: np.ndarray | None = None
        self.hi_: np.ndarray | None = None
        self._make_schedule()

    def _make_schedule(self) -> None:
        # cosine schedule (Nichol & Dhariwal): ᾱ(t) = cos²(((t/T) + s)/(1 + s) · π/2), s = 0.008
        T, s = self.config.timesteps, 0.008
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2)
        abar = (f / f[0]) ** 2
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        self.betas = betas.float()  # (T,); step t (0-based) goes from ᾱ_{t} to ᾱ_{t+1}
        self.alpha_bar = torch.cumprod(1 - betas, 0).float()  # (T,)

    # -- building --------------------------------------------------------------------------------
    def _build(self, event_shape: tuple[int, ...], n_classes: int) -> None:
        cfg = self.config
        self.event_shape_, self.n_classes_ = tuple(int(s) for s in event_shape), int(n_classes)
        images = len(self.event_shape_) == 2
        if len(self.event_shape_) not in (1, 2):
            raise ValueError(
                f"ddpm fits vectors (n, d) or images (n, H, W); got event shape {self.event_shape_}"
            )
        if images and cfg.architecture != "mlp":
            net: nn.Module = UNet(self.n_classes_, cfg.channels)
        elif cfg.architecture == "unet":
            raise ValueError("model.architecture = 'unet' needs image data (n, H, W)")
        else:
            net = MLPDenoiser(math.prod(self.event_shape_), self.n_classes_, cfg.hidden)
        self.net_ = net.to(self.device)
        self.opt_ = torch.optim.Adam(self.net_.parameters(), lr=cfg.learning_rate)

    def _normalizer(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if X.ndim == 3:  # images in [0, 1] -> [-1, 1]
            return np.full(1, 0.5, np.float32), np.full(1, 0.5, np.float32)
        return X.mean(axis=0).astype(np.float32), (X.std(axis=0) + 1e-8).astype(np.float32)

    @staticmethod
    def _bounds(Xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where x̂_0 may lie (model coordinates): [-1, 1] for images; for vectors the training
        range widened by 10% per side. DDIM divides by sqrt(ᾱ_t) ≈ 0 at t = T, so an unclipped
        x̂_0 amplifies the network's error at the first steps."""
        if Xn.ndim == 3:
            return np.full(1, -1.0, np.float32), np.full(1, 1.0, np.float32)
        lo, hi = Xn.min(axis=0), Xn.max(axis=0)
        pad = 0.1 * (hi - lo) + 1e-3
        return (lo - pad).astype(np.float32), (hi + pad).astype(np.float32)

    # -- fitting -----------------------------------------------------------------------------------
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
            self.shift_, self.scale_ = self._normalizer(X)
            self.lo_, self.hi_ = self._bounds((X - self.shift_) / self.scale_)
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
        x0_all = torch.as_tensor((X - self.shift_) / self.scale_, device=dev)  # (N, *event)
        c_all = torch.as_tensor(labels, device=dev)
        null = self.n_classes_  # the "no label" token
        abar = self.alpha_bar.to(dev)
        N, B = len(X), cfg.batch_size
        self.net_.train()
        for _ in range(cfg.steps):
            idx = torch.randint(0, N, (B,), generator=g, device=dev)
            x0, c = x0_all[idx], c_all[idx]  # (B, *event), (B,)
            drop = torch.rand(B, generator=g, device=dev) < cfg.label_dropout
            c = torch.where(drop | (self.n_classes_ == 0), torch.full_like(c, null), c)
            t = torch.randint(0, cfg.timesteps, (B,), generator=g, device=dev)
            eps = torch.randn(x0.shape, generator=g, device=dev)
            a = abar[t].view(-1, *([1] * (x0.dim() - 1)))
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps  # q(x_t | x_0)
            loss = F.mse_loss(self.net_(xt, t, c), eps)
            self.opt_.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_.step()

    # -- sampling ----------------------------------------------------------------------------------
    def sample(
        self, n: int, *, bias: float = 1.0, rng: np.random.Generator
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """n samples at bias λ = ``bias``, i.e. guidance w = 1/λ - 1 (λ = 1: none); (X, y) when
        class-conditional."""
        check_is_fitted(self, "net_")
        if not 0.0 < bias <= 1.0:
            raise ValueError(f"ddpm: the bias λ (sampling.bias) must be in (0, 1], got {bias}")
        w = lambda_to_guidance(float(bias))
        if w > 0 and self.n_classes_ == 0:
            raise ValueError(
                "ddpm: guidance (sampling.bias < 1) needs class labels, and this data has none"
            )
        y = rng.choice(self.n_classes_, size=n, p=self.class_prior_) if self.n_classes_ else None
        g = torch_generator(rng, self.device)
        out = np.empty((n, *self.event_shape_), np.float32)
        with threads(self.config.threads), torch.no_grad():
            self.net_.eval()
            for start in range(0, n, 4096):  # chunks bound the memory of a large draw
                stop = min(start + 4096, n)
                c = torch.as_tensor(
                    y[start:stop] if y is not None else np.zeros(stop - start, np.int64),
                    device=self.device,
                )
                out[start:stop] = self._sample_chunk(c, w, g).cpu().numpy()
        X = out * self.scale_ + self.shift_
        if X.ndim == 3:
            X = np.clip(X, 0.0, 1.0)
        return (X, y) if y is not None else X

    def _eps(self, x: torch.Tensor, t: int, c: torch.Tensor, w: float) -> torch.Tensor:
        tt = torch.full((len(x),), t, device=self.device, dtype=torch.long)
        null = torch.full_like(c, self.n_classes_)
        if w == 0 or self.n_classes_ == 0:
            return self.net_(x, tt, null if self.n_classes_ == 0 else c)
        both = self.net_(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([c, null]))
        eps_c, eps_u = both.chunk(2)
        return (1 + w) * eps_c - w * eps_u  # classifier-free guidance

    def _sample_chunk(self, c: torch.Tensor, w: float, g: torch.Generator) -> torch.Tensor:
        cfg, dev = self.config, self.device
        abar, betas = self.alpha_bar.to(dev), self.betas.to(dev)
        lo, hi = torch.as_tensor(self.lo_, device=dev), torch.as_tensor(self.hi_, device=dev)
        x = torch.randn((len(c), *self.event_shape_), generator=g, device=dev)  # x_T
        if cfg.sampler == "ddpm":
            for t in reversed(range(cfg.timesteps)):
                eps = self._eps(x, t, c, w)
                a_t, b_t = abar[t], betas[t]
                mean = (x - b_t / (1 - a_t).sqrt() * eps) / (1 - b_t).sqrt()
                if t > 0:  # posterior variance β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
                    var = b_t * (1 - abar[t - 1]) / (1 - a_t)
                    x = mean + var.sqrt() * torch.randn(x.shape, generator=g, device=dev)
                else:
                    x = mean
            return x
        # DDIM, η = 0: a deterministic path through an evenly spaced subset of timesteps
        ts = np.unique(
            np.linspace(cfg.timesteps - 1, 0, min(cfg.sample_steps, cfg.timesteps))
            .round()
            .astype(int)
        )[::-1]
        for i, t in enumerate(ts):
            eps = self._eps(x, int(t), c, w)
            a_t = abar[t]
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x0 = torch.maximum(torch.minimum(x0, hi), lo)  # see _bounds
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the ε consistent with the clipped x̂_0
            a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=dev)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x

    # -- checkpoints -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.net_ is None:
            return {}
        state = {
            "event_shape": np.asarray(self.event_shape_, np.int64),
            "n_classes": np.asarray(self.n_classes_, np.int64),
            "shift": self.shift_,
            "scale": self.scale_,
            "lo": self.lo_,
            "hi": self.hi_,
            **module_arrays("net", self.net_),
        }
        if self.class_prior_ is not None:
            state["class_prior"] = self.class_prior_
        if self.config.warm_start:  # only a warm start continues the optimizer
            state.update(optimizer_arrays("opt", self.opt_))
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        self._build(tuple(np.asarray(state["event_shape"]).tolist()), int(state["n_classes"]))
        load_module_arrays("net", self.net_, state)
        self.shift_, self.scale_ = np.asarray(state["shift"]), np.asarray(state["scale"])
        self.lo_, self.hi_ = np.asarray(state["lo"]), np.asarray(state["hi"])
        self.class_prior_ = np.asarray(state["class_prior"]) if "class_prior" in state else None
        if any(k.startswith("opt/") for k in state):
            load_optimizer_arrays("opt", self.opt_, state)


def _build(config: DDPMConfig, *, replicates: int, real: object) -> PerReplicate:
    return PerReplicate(lambda: DDPM(config), replicates)


register_family(FamilySpec("ddpm", DDPMConfig, _build, requires="torch"))
