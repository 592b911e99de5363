"""Optimizers over trainable parameters only: AdamW with decay on matrices, and LoRA+ groups.

LoRA+ (Hayou et al., 2024): B should learn faster than A; B (and the embedding B) get
lr × `loraplus_lr_ratio`, A gets lr, an embedding's A gets `loraplus_lr_embedding`.
Parameters are found through the adapter protocol (`optimizer_roles`), never by parameter names.
On CUDA, AdamW runs fused (`can_fuse`).
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


def can_fuse(params) -> bool:
    """Whether AdamW's fused kernel takes these parameters: all floating point tensors on one CUDA device.
    (On the CPU the default single-tensor AdamW is kept: the benchmarked path, unchanged.)"""
    params = list(params)
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params) and \
        len({p.device for p in params}) == 1


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, loraplus_lr_ratio: Optional[float] = None,
                    loraplus_lr_embedding: float = 1e-6, fused: Optional[bool] = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (LoRA+ learning rates when `loraplus_lr_ratio` is set).

    `fused`: AdamW's fused kernel (one launch for every parameter's update); None chooses it when the
    parameters are on a CUDA device (`can_fuse`), else the default implementation."""
    groups = param_groups(model, lr, weight_decay, loraplus_lr_ratio, loraplus_lr_embedding)
    if not groups:
        raise InputError("no trainable parameters: inject an adapter or unfreeze the model first")
    if fused is None:
        fused = can_fuse(p for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, fused=True) if fused else torch.optim.AdamW(groups, lr=lr)


def loraplus_optimizer(model: nn.Module, lr: float, loraplus_lr_ratio: float = 16.0, weight_decay: float = 0.0,
                       loraplus_lr_embedding: float = 1e-6) -> torch.optim.Optimizer:
    """AdamW with LoRA+ learning rates: B at lr × loraplus_lr_ratio (default 16), A at lr."""
    return build_optimizer(model, lr, weight_decay, loraplus_lr_ratio, loraplus_lr_embedding)
