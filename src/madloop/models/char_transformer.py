"""A small character-level transformer language model, in the spirit of nanoGPT.

References: Karpathy, nanoGPT (``model.py``): a GPT-2 style decoder (pre-LayerNorm blocks of
causal self-attention and a 4x MLP); Radford et al. 2019 (GPT-2) for the scaled init of residual
projections. Trainable on CPU in minutes on a small corpus; on a GPU where present.

A document of L tokens is modelled after a beginning-of-document token (id V): the input is
[BOS, x_1 .. x_{L-1}], the targets x_1 .. x_L, so the model is a law over whole documents, like
the n-gram family. Sampling bias: temperature (``sampling.bias``), ``top_k``, ``top_p``.

Randomness: initial weights come from a ``torch.Generator`` seeded from the loop's numpy
Generator; minibatches and sampled tokens are drawn with numpy. There is no dropout (it would draw
from torch's global RNG), so on CPU the same seed gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Self

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from madloop.config import TEMPERATURE, BiasKnob, DataConfig, ModelConfig
from madloop.models.base import FamilySpec, NotFittedError, PerReplicate, register_family
from madloop.models.decoding import draw, filter_probabilities
from madloop.models.torchkit import resolve_device

MAX_TEMPERATURE = TEMPERATURE.max_lambda  # sampling.temperature above 1 flattens


def bias_knob(lam: float) -> dict[str, float]:
    """The sampling temperature for the paper's bias λ: ``{"temperature": λ}``."""
    return CharTransformerConfig.bias_knob.knob(lam)


@dataclass
class GPTConfig:
    vocab_size: int  # V real symbols; the input embedding has one more row, for BOS
    block_size: int  # L, the document length (the model never sees more)
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # pre-LN residual blocks, as GPT-2
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)  # + BOS
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        # no weight tying: the output never predicts BOS, so it has V rows, not V + 1
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def init_weights(self, generator: torch.Generator) -> None:
        """GPT-2 init from an explicit generator (construction drew from torch's global RNG; those
        values are all overwritten here, so they never matter)."""
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # residual projections scaled by 1/sqrt(2 n_layer), per GPT-2
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
                nn.init.normal_(p, 0.0, std, generator=generator)
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02, generator=generator)
            elif name.endswith(".weight"):  # LayerNorm gains
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} > block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


class CharTransformerConfig(ModelConfig):
    family: Literal["char-transformer"] = "char-transformer"
    bias_knob: ClassVar[BiasKnob] = TEMPERATURE  # T = λ; sampling.temperature > 1 flattens
    n_layer: int = Field(2, ge=1, le=48)
    n_head: int = Field(2, ge=1, le=64)
    n_embd: int = Field(64, ge=8, le=4096)
    steps: int = Field(200, ge=1, le=1_000_000)  # optimiser steps per generation
    batch_size: int = Field(32, ge=1, le=65536)  # documents per step
    learning_rate: float = Field(3e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    warm_start: bool = False  # continue from the previous generation's weights and optimiser
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: a GPU when torch sees one
    threads: int = Field(1, ge=1, le=256)  # CPU threads for torch: a small model is fastest on 1
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _heads(self) -> CharTransformerConfig:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd: must be a multiple of n_head ({self.n_head}), got {self.n_embd}"
            )
        return self

    def data_problem(self, data: DataConfig) -> str | None:
        if data.source != "text":
            return f"family 'char-transformer' needs data.source = 'text', got '{data.source}'"
        return None


class CharTransformerLM:
    """One transformer LM with madloop's ``fit(X, *, rng)`` / ``sample(n, *, bias, rng)``.

    Attributes
    ----------
    model_ : GPT or None
    optimizer_ : torch.optim.AdamW or None
    """

    def __init__(
        self,
        gpt: GPTConfig,
        *,
        steps: int = 200,
        batch_size: int = 32,
        learning_rate: float = 3e-3,
        weight_decay: float = 0.0,
        warm_start: bool = False,
        device: str = "auto",
        threads: int = 1,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> None:
        self.gpt = gpt
        self.steps = steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warm_start = warm_start
        self.device = resolve_device(device)
        self.threads = threads
        self.top_k = top_k
        self.top_p = top_p
        self.model_: GPT | None = None
        self.optimizer_: torch.optim.Optimizer | None = None

    def _threads(self) -> None:
        # torch's intra-op pool is process-wide; on a shared or small CPU, extra threads of a
        # small model mostly spin-wait (5-25x slower measured on a busy 2-core machine)
        if self.device.type == "cpu" and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _new(self, rng: np.random.Generator | None) -> None:
        self.model_ = GPT(self.gpt).to(self.device)
        if rng is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(0, 2**63 - 1)))
            with torch.no_grad():
                cpu_model = self.model_.to("cpu")
                cpu_model.init_weights(gen)
                self.model_ = cpu_model.to(self.device)
        self.optimizer_ = torch.optim.AdamW(
            self.model_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )

    def _inputs(self, docs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Documents (B, L) -> inputs [BOS, x_1..x_{L-1}] and targets x_1..x_L, both (B, L)."""
        y = torch.as_tensor(np.asarray(docs, dtype=np.int64), device=self.device)
        bos = torch.full((y.shape[0], 1), self.gpt.vocab_size, device=self.device)
        return torch.cat([bos, y[:, :-1]], dim=1), y

    def fit(self, X: np.ndarray, y: None = None, *, rng: np.random.Generator) -> Self:
        """``steps`` AdamW steps on random minibatches of the documents X (m, L)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.gpt.block_size:
            raise ValueError(f"X must have shape (m, {self.gpt.block_size}), got {X.shape}")
        self._threads()
        if self.model_ is None or not self.warm_start:
            self._new(rng)
        model, opt = self.model_, self.optimizer_
        model.train()
        for _ in range(self.steps):
            batch = X[rng.integers(0, X.shape[0], size=min(self.batch_size, X.shape[0]))]
            inp, tgt = self._inputs(batch)
            logits = model(inp)  # (B, L, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return self

    def _check(self) -> GPT:
        if self.model_ is None:
            raise NotFittedError("CharTransformerLM is not fitted yet: call fit first")
        return self.model_

    @torch.no_grad()
    def mean_nll(self, X: np.ndarray, chunk: int = 256) -> float:
        """Mean negative log-likelihood per token (nats) of documents X (m, L)."""
        model = self._check()
        model.eval()
        self._threads()
        total, count = 0.0, 0
        for i in range(0, X.shape[0], chunk):
            inp, tgt = self._inputs(X[i : i + chunk])
            logits = model(inp)
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum"
                )
            )
            count += tgt.numel()
        return total / count

    @torch.no_grad()
    def sample(self, n: int, *, bias: float = 1.0, rng: np.random.Generator) -> np.ndarray:
        """n documents (n, L), token by token from the filtered next-token law."""
        model = self._check()
        model.eval()
        self._threads()
        L = self.gpt.block_size
        idx = torch.full((n, 1), self.gpt.vocab_size, device=self.device)  # BOS
        out = np.empty((n, L), dtype=np.int32)
        for i in range(L):
            logits = model(idx[:, -L:])[:, -1, :]  # (n, V)
            p = torch.softmax(logits.double(), dim=-1).cpu().numpy()
            p = filter_probabilities(p, temperature=bias, top_k=self.top_k, top_p=self.top_p)
            out[:, i] = draw(p, rng)
            nxt = torch.as_tensor(out[:, i : i + 1].astype(np.int64), device=self.device)
            idx = torch.cat([idx, nxt], dim=1)
        return out

    # -- checkpoints: weights and AdamW moments as numpy arrays, never pickle --------------------
    def get_state(self) -> dict[str, np.ndarray]:
        if self.model_ is None:
            return {}
        out = {
            f"weights/{k}": v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()
        }
        if self.warm_start and self.optimizer_ is not None:
            names = dict(self.model_.named_parameters())
            for name, p in names.items():
                for key, value in self.optimizer_.state.get(p, {}).items():
                    out[f"optim/{name}/{key}"] = torch.as_tensor(value).detach().cpu().numpy()
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        self._new(None)
        weights = {
            k.removeprefix("weights/"): torch.from_numpy(np.array(v))
            for k, v in state.items()
            if k.startswith("weights/")
        }
        self.model_.load_state_dict(weights)
        names = dict(self.model_.named_parameters())
        for key, value in state.items():
            if key.startswith("optim/"):
                name, field = key.removeprefix("optim/").rsplit("/", 1)
                t = torch.from_numpy(np.array(value))
                self.optimizer_.state[names[name]][field] = (
                    t if field == "step" else t.to(self.device)
                )


class CharTransformerChains(PerReplicate):
    """R independent transformer chains; adds the held-out score the text metrics need."""

    def mean_nll(self, docs: np.ndarray) -> np.ndarray:
        return np.array([m.mean_nll(docs) for m in self.models])


def _build(
    config: CharTransformerConfig, *, replicates: int, real: object
) -> CharTransformerChains:
    gpt = GPTConfig(
        vocab_size=int(real.vocab_size),
        block_size=int(real.doc_length),
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
    )
    return CharTransformerChains(
        lambda: CharTransformerLM(
            gpt,
            steps=config.steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            warm_start=config.warm_start,
            device=config.device,
            threads=config.threads,
            top_k=config.top_k,
            top_p=config.top_p,
        ),
        replicates,
    )


register_family(FamilySpec("char-transformer", CharTransformerConfig, _build, requires="torch"))
