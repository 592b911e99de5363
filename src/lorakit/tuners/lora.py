"""LoRA, with its DoRA, rsLoRA and PiSSA options: the `lora` method of the registry (`METHOD`).

    y = base(x) + scaling · B(A(dropout(x))),   scaling = alpha / r   (alpha / sqrt(r) with rsLoRA)

`LoraAdapter` is a `LayerAdapter` (protocol in tuners/base.py) living in the layer wrappers of
tuners/layers.py (nn.Linear, GPT-2 Conv1D, quantized linears, nn.Embedding). `delta_weight()` is
the only place ΔW = scaling · B A is formed: merge, unmerge, export and adapter arithmetic all use
it. DoRA is a strategy object the adapter holds (`adapter.dora`, tuners/dora.py); nothing outside
this file and dora.py looks at it.

On disk (peft's names, after `base_model.model.<path>.`): `lora_A.weight` (r, in), `lora_B.weight`
(out, r); embeddings `lora_embedding_A` (r, num_embeddings), `lora_embedding_B` (dim, r); DoRA adds
`lora_magnitude_vector` (out,).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import InitKind, LoraConfig, parse_lora_init
from ..state import adapter_configs
from ..targets import wrap_targets
from .base import HookChain, Kind, LayerAdapter, Method, ModulesToSave, TrainingHooks
from .dora import DoraMagnitude
from .layers import (WRAPPERS, AdaptedEmbedding, AdaptedLinear, LayerWrapper, is_linear_like, layer_wrappers,
                     wrap)
from .pissa import pissa_init

INIT_A = {
    InitKind.KAIMING: lambda a: nn.init.kaiming_uniform_(a, a=math.sqrt(5)),
    InitKind.GAUSSIAN: lambda a: nn.init.normal_(a, std=1.0 / a.shape[0]),
    InitKind.RANDOM: lambda a: nn.init.kaiming_uniform_(a, a=math.sqrt(5)),
    InitKind.PISSA: lambda a: nn.init.kaiming_uniform_(a, a=math.sqrt(5)),  # the builder then runs pissa_init
}


class LoraAdapter(LayerAdapter):
    """One adapter's trainable factors: A (r, in) and B (out, r); optionally DoRA's magnitude."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, init: bool | str = True, dtype=None, device=None):
        super().__init__()
        kind = parse_lora_init(init).kind
        self.r, self.alpha = r, alpha
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=dtype, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dora: Optional[DoraMagnitude] = None  # set by the builder for use_dora: turns this adapter into DoRA
        INIT_A[kind](self.lora_A)
        if kind is InitKind.RANDOM:
            nn.init.normal_(self.lora_B, std=0.1)

    @property
    def dtype(self) -> torch.dtype:
        return self.lora_A.dtype

    def delta_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """ΔW = scaling · B A, shape (out, in), in `dtype` (default: the factors' dtype)."""
        if dtype is not None:
            return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling
        return (self.lora_B @ self.lora_A) * self.scaling

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out): the adapter's contribution only, scaling · B A dropout(x)."""
        return F.linear(F.linear(self.dropout(x), self.lora_A) * self.scaling, self.lora_B)

    def forward(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (..., in), y = base(x) (..., out) -> y + scaling · B A dropout(x) (DoRA: its rescaled output)."""
        if self.dora is not None:
            return self.dora(layer, self, x, y)
        a, b = self.lora_A, self.lora_B
        if x.dtype != a.dtype:
            # fp32 master factors beside a 16-bit base: the update runs in the activations' dtype, on the
            # factors cast per call (what CUDA autocast does); their gradients still arrive in fp32
            a, b = a.to(x.dtype), b.to(x.dtype)
        if x.dtype == y.dtype:
            # the add fused into the B matmul: one pass over y fewer
            h = F.linear(self.dropout(x), a) * self.scaling
            return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), b.t()).view(y.shape)
        return y + (F.linear(F.linear(self.dropout(x), a) * self.scaling, b)).to(y.dtype)

    def embed(self, layer: nn.Module, ids: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ids (...), y = E[ids] (..., dim) -> y + scaling · B A[:, ids] (DoRA: rescaled)."""
        lora = F.linear(F.embedding(ids, self.lora_A.T), self.lora_B) * self.scaling
        if self.dora is not None:
            return self.dora.embedding_forward(self, y, lora, layer)
        return y + lora.to(y.dtype)

    def merged_weight(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        if self.dora is not None:
            return self.dora.merged_weight(layer, self, w)
        return w + self.delta_weight(torch.float32)

    def unmerged_weight(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        if self.dora is not None:
            return self.dora.unmerged_weight(layer, self, w)
        return w - self.delta_weight(torch.float32)

    def saved_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        if layer.embedding:
            out = {"lora_embedding_A": self.lora_A, "lora_embedding_B": self.lora_B}
        else:
            out = {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}
        if self.dora is not None:
            out["lora_magnitude_vector"] = self.dora.magnitude
        return out

    def loadable_extras(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {"base_layer.weight": layer.base.weight} if layer.embedding else {}  # peft saves targeted embeddings

    def low_rank_factors(self) -> Optional[tuple[torch.Tensor, torch.Tensor, float]]:
        return None if self.dora is not None else (self.lora_A, self.lora_B, self.scaling)

    def optimizer_roles(self, layer: nn.Module) -> dict[str, list[nn.Parameter]]:
        return {"lora_B": [self.lora_B], **({"embedding_A": [self.lora_A]} if layer.embedding else {})}


def build(model: nn.Module, config: LoraConfig, adapter_name: str) -> list[str]:
    """LoRA (with its DoRA / PiSSA options) on every target of `config`; returns their names."""
    init = config.init
    wrappers = wrap_targets(model, config)
    for name, wrapper in wrappers.items():
        adapter = LoraAdapter(wrapper.in_features, wrapper.out_features, config.rank_for(name), config.alpha_for(name),
                              config.lora_dropout, config.use_rslora, config.init_lora_weights,
                              dtype=wrapper.adapter_dtype())
        wrapper.add(adapter_name, adapter)
        if init.kind is InitKind.PISSA:
            pissa_init(wrapper, adapter, init.niter)
        if config.use_dora:
            adapter.dora = DoraMagnitude.init_from(wrapper, adapter)
    return list(wrappers)


PISSA_INITIAL = "pissa_initial"
"""Under a run's output_dir: the PiSSA adapter as initialised, from which the shipped adapter is converted."""


class PissaHooks(TrainingHooks):
    """A PiSSA run trains against the residual base but ships a plain LoRA for the original base:
    the adapter is saved before the first update, and the shipped one converted from it (tuners/pissa.py)."""

    def start(self, model: nn.Module, output_dir: Path, save_adapter) -> None:
        save_adapter(Path(output_dir) / PISSA_INITIAL)

    def save_options(self, output_dir: Path) -> dict:
        return {"convert_pissa_to_lora": Path(output_dir) / PISSA_INITIAL}


class OrthogonalityPenalty(TrainingHooks):
    """O-LoRA: λ · Σ_layers Σ_earlier ||A_new A_earlierᵀ||²_F, the new adapter's rows of A kept orthogonal
    to those of the other (frozen, earlier) plain LoRA adapters on the same layers."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], strength: float):
        self.pairs, self.strength, self.last = pairs, strength, 0.0  # (A_new (r, in), A_earlier (r', in))

    def penalty(self) -> torch.Tensor:
        return self.strength * sum(((a @ old.to(a.dtype).T).float() ** 2).sum() for a, old in self.pairs)

    def regularizer(self, model: nn.Module) -> Optional[torch.Tensor]:
        value = self.penalty() if self.pairs else None
        self.last = float(value.detach()) if value is not None else 0.0
        return value

    def metrics(self) -> dict:
        return {"orthogonal_penalty": self.last}


def orthogonal_pairs(model: nn.Module, adapter_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A of `adapter_name`, A of another plain LoRA adapter) for every layer holding both."""
    pairs = []
    for _, wrapper in layer_wrappers(model):
        mine = wrapper.adapters[adapter_name].low_rank_factors() if adapter_name in wrapper.adapters else None
        if mine is None:
            continue
        for name, other in wrapper.adapters.items():
            factors = other.low_rank_factors() if name != adapter_name else None
            if factors is not None:
                pairs.append((mine[0], factors[0].detach()))
    return pairs


def _hooks(model: nn.Module, adapter_name: str, total_steps: int) -> Optional[TrainingHooks]:
    config = adapter_configs(model)[adapter_name]
    hooks = [PissaHooks()] if config.init.kind is InitKind.PISSA else []
    if config.orthogonal_lambda > 0:
        hooks.append(OrthogonalityPenalty(orthogonal_pairs(model, adapter_name), config.orthogonal_lambda))
    return hooks[0] if len(hooks) == 1 else HookChain(hooks) if hooks else None


def _check_run(config: LoraConfig, run) -> None:
    if config.use_dora and config.init.kind is InitKind.PISSA:
        raise ValueError("lora.init_lora_weights: PiSSA with use_dora cannot be converted to an adapter for the "
                         "original base after training; use one or the other")
    if config.orthogonal_lambda > 0 and not config.progressive_from:
        raise ValueError("lora.orthogonal_lambda: the penalty is against earlier adapters; set "
                         "lora.progressive_from")
    if config.progressive_from and (config.use_dora or config.init.kind is InitKind.PISSA):
        raise ValueError("lora.progressive_from: adapters applied together are plain LoRA; "
                         f"{'use_dora' if config.use_dora else 'PiSSA (which changes the base)'} cannot train on top")


def _saved_config(config: LoraConfig, adapted: dict) -> dict:
    """Per-module ranks and alphas spelled out as peft matches them."""
    return {"rank_pattern": {n: a.r for n, a in adapted.items() if a.r != config.r},
            "alpha_pattern": {n: a.alpha for n, a in adapted.items() if a.alpha != config.lora_alpha}}


def _summary(config: LoraConfig) -> str:
    options = [o for o, on in (("DoRA", config.use_dora), ("rsLoRA", config.use_rslora),
                               ("PiSSA", config.init.kind is InitKind.PISSA)) if on]
    targets = "the preset targets" if config.target_modules is None else repr(config.target_modules)
    return f"r={config.r}{' ' + '+'.join(options) if options else ''} on {targets}"


METHOD = Method(name="lora", config=LoraConfig, peft_type="LORA", kind=Kind.LAYERS, build=build, summary=_summary,
                hooks=_hooks, saved_config=_saved_config, load_overrides={"init_lora_weights": True},
                check_run=_check_run)

# The wrapper classes under their LoRA-era names (they hold adapters of every layer method).
LoraWrapper, LoraLinear, LoraEmbedding, lora_wrappers = LayerWrapper, AdaptedLinear, AdaptedEmbedding, layer_wrappers

__all__ = ["LoraAdapter", "METHOD", "OrthogonalityPenalty", "orthogonal_pairs", "LoraWrapper", "LoraLinear", "LoraEmbedding", "ModulesToSave", "wrap",
           "is_linear_like", "lora_wrappers", "WRAPPERS", "PISSA_INITIAL"]
