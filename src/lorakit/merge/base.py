"""Explicit merges of LoRA adapters into their base weights, and removal of the wrappers.

These are the only places the base weights change (nothing merges inside forward/train/eval).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..inject import _replace, adapter_configs
from ..quant import QUANTIZED_TYPES, to_linear
from ..routing import _holders, set_adapter
from ..tuners.lora import LoraWrapper


def merge(model: nn.Module, adapter_name: Optional[str] = None, safe_merge: bool = False) -> nn.Module:
    """Fold `adapter_name` (default: the active adapter) into the base weights. Idempotent.

    ΔW is accumulated in fp32 and cast back to the base dtype; `safe_merge=True` raises on
    non-finite results and leaves that layer unchanged.
    """
    if adapter_name is not None:
        set_adapter(model, adapter_name)
    for _, holder in _holders(model):
        if isinstance(holder, LoraWrapper):
            holder.merge(safe=safe_merge)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Subtract a merged adapter from the base weights again. Idempotent."""
    for _, holder in _holders(model):
        if isinstance(holder, LoraWrapper):
            holder.unmerge()
    return model


def merge_and_unload(model: nn.Module, adapter_name: Optional[str] = None, safe_merge: bool = False) -> nn.Module:
    """Merge, then drop every wrapper: a plain model whose state-dict keys are exactly the base's.

    A `modules_to_save` module is replaced by the merged adapter's trained copy. A quantized base
    (NF4, int8) under a merged adapter becomes an `nn.Linear` holding dequant(W) + ΔW in its compute
    dtype: re-quantizing would round most of ΔW away (see `lorakit.merge.quantized`). Quantized
    linears without an adapter stay quantized; `lorakit.quant.dequantize` converts those too.
    """
    if adapter_name is not None:
        set_adapter(model, adapter_name)
    for _, holder in _holders(model):
        if isinstance(holder, LoraWrapper) and holder.active is not None and isinstance(holder.base, QUANTIZED_TYPES):
            holder.base = to_linear(holder.base)
    merge(model, None, safe_merge)
    return _unwrap(model, keep_trained_copies=True)


def unload(model: nn.Module) -> nn.Module:
    """Remove all adapters without merging: the original base model back."""
    unmerge(model)
    return _unwrap(model, keep_trained_copies=False)


def _unwrap(model: nn.Module, keep_trained_copies: bool) -> nn.Module:
    for name, holder in _holders(model):
        if isinstance(holder, LoraWrapper):
            _replace(model, name, holder.base)
        else:
            keep = holder.active if keep_trained_copies and holder.active is not None else holder.original
            _replace(model, name, keep)
    adapter_configs(model).clear()
    model.__dict__.pop("lorakit_active", None)
    return model

