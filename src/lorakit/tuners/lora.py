"""LoRA wrappers around Linear-like modules (nn.Linear, GPT-2 Conv1D, quantized linears) and nn.Embedding.

    y = base(x) + scaling · B(A(dropout(x))),   scaling = alpha / r   (alpha / sqrt(r) with rsLoRA)

A wrapper holds its base module and any number of named adapters; exactly one (or none) is
active. `delta_weight()` is the only place ΔW = scaling · B A is formed: merge, unmerge, export
and adapter arithmetic all use it. Per-row mixed-adapter batches are handled by `routing.py`,
which installs a `row_delta` callable on the wrapper for the duration of a `route()` block;
`row_delta(x, y)` returns the base output y plus each row's own adapter update.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

INIT_A = {
    True: lambda a: nn.init.kaiming_uniform_(a, a=math.sqrt(5)),
    "gaussian": lambda a: nn.init.normal_(a, std=1.0 / a.shape[0]),
    False: lambda a: nn.init.kaiming_uniform_(a, a=math.sqrt(5)),
}


class LoraAdapter(nn.Module):
    """One adapter's trainable factors: A (r, in) and B (out, r)."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, init: bool | str = True, dtype=None, device=None):
        super().__init__()
        self.r, self.alpha = r, alpha
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=dtype, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dora = None  # optional DoraMagnitude (tuners/dora.py): turns this adapter into DoRA
        INIT_A[init](self.lora_A)
        if init is False:
            nn.init.normal_(self.lora_B, std=0.1)

    def delta_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """ΔW = scaling · B A, shape (out, in), in `dtype` (default: the factors' dtype)."""
        if dtype is not None:
            return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out): the adapter's contribution only."""
        return F.linear(F.linear(self.dropout(x), self.lora_A) * self.scaling, self.lora_B)


class LoraWrapper(nn.Module):
    """Shared bookkeeping of LoRA wrappers: named adapters, the active one, merge state."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        # Plain attributes (not registered submodules): the forward reads them without dict lookups.
        self.__dict__["active"] = None
        self.__dict__["row_delta"] = None
        self.merged: Optional[str] = None

    @property
    def active_name(self) -> Optional[str]:
        for name, adapter in self.adapters.items():
            if adapter is self.active:
                return name
        return None

    def set_active(self, name: Optional[str]) -> None:
        if self.merged is not None and name != self.merged:
            raise RuntimeError(f"adapter {self.merged!r} is merged into the base; unmerge before switching")
        self.__dict__["active"] = None if name is None else self.adapters[name]

    def add(self, name: str, adapter: nn.Module) -> None:
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        base_weight = self.base_weight_param()
        if base_weight is not None and base_weight.is_floating_point():
            adapter.to(device=base_weight.device)
        self.adapters[name] = adapter

    def delete(self, name: str) -> None:
        if self.merged == name:
            raise RuntimeError(f"adapter {name!r} is merged; unmerge before deleting it")
        if self.active is self.adapters[name]:
            self.set_active(None)
        del self.adapters[name]

    def base_weight_param(self) -> Optional[torch.Tensor]:
        return getattr(self.base, "weight", None)

    # ---- merging ---------------------------------------------------------------------------
    def _base_delta(self, adapter: LoraAdapter) -> torch.Tensor:
        """ΔW laid out like the base weight (transposed for Conv1D / embeddings)."""
        raise NotImplementedError

    def merge(self, safe: bool = False) -> None:
        """Fold the active adapter into the base weight (fp32 accumulation, cast back)."""
        name = self.active_name
        if name is None or self.merged == name:
            return
        if self.merged is not None:
            raise RuntimeError(f"adapter {self.merged!r} is already merged; unmerge it first")
        adapter = self.active
        dora = getattr(adapter, "dora", None)
        self._add_to_base(self._base_delta(adapter) if dora is None else dora.merge_delta(self, adapter), safe)
        self.merged = name

    def unmerge(self) -> None:
        if self.merged is None:
            return
        adapter = self.adapters[self.merged]
        dora = getattr(adapter, "dora", None)
        self._add_to_base(-self._base_delta(adapter) if dora is None else dora.unmerge_delta(self, adapter), safe=False)
        self.merged = None

    def _add_to_base(self, delta: torch.Tensor, safe: bool) -> None:
        base = self.base
        if hasattr(base, "dequantize"):  # quantized base: dequantize, add, re-quantize
            new = base.dequantize().float() + delta.float()
            if safe and not torch.isfinite(new).all():
                raise ValueError("merge produced non-finite weights (safe_merge=True)")
            base.set_weight(new)
            return
        w = base.weight
        new = w.data.float() + delta.to(w.device).float()
        if safe and not torch.isfinite(new).all():
            raise ValueError("merge produced non-finite weights (safe_merge=True)")
        w.data.copy_(new.to(w.dtype))


class LoraLinear(LoraWrapper):
    """LoRA around a Linear-like base: nn.Linear (weight (out, in)), GPT-2 Conv1D (weight (in, out)),
    or any module exposing in_features / out_features (e.g. an NF4 linear).

    forward: (..., in) -> (..., out)
    """

    def __init__(self, base: nn.Module):
        super().__init__(base)
        self.fan_in_fan_out = _is_conv1d(base)
        if self.fan_in_fan_out:
            self.in_features, self.out_features = base.weight.shape
        else:
            self.in_features, self.out_features = base.in_features, base.out_features

    def _base_delta(self, adapter: LoraAdapter) -> torch.Tensor:
        delta = _fp32_delta(adapter)
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        adapter = self.active
        if self.row_delta is not None:
            return self.row_delta(x, y)
        if adapter is None or self.merged is not None:
            return y
        if adapter.dora is not None:
            return adapter.dora(self, adapter, x, y)
        if type(adapter) is LoraAdapter and x.dtype == y.dtype == adapter.lora_A.dtype:
            # y + scaling · B A x with the add fused into the B matmul: one pass over y fewer.
            h = F.linear(adapter.dropout(x), adapter.lora_A) * adapter.scaling
            y2 = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), adapter.lora_B.t())
            return y2.view(y.shape)
        if x.dtype != adapter.lora_A.dtype:
            return y + adapter(x.to(adapter.lora_A.dtype)).to(y.dtype)
        return y + adapter(x)


class LoraEmbedding(LoraWrapper):
    """LoRA around nn.Embedding. Factors follow peft's layout: A (r, num_embeddings), B (dim, r).

    forward: (...) int ids -> (..., dim)
    """

    def __init__(self, base: nn.Embedding):
        super().__init__(base)
        self.in_features, self.out_features = base.num_embeddings, base.embedding_dim

    def _base_delta(self, adapter: LoraAdapter) -> torch.Tensor:
        return _fp32_delta(adapter).T  # (num_embeddings, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y = self.base(ids)
        adapter = self.active
        if self.row_delta is not None:
            return self.row_delta(ids, y)
        if adapter is None or self.merged is not None:
            return y
        h = F.embedding(ids, adapter.lora_A.T, padding_idx=None)
        if adapter.dora is not None:
            return adapter.dora.embedding_forward(adapter, y, F.linear(h, adapter.lora_B) * adapter.scaling, self)
        return y + (F.linear(h, adapter.lora_B) * adapter.scaling).to(y.dtype)


class ModulesToSave(nn.Module):
    """A whole module trained per adapter (e.g. a classification head); the original stays intact."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original
        self.copies = nn.ModuleDict()
        self.__dict__["active"] = None

    def add(self, name: str) -> None:
        import copy

        if name in self.copies:
            raise ValueError(f"adapter {name!r} already exists on this module")
        self.copies[name] = copy.deepcopy(self.original)

    def set_active(self, name: Optional[str]) -> None:
        self.__dict__["active"] = None if name is None else self.copies[name]

    def delete(self, name: str) -> None:
        if self.active is self.copies[name]:
            self.set_active(None)
        del self.copies[name]

    @property
    def adapters(self):  # uniform access with the LoRA wrappers
        return self.copies

    def forward(self, *args, **kwargs):
        return (self.active or self.original)(*args, **kwargs)


def _fp32_delta(adapter: LoraAdapter) -> torch.Tensor:
    return adapter.delta_weight(torch.float32)


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, Conv1D)


WRAPPERS: dict[type, Callable[[nn.Module], LoraWrapper]] = {nn.Embedding: LoraEmbedding}
"""Base module type → wrapper; anything Linear-like not listed here gets LoraLinear."""


def wrap(module: nn.Module) -> LoraWrapper:
    return WRAPPERS.get(type(module), LoraLinear)(module)


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, GPT-2 Conv1D, or a (quantized) module exposing in_features/out_features and a forward."""
    if isinstance(module, (nn.Linear,)) or _is_conv1d(module):
        return True
    return hasattr(module, "in_features") and hasattr(module, "out_features") and hasattr(module, "dequantize")


def lora_wrappers(model: nn.Module):
    """(name, wrapper) for every LoRA wrapper in `model`, found by type."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraWrapper)]


