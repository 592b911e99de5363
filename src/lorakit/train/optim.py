"""Optimizers over trainable parameters only: AdamW with decay on matrices, and LoRA+ groups.

LoRA+ (Hayou et al., 2024): B should learn faster than A; B (and the embedding B) get
lr × `loraplus_lr_ratio`, A gets lr, an embedding's A gets `loraplus_lr_embedding`.
LoRA factors are found by type (LoraAdapter), never by parameter names.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..tuners.lora import LoraAdapter, LoraEmbedding, LoraWrapper
from ..errors import InputError


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, loraplus_lr_ratio: Optional[float] = None,
                 loraplus_lr_embedding: float = 1e-6) -> list[dict]:
    """AdamW groups: (lr, decay) per kind of trainable parameter; empty groups dropped."""
    b_ids, emb_a_ids = set(), set()
    for module in model.modules():
        if not isinstance(module, LoraWrapper):
            continue
        for adapter in module.adapters.values():
            if not isinstance(adapter, LoraAdapter):  # VeRA / AdaLoRA adapters: every parameter at lr
                continue
            b_ids.add(id(adapter.lora_B))
            if isinstance(module, LoraEmbedding):
                emb_a_ids.add(id(adapter.lora_A))
    groups: dict[str, dict] = {}

    def add(key: str, p: nn.Parameter, group_lr: float, decay: float) -> None:
        groups.setdefault(key, {"params": [], "lr": group_lr, "weight_decay": decay})["params"].append(p)

    ratio = loraplus_lr_ratio or 1.0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        decay = weight_decay if p.dim() >= 2 else 0.0
        if id(p) in b_ids:
            add("lora_B", p, lr * ratio, decay)
        elif id(p) in emb_a_ids and loraplus_lr_ratio:
            add("embedding_A", p, loraplus_lr_embedding, decay)
        else:
            add("decay" if decay else "no_decay", p, lr, decay)
    return list(groups.values())


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, loraplus_lr_ratio: Optional[float] = None,
                    loraplus_lr_embedding: float = 1e-6) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (LoRA+ learning rates when `loraplus_lr_ratio` is set)."""
    groups = param_groups(model, lr, weight_decay, loraplus_lr_ratio, loraplus_lr_embedding)
    if not groups:
        raise InputError("no trainable parameters: inject an adapter or unfreeze the model first")
    return torch.optim.AdamW(groups, lr=lr)


def loraplus_optimizer(model: nn.Module, lr: float, loraplus_lr_ratio: float = 16.0, weight_decay: float = 0.0,
                       loraplus_lr_embedding: float = 1e-6) -> torch.optim.Optimizer:
    """AdamW with LoRA+ learning rates: B at lr × loraplus_lr_ratio (default 16), A at lr."""
    return build_optimizer(model, lr, weight_decay, loraplus_lr_ratio, loraplus_lr_embedding)
