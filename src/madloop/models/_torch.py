"""Torch plumbing shared by the neural families (ddpm, vae): config fields, devices, generators,
and seeded initialisation. Generators and array-only checkpoints come from
:mod:`madloop.models.torchkit`, shared with the gan and flow families.

Randomness: every torch random call takes a ``torch.Generator`` seeded from the numpy generator the
loop hands in, so a seed fixes every number; torch's global generator is never seeded, and the
draws layer constructors take from it are overwritten by :func:`init_weights` before use.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from madloop.config import ModelConfig


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


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA where present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device = 'cuda' but no CUDA device is available; use 'auto'")
    return torch.device(name)


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
