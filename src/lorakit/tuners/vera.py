"""VeRA (Kopiczko et al. 2024): one frozen random pair (A, B) shared by all layers, trained vectors per layer.

    y = base(x) + λ_b ⊙ B[:out] (λ_d ⊙ A[:, :in] dropout(x)),   ΔW = diag(λ_b) B[:out] diag(λ_d) A[:, :in]

A (r, max_in) and B (max_out, r) are Kaiming-uniform from `torch.Generator().manual_seed(projection_prng_key)`
(A drawn first, then B, exactly as peft does), so a file without them regenerates the same matrices.
`VeraAdapter` is a `LayerAdapter` (tuners/base.py) in the layer wrappers; the shared `VeraProjection`
is one module referenced by every adapter (its buffers are non-persistent; `METHOD.model_tensors`
saves them once as `base_model.vera_A` / `base_model.vera_B`, peft's keys). Per layer on disk:
`base_model.model.<path>.vera_lambda_b` (out,) and `.vera_lambda_d` (r,).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VeraConfig
from ..state import adapter_configs, holders
from ..targets import wrap_targets
from .base import Kind, LayerAdapter, Method


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-b, b) with b = sqrt(3)·sqrt(2)/sqrt(fan_in), fan_in = shape[1] (peft's VeRA init)."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeraProjection(nn.Module):
    """The shared frozen matrices: vera_A (r, max_in), vera_B (max_out, r)."""

    def __init__(self, r: int, max_in: int, max_out: int, seed: int):
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.register_buffer("vera_A", kaiming_uniform((r, max_in), g), persistent=False)
        self.register_buffer("vera_B", kaiming_uniform((max_out, r), g), persistent=False)


class VeraAdapter(LayerAdapter):
    """One layer's VeRA vectors: vera_lambda_d (r,), vera_lambda_b (out,); (..., in) -> (..., out)."""

    def __init__(self, projection: VeraProjection, in_features: int, out_features: int, dropout: float = 0.0,
                 d_initial: float = 0.1, init: bool = True, dtype=None, device=None):
        super().__init__()
        r = projection.vera_A.shape[0]
        self.r, self.in_features, self.out_features = r, in_features, out_features
        self.projection = projection  # shared submodule (same object in every adapted layer)
        self.vera_lambda_d = nn.Parameter(torch.full((r,), d_initial, dtype=dtype, device=device))
        self.vera_lambda_b = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        if not init:
            with torch.no_grad():
                self.vera_lambda_b.normal_(0.0, 1.0)
                self.vera_lambda_d.normal_(0.0, 1.0)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def dtype(self) -> torch.dtype:
        """Inputs are cast to the trained vectors' dtype, as peft does."""
        return self.vera_lambda_d.dtype

    def factors(self, dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared matrices sliced to this layer: A (r, in), B (out, r)."""
        dtype = dtype or self.vera_lambda_d.dtype
        a = self.projection.vera_A[:, : self.in_features]
        b = self.projection.vera_B[: self.out_features]
        return a.to(dtype), b.to(dtype)

    def delta_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """ΔW = diag(λ_b) B diag(λ_d) A, shape (out, in)."""
        a, b = self.factors(dtype)
        lb, ld = self.vera_lambda_b, self.vera_lambda_d
        if dtype is not None:
            lb, ld = lb.to(dtype), ld.to(dtype)
        return (lb[:, None] * b) @ (ld[:, None] * a)

    def saved_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {"vera_lambda_b": self.vera_lambda_b, "vera_lambda_d": self.vera_lambda_d}

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out): λ_b ⊙ B (λ_d ⊙ A dropout(x))."""
        a, b = self.factors()
        return self.vera_lambda_b * F.linear(self.vera_lambda_d * F.linear(self.dropout(x), a), b)

    def forward(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.update(x.to(self.dtype)).to(y.dtype)


def build(model: nn.Module, config: VeraConfig, adapter_name: str) -> list[str]:
    """A VeraAdapter on every target, sharing one projection sized to the largest layer; returns the targets."""
    wrappers = wrap_targets(model, config)
    bad = [n for n, w in wrappers.items() if w.embedding]
    if bad:
        raise TypeError(f"VeRA adapts Linear-like layers only, not embeddings: {bad}")
    max_in = max(w.in_features for w in wrappers.values())
    max_out = max(w.out_features for w in wrappers.values())
    projection = VeraProjection(config.r, max_in, max_out, config.projection_prng_key)
    for w in wrappers.values():
        weight = w.base_weight_param()
        if weight is not None:
            projection.to(weight.device)
        w.add(adapter_name, VeraAdapter(projection, w.in_features, w.out_features, config.vera_dropout,
                                        config.d_initial, config.init_weights, dtype=w.adapter_dtype()))
    return list(wrappers)


def shared_projection(model: nn.Module, adapter_name: str) -> Optional[VeraProjection]:
    """The projection of VeRA adapter `adapter_name` (None if the model has none)."""
    return next((h.adapters[adapter_name].projection for _, h in holders(model) if adapter_name in h.adapters
                 and isinstance(h.adapters[adapter_name], VeraAdapter)), None)


def _model_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The shared projection, once, under peft's keys (unless the config regenerates it from the seed)."""
    projection = shared_projection(model, adapter_name)
    if projection is None or not adapter_configs(model)[adapter_name].save_projection:
        return {}
    return {"base_model.vera_A": projection.vera_A, "base_model.vera_B": projection.vera_B}


METHOD = Method(name="vera", config=VeraConfig, peft_type="VERA", kind=Kind.LAYERS, build=build,
                summary=lambda c: f"r={c.r} (shared) on {'the preset targets' if c.target_modules is None else c.target_modules!r}",
                model_tensors=_model_tensors, load_overrides={"init_weights": True})
