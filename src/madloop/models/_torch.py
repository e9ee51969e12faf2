"""Torch plumbing shared by the neural families (ddpm, vae): config fields, devices, generators,
and the checkpoint contract (learned state as named numpy arrays, never pickle).

Randomness: every torch random call takes a ``torch.Generator`` seeded from the numpy generator the
loop hands in, so a seed fixes every number; torch's global generator is never seeded, and the
draws layer constructors take from it are overwritten by :func:`init_weights` before use.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from madloop.configs import ModelConfig


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


def torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator seeded from the numpy stream (one draw from it)."""
    seed = int(rng.integers(0, 2**63 - 1))
    return torch.Generator(device=device).manual_seed(seed)


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


def module_state(prefix: str, module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {
        f"{prefix}/{k}": v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()
    }


def load_module_state(prefix: str, module: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    own = module.state_dict()
    sd = {k: torch.as_tensor(state[f"{prefix}/{k}"]) for k in own}
    module.load_state_dict(sd)


def optimizer_state(prefix: str, opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """Adam's moments and step counts per parameter index, as arrays."""
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            arr = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
            out[f"{prefix}/{idx}/{key}"] = arr.copy()
    return out


def load_optimizer_state(
    prefix: str, opt: torch.optim.Optimizer, state: dict[str, np.ndarray], device: torch.device
) -> None:
    sd = opt.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(prefix + "/"):
            continue
        idx, name = key[len(prefix) + 1 :].split("/", 1)
        tensor = torch.as_tensor(np.asarray(value))
        # Adam keeps ``step`` as a CPU float tensor; the moments live with the parameters
        per_param.setdefault(int(idx), {})[name] = (
            tensor.to(torch.float32) if name == "step" else tensor.to(device)
        )
    sd["state"] = per_param
    opt.load_state_dict(sd)
