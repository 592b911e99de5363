"""Explicit merges of LoRA adapters into their base weights, and removal of the wrappers.

These are the only places the base weights change (nothing merges inside forward/train/eval).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from .. import methods
from ..errors import InputError, UnsupportedOperation
from ..quant import QUANTIZED_TYPES, to_linear
from ..state import active_adapter, adapter_configs, forget, holders, replace_module, set_adapter
from ..tuners.base import Kind
from ..tuners.layers import LayerWrapper


def _has_adapters(model: nn.Module, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"{what}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not adapter_configs(model):
        raise InputError(f"{what}: the model has no adapter (inject or load_adapter one first)")


def merge(model: nn.Module, adapter_name: Optional[str] = None, safe_merge: bool = False) -> nn.Module:
    """Fold `adapter_name` (default: the active adapter) into the base weights. Idempotent.

    ΔW is accumulated in fp32 and cast back to the base dtype; `safe_merge=True` raises on
    non-finite results and leaves that layer unchanged.
    """
    _has_adapters(model, "merge")
    if adapter_name is not None:
        set_adapter(model, adapter_name)
    active = active_adapter(model)
    for name in active if isinstance(active, tuple) else (active,):  # (several: stacked, merged together)
        if name is not None and methods.for_config(adapter_configs(model)[name]).kind is Kind.VIRTUAL_TOKENS:
            raise UnsupportedOperation(f"adapter {name!r} adds virtual tokens: it has no weight update to merge; "
                                       "use it as an adapter")
    for _, holder in holders(model):
        holder.merge(safe=safe_merge)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo a merge: the base weights as they were. Idempotent."""
    _has_adapters(model, "unmerge")
    return _unmerge_all(model)


def _unmerge_all(model: nn.Module) -> nn.Module:
    for _, holder in holders(model):
        holder.unmerge()
    return model


def merge_and_unload(model: nn.Module, adapter_name: Optional[str] = None, safe_merge: bool = False) -> nn.Module:
    """Merge, then drop every wrapper: a plain model whose state-dict keys are exactly the base's.

    A `modules_to_save` module is replaced by the merged adapter's trained copy. A quantized base
    (NF4, int8) under a merged adapter becomes an `nn.Linear` holding dequant(W) + ΔW in its compute
    dtype: re-quantizing would round most of ΔW away (see `lorakit.merge.quantized`). Quantized
    linears without an adapter stay quantized; `lorakit.quant.dequantize` converts those too.
    """
    _has_adapters(model, "merge_and_unload")
    if adapter_name is not None:
        set_adapter(model, adapter_name)
    for _, holder in holders(model):
        if isinstance(holder, LayerWrapper) and holder.active is not None and isinstance(holder.base, QUANTIZED_TYPES):
            holder.base = to_linear(holder.base)
    merge(model, None, safe_merge)
    return _unwrap(model, keep_trained_copies=True)


def unload(model: nn.Module) -> nn.Module:
    """Remove all adapters without merging: the original base model back."""
    _unmerge_all(model)
    return _unwrap(model, keep_trained_copies=False)


def _unwrap(model: nn.Module, keep_trained_copies: bool) -> nn.Module:
    for name, holder in holders(model):
        replace_module(model, name, holder.unwrap(keep_trained_copies))
    forget(model)
    return model

