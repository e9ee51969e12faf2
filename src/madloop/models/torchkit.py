"""Torch plumbing shared by every neural family (ddpm, vae, gan, flow, char-transformer): the
config fields they share, one device resolver, seeded generators and initialisation, thread
control, data standardisation and array-only checkpoints.

Randomness: nothing here touches torch's global RNG. Every random op takes a ``torch.Generator``
seeded from the caller's ``numpy.random.Generator``, so a family's numbers depend only on the
seed tree (on the CPU, bit for bit). Modules are built on the ``meta`` device and initialised with
that generator, so even construction leaves the global RNG alone.

Importing this module imports torch; the families that use it are registered through the tolerant
registry in :mod:`madloop.models.base`, so they vanish cleanly when torch is missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from madloop.config import ModelConfig


def resolve_device(device: str) -> torch.device:
    """``"auto"``: CUDA when present, else the CPU. Naming CUDA where there is none raises (the
    configs' :func:`check_device` validator says so at validation time already)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device = 'cuda' but no CUDA device is available; use 'auto'")
    return torch.device(device)


class TorchModelConfig(ModelConfig):
    """Fields every torch family shares. Training is from scratch each generation unless
    ``warm_start`` (then generation t continues from t-1's weights and optimizer state)."""

    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    warm_start: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: torch intra-op threads while fitting/sampling; 0 leaves torch's setting alone. These nets are
    #: small, so one thread wastes little and stays fast on a machine whose cores are shared;
    #: raise it on an idle many-core machine.
    threads: int = Field(1, ge=0, le=1024)


def check_device(device: str) -> str:
    """A config validator: naming CUDA on a machine without it is a config error, not a crash."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("'cuda' is not available on this machine; use 'auto' or 'cpu'")
    return device


def torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded from ``rng`` (one draw from it)."""
    return torch.Generator(device=device).manual_seed(int(rng.integers(2**63)))


def mlp(sizes: Iterable[int], *, slope: float = 0.2) -> nn.Sequential:
    """Linear layers with LeakyReLU between them (none after the last), built on ``meta``:
    call :func:`materialize` before use."""
    sizes = list(sizes)
    layers: list[nn.Module] = []
    with torch.device("meta"):
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


def materialize(module: nn.Module, device: torch.device, gen: torch.Generator) -> nn.Module:
    """Allocate a ``meta`` module on ``device`` and initialise every Linear as torch's default
    does (U(±1/sqrt(fan_in)) for weight and bias), but from ``gen``."""
    module = module.to_empty(device=device)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features else 0.0
                nn.init.uniform_(layer.weight, -bound, bound, generator=gen)
                if layer.bias is not None:
                    nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return module


def standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, scale) so that nets see data of unit spread.

    The scale is floored at a tenth of the average feature spread: constant features (an image's
    blank border) would otherwise be divided by ~0, and a flow would chase an infinite density.
    """
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    floor = 0.1 * float(std.mean()) if std.size and std.mean() > 0 else 1.0
    return mean, np.maximum(std, floor)


def one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) class indices -> (B, n) floats; (B, 0) when the model is unconditional."""
    if n == 0:
        return index.new_zeros((index.shape[0], 0), dtype=torch.float32)
    return nn.functional.one_hot(index, n).float()


# -- class labels ---------------------------------------------------------------------------------
def label_classes(y: np.ndarray | None, conditional: bool) -> np.ndarray:
    """Sorted distinct labels, or none for an unconditional model."""
    if y is None or not conditional:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.asarray(y))


def class_shares(y: np.ndarray | None, classes: np.ndarray) -> np.ndarray:
    """Training share of each class (sampled labels follow it)."""
    if len(classes) == 0:
        return np.zeros(0)
    counts = (np.asarray(y)[:, None] == classes[None, :]).sum(axis=0)
    return counts / counts.sum()


def label_index(
    y: np.ndarray | None, classes: np.ndarray, device: torch.device, n: int
) -> torch.Tensor:
    """Labels -> indices into ``classes`` on ``device`` (zeros when unconditional)."""
    if len(classes) == 0:
        return torch.zeros(n, dtype=torch.long, device=device)
    if y is None:
        raise ValueError("this model is class-conditional: pass the labels y")
    return torch.as_tensor(np.searchsorted(classes, np.asarray(y)), device=device)


# -- checkpoints: named numpy arrays only --------------------------------------------------------
def _array(t: torch.Tensor) -> np.ndarray:
    # a copy: on the CPU .numpy() shares memory, and training would rewrite a saved state
    return t.detach().cpu().numpy().copy()


def module_arrays(prefix: str, module: nn.Module) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": _array(v) for k, v in module.state_dict().items()}


def load_module_arrays(prefix: str, module: nn.Module, state: dict[str, np.ndarray]) -> None:
    own = module.state_dict()
    missing = [k for k in own if f"{prefix}/{k}" not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {prefix}/{missing[0]} (and {len(missing) - 1} more)")
    module.load_state_dict({k: torch.as_tensor(state[f"{prefix}/{k}"]) for k in own})


def optimizer_arrays(prefix: str, opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """Adam-style per-parameter state (step, exp_avg, exp_avg_sq) as arrays; the
    hyperparameters come from the config, so they are not stored."""
    out = {}
    for idx, slots in opt.state_dict()["state"].items():
        for name, value in slots.items():
            out[f"{prefix}/{idx}/{name}"] = _array(torch.as_tensor(value))
    return out


def load_optimizer_arrays(
    prefix: str, opt: torch.optim.Optimizer, state: dict[str, np.ndarray]
) -> None:
    sd = opt.state_dict()
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(prefix + "/"):
            idx, name = key[len(prefix) + 1 :].split("/")
            slots.setdefault(int(idx), {})[name] = torch.tensor(value)  # a copy, as above
    if not slots:
        return
    # Adam keeps `step` on the CPU and the moments beside their parameter.
    params = [p for group in opt.param_groups for p in group["params"]]
    for idx, s in slots.items():
        for name, v in s.items():
            s[name] = v if name == "step" else v.to(params[idx].device)
    opt.load_state_dict({"state": slots, "param_groups": sd["param_groups"]})


def init_weights(module: torch.nn.Module, g: torch.Generator) -> None:
    """Re-initialise every Linear / Conv / Embedding as PyTorch does by default, but from ``g``:
    layer constructors draw from torch's global generator, which would tie a fit to whatever ran
    before it in the process."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
                torch.nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=g)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / fan_in**0.5
                    torch.nn.init.uniform_(m.bias, -bound, bound, generator=g)
            elif isinstance(m, torch.nn.Embedding):
                torch.nn.init.normal_(m.weight, generator=g)


class threads:
    """Context manager: run with ``n`` torch threads (0 = unchanged), then restore."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.before = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n:
            torch.set_num_threads(self.before)
