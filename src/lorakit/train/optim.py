"""Optimizers over trainable parameters only: AdamW with decay on matrices, and LoRA+ groups.

LoRA+ (Hayou et al., 2024): B should learn faster than A; B (and the embedding B) get
lr × `loraplus_lr_ratio`, A gets lr, an embedding's A gets `loraplus_lr_embedding`.
Parameters are found through the adapter protocol (`optimizer_roles`), never by parameter names.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import InputError
from ..tuners.layers import layer_wrappers


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, loraplus_lr_ratio: Optional[float] = None,
                 loraplus_lr_embedding: float = 1e-6) -> list[dict]:
    """AdamW groups: (lr, decay) per kind of trainable parameter; empty groups dropped."""
    roles: dict[str, set[int]] = {"lora_B": set(), "embedding_A": set()}
    for _, layer in layer_wrappers(model):
        for adapter in layer.adapters.values():
            for role, params in adapter.optimizer_roles(layer).items():
                roles.setdefault(role, set()).update(id(p) for p in params)
    b_ids, emb_a_ids = roles["lora_B"], roles["embedding_A"]
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
