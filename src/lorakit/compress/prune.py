"""Unstructured magnitude pruning (per layer or global) of a model's linear layers.

    report = prune_unstructured(model, 0.5)                  # each linear loses its 50% smallest |w|
    report = prune_unstructured(model, 0.5, scope="global")  # the 50% smallest over all linears together

`torch.nn.utils.prune` chooses the weights (L1 magnitude; `global_unstructured` for the global
threshold) and the pruning is made permanent (`prune.remove`): the result is a plain model whose
pruned weights are exact zeros. The output head and embeddings are never pruned.

What it buys: quality per removed weight is good, but the matrices stay dense, so on disk and in a
dense CPU matmul the model is as large and as slow as before (a sparse kernel or a compressed
format would be needed). `lorakit.compress.structured` removes whole rows and heads instead.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import InputError
from ..quant import quantizable_linears

SCOPES = ("layer", "global")


def prune_unstructured(model: nn.Module, sparsity: float, scope: str = "layer",
                       skip: Optional[Iterable[str]] = None) -> dict:
    """Zero the `sparsity` fraction of smallest-magnitude weights of every linear but the head, in place.

    scope "layer": each matrix loses that fraction; "global": one threshold over all of them (layers
    with many small weights lose more). Returns `sparsity_report` of the pruned linears.
    """
    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"sparsity {sparsity}: expected a fraction in [0, 1)")
    if scope not in SCOPES:
        raise InputError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")
    targets = quantizable_linears(model, skip)
    if not targets:
        raise InputError("no linear layer to prune")
    params = [(module, "weight") for module in targets.values()]
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for module, name in params:
            prune.l1_unstructured(module, name, amount=sparsity)
    for module, name in params:
        prune.remove(module, name)
    return sparsity_report(model, list(targets))


def sparsity_report(model: nn.Module, names: Optional[list[str]] = None) -> dict:
    """{"sparsity": zero fraction over the linears `names` (default: all but the head), "zeros",
    "weights", "per_layer": {name: zero fraction}}."""
    names = names if names is not None else list(quantizable_linears(model))
    per_layer, zeros, total = {}, 0, 0
    for name in names:
        weight = model.get_submodule(name).weight
        z = int((weight == 0).sum())
        per_layer[name] = z / weight.numel()
        zeros, total = zeros + z, total + weight.numel()
    return {"sparsity": zeros / max(total, 1), "zeros": zeros, "weights": total, "per_layer": per_layer}


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """name → bool (out, in) mask of the zero weights of each linear but the head (what pruning removed)."""
    return {name: module.weight.detach() == 0 for name, module in quantizable_linears(model).items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights again (after a LoRA update was merged over a pruned model)."""
    for name, mask in masks.items():
        model.get_submodule(name).weight.masked_fill_(mask, 0.0)
