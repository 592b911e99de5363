"""The layer wrapper: one Linear-like layer or embedding holding named `LayerAdapter`s.

    forward(x) = adapter(layer, x, base(x))        the active adapter (see tuners/base.py), or base(x)

Several plain low-rank adapters can be active together (`set_adapter(model, [names])`, progressive
LoRA): the active object is then an `AdapterStack`, which applies them in order, y + Σ_i update_i.

Linear-like bases: nn.Linear (weight (out, in)), GPT-2's Conv1D (weight (in, out)), or any module
exposing in_features / out_features and `dequantize()` (the NF4 / int8 linears). Merging goes
through the adapter's `merged_weight` on the (out, in) fp32 weight, whatever the base's layout or
format (a quantized base is dequantized, changed and re-quantized). Per-row mixed-adapter batches
are `routing.py`'s: it installs a `row_delta(x, y)` callable on the wrapper for a `route()` block.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..errors import UnsupportedOperation
from .base import AdapterHolder


HALF_DTYPES = (torch.float16, torch.bfloat16)


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a trainable weight is kept in next to a base of `dtype`: float32 for a 16-bit base (fp32
    master weights: an update far below a bf16 / fp16 ulp still counts, and the optimizer's moments and
    the gradients are fp32; peft's `autocast_adapter_dtype` does the same), else the base's own."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


class LayerWrapper(AdapterHolder):
    """Named adapters around one base layer; `in_features` / `out_features` are set by subclasses."""

    embedding = False

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.__dict__["row_delta"] = None

    def add(self, name: str, adapter: nn.Module) -> None:
        base_weight = self.base_weight_param()
        if base_weight is not None and base_weight.is_floating_point():
            adapter.to(device=base_weight.device)
        super().add(name, adapter)

    def base_weight_param(self) -> Optional[torch.Tensor]:
        return getattr(self.base, "weight", None)

    def base_dtype(self) -> Optional[torch.dtype]:
        """The base weight's dtype when it is a float tensor, else None."""
        w = self.base_weight_param()
        return w.dtype if w is not None and w.is_floating_point() else None

    def adapter_dtype(self) -> Optional[torch.dtype]:
        """The dtype trainable adapter weights are created in: `master_dtype` of the base's (None: the
        default float32, for a quantized base)."""
        dtype = self.base_dtype()
        return None if dtype is None else master_dtype(dtype)

    def weight_out_in(self) -> torch.Tensor:
        """The base weight as (out, in): transposed for Conv1D and embeddings, dequantized if needed."""
        base = self.base
        w = base.dequantize() if hasattr(base, "dequantize") else base.weight
        return w.T if self.transposed else w

    @property
    def transposed(self) -> bool:
        return False

    def like_base(self, w_out_in: torch.Tensor) -> torch.Tensor:
        """An (out, in) tensor laid out like the base weight."""
        return w_out_in.T if self.transposed else w_out_in

    def unwrap(self, keep_trained: bool) -> nn.Module:
        return self.base

    def saved_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return self.adapters[adapter_name].saved_tensors(self)

    def loadable_extras(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return self.adapters[adapter_name].loadable_extras(self)

    # ---- merging ---------------------------------------------------------------------------
    def merge(self, safe: bool = False) -> None:
        """Fold the active adapter into the base weight (fp32, cast back); `safe`: refuse non-finite results."""
        name = self.active_name
        if name is None or self.merged == name:
            return
        if self.merged is not None:
            raise RuntimeError(f"adapter {self.merged!r} is already merged; unmerge it first")
        adapter = self.active
        with torch.no_grad():
            self._set_base(adapter.merged_weight(self, self.weight_out_in().float()), adapter.merged_bias, safe)
        self.merged = name

    def unmerge(self) -> None:
        if self.merged is None:
            return
        adapter = self.adapter_for(self.merged)
        with torch.no_grad():
            self._set_base(adapter.unmerged_weight(self, self.weight_out_in().float()), adapter.unmerged_bias, False)
        self.merged = None

    def stack(self, names: tuple[str, ...]) -> "AdapterStack":
        adapters = [self.adapters[n] for n in names]
        for n, a in zip(names, adapters):
            if a.low_rank_factors() is None:
                raise UnsupportedOperation(f"adapters applied together must be plain LoRA (y + Σ updates); {n!r} "
                                          f"({type(a).__name__}, or DoRA) is not")
        return AdapterStack(tuple(names), adapters)

    def _set_base(self, w_out_in: torch.Tensor, bias_fn: Callable, safe: bool) -> None:
        if safe and not torch.isfinite(w_out_in).all():
            raise ValueError("merge produced non-finite weights (safe_merge=True)")
        new = self.like_base(w_out_in)
        base = self.base
        if hasattr(base, "dequantize"):  # quantized base: re-quantize the new weight
            base.set_weight(new)
        else:  # in place on the parameter itself (not .data), so its version counter records the change
            base.weight.copy_(new.to(base.weight.dtype))
        bias = getattr(base, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.copy_(bias_fn(bias.detach().float()).to(bias.dtype))


class AdapterStack:
    """Plain LoRA adapters of one layer applied together: x (..., in), y = base(x) (..., out) ->
    y + Σ_i scaling_i · B_i A_i x. Merging folds them in one after the other. Not a module: the
    adapters stay registered (and saved) under their own names in the wrapper."""

    scales_input = False

    def __init__(self, names: tuple[str, ...], adapters: list[nn.Module]):
        self.names, self.adapters = names, adapters

    def __call__(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for adapter in self.adapters:
            y = adapter(layer, x, y)
        return y

    def embed(self, layer: nn.Module, ids: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for adapter in self.adapters:
            y = adapter.embed(layer, ids, y)
        return y

    def merged_weight(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        for adapter in self.adapters:
            w = adapter.merged_weight(layer, w)
        return w

    def unmerged_weight(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        for adapter in reversed(self.adapters):
            w = adapter.unmerged_weight(layer, w)
        return w

    def merged_bias(self, b: torch.Tensor) -> torch.Tensor:
        for adapter in self.adapters:
            b = adapter.merged_bias(b)
        return b

    def unmerged_bias(self, b: torch.Tensor) -> torch.Tensor:
        for adapter in reversed(self.adapters):
            b = adapter.unmerged_bias(b)
        return b

    def delta_weight(self, dtype=None) -> torch.Tensor:
        """Σ ΔW_i (out, in)."""
        return sum(a.delta_weight(dtype) for a in self.adapters)

    def low_rank_factors(self):
        return None  # several factors, not one low-rank update


class AdaptedLinear(LayerWrapper):
    """A Linear-like base with adapters: (..., in) -> (..., out)."""

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.fan_in_fan_out = _is_conv1d(base)
        if self.fan_in_fan_out:
            self.in_features, self.out_features = base.weight.shape
        else:
            self.in_features, self.out_features = base.in_features, base.out_features

    @property
    def transposed(self) -> bool:
        return self.fan_in_fan_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapter = self.active
        if self.row_delta is not None:
            return self.row_delta(x, self.base(x))
        if adapter is None or self.merged is not None:
            return self.base(x)
        if adapter.scales_input:
            return adapter(self, x, self.base(adapter.input(x)))
        return adapter(self, x, self.base(x))


class AdaptedEmbedding(LayerWrapper):
    """nn.Embedding with adapters: (...) int ids -> (..., dim); in_features = num_embeddings."""

    embedding = True

    def __init__(self, base: nn.Embedding):
        super().__init__(base)
        self.in_features, self.out_features = base.num_embeddings, base.embedding_dim

    @property
    def transposed(self) -> bool:
        return True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = self.base(ids)
        adapter = self.active
        if self.row_delta is not None:
            return self.row_delta(ids, y)
        if adapter is None or self.merged is not None:
            return y
        return adapter.embed(self, ids, y)


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, Conv1D)


WRAPPERS: dict[type, Callable[[nn.Module], LayerWrapper]] = {nn.Embedding: AdaptedEmbedding}
"""Base module type → wrapper; anything Linear-like not listed here gets AdaptedLinear."""


def wrap(module: nn.Module) -> LayerWrapper:
    return WRAPPERS.get(type(module), AdaptedLinear)(module)


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, GPT-2 Conv1D, or a (quantized) module exposing in_features/out_features and a forward."""
    if isinstance(module, nn.Linear) or _is_conv1d(module):
        return True
    return hasattr(module, "in_features") and hasattr(module, "out_features") and hasattr(module, "dequantize")


def layer_wrappers(model: nn.Module) -> list[tuple[str, LayerWrapper]]:
    """(name, wrapper) for every layer wrapper in `model`, found by type."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LayerWrapper)]
