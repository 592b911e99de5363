"""DoRA: weight-decomposed LoRA (Liu et al. 2024), as a strategy object held by a `LoraAdapter`.

    W' = m ⊙ (W + ΔW) / ‖W + ΔW‖        norm per output row (over the input dim), ΔW = adapter.delta_weight()

The norm is treated as a constant in backward (paper §4.3, as peft and torchtune do), so it is
computed under `no_grad`. The forward reuses the base layer's output instead of a second matmul:

    y = c ⊙ (base(x) − bias + s·B(A(x))) + bias,     c = m / ‖W + ΔW‖   (out,)

With adapter dropout active in training the identity does not hold (the base saw x, the adapter
dropout(x)), so, like peft, W·dropout(x) is computed once more for that case only.

The norm uses ‖W_i + ΔW_i‖² = ‖W_i‖² + 2s·⟨B_i, (W Aᵀ)_i⟩ + s²·B_i (A Aᵀ) B_iᵀ: one (out, in)·(in, r)
matmul and no (out, in) temporary; ‖W_i‖² is cached while the base weight is unchanged, and the
whole norm is cached outside training (keyed by the tensors' version counters).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def base_weight_out_in(wrapper: nn.Module) -> torch.Tensor:
    """The wrapper's base weight as (out, in): transposed for GPT-2 Conv1D and embeddings, dequantized if needed."""
    base = wrapper.base
    w = base.dequantize() if hasattr(base, "dequantize") else base.weight
    if isinstance(base, nn.Embedding) or getattr(wrapper, "fan_in_fan_out", False):
        return w.T
    return w


class DoraMagnitude(nn.Module):
    """The magnitude vector m (out,) of one DoRA adapter, with the weight-norm bookkeeping."""

    def __init__(self, out_features: int, dtype=None, device=None):
        super().__init__()
        self.magnitude = nn.Parameter(torch.ones(out_features, dtype=dtype, device=device))
        self._cache: dict[str, tuple] = {}
        self.merged_norm: Optional[torch.Tensor] = None

    @classmethod
    def init_from(cls, wrapper: nn.Module, adapter: nn.Module) -> "DoraMagnitude":
        """m = ‖W + ΔW‖ per output row: a fresh DoRA adapter reproduces the LoRA layer exactly."""
        dora = cls(wrapper.out_features, dtype=adapter.lora_A.dtype, device=adapter.lora_A.device)
        with torch.no_grad():
            dora.magnitude.copy_(dora.weight_norm(wrapper, adapter))
        return dora

    def train(self, mode: bool = True):
        if mode:
            self._cache.pop("inv", None)
        return super().train(mode)

    def invalidate(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def weight_norm(self, wrapper: nn.Module, adapter: nn.Module) -> torch.Tensor:
        """‖W + ΔW‖ per output row, (out,), fp32, detached."""
        return self._inv_norm(wrapper, adapter).reciprocal()

    @torch.no_grad()
    def _inv_norm(self, wrapper: nn.Module, adapter: nn.Module) -> torch.Tensor:
        """1 / ‖W + ΔW‖ per output row, (out,), fp32: 7 small kernels, no (out, in) temporary."""
        w = base_weight_out_in(wrapper)
        a, b, s = adapter.lora_A, adapter.lora_B, adapter.scaling
        wkey = (w.data_ptr(), w._version)
        if not self.training:
            key = (*wkey, a.data_ptr(), a._version, b.data_ptr(), b._version, s)
            hit = self._cache.get("inv")
            if hit is not None and hit[0] == key:
                return hit[1]
        w_sq = self._cache.get("w_sq")
        if w_sq is None or w_sq[0] != wkey:
            w_sq = (wkey, w.float().pow(2).sum(1))
            self._cache["w_sq"] = w_sq
        a32, b32 = a.float(), b.float()
        x = torch.addmm(w.float() @ a32.T, b32, a32 @ a32.T, beta=2 * s, alpha=s * s)  # (out, r)
        inv = torch.rsqrt((torch.linalg.vecdot(b32, x) + w_sq[1]).clamp_min_(1e-30))
        if not self.training:
            self._cache["inv"] = (key, inv)
        return inv

    def scale(self, wrapper: nn.Module, adapter: nn.Module) -> torch.Tensor:
        """c = m / ‖W + ΔW‖, (out,); gradient flows to m only."""
        return self.magnitude * self._inv_norm(wrapper, adapter).to(self.magnitude.dtype)

    def forward(self, wrapper: nn.Module, adapter: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Linear-like: x (..., in), y = base(x) (..., out) -> DoRA output (..., out)."""
        c = self.scale(wrapper, adapter)
        bias = getattr(wrapper.base, "bias", None)
        xa = x.to(adapter.lora_A.dtype)
        if self.training and not isinstance(adapter.dropout, nn.Identity):
            xa = adapter.dropout(xa)
            w = base_weight_out_in(wrapper)
            base_part = F.linear(xa.to(w.dtype), w).to(c.dtype)
            lora = F.linear(F.linear(xa, adapter.lora_A) * adapter.scaling, adapter.lora_B)
            return y + ((c - 1) * base_part + c * lora).to(y.dtype)
        t = torch.add(y.to(c.dtype), F.linear(F.linear(xa, adapter.lora_A), adapter.lora_B), alpha=adapter.scaling)
        if bias is None:
            return (t * c).to(y.dtype)
        return torch.addcmul(bias * (1 - c), t, c).to(y.dtype)

    def embedding_forward(self, adapter: nn.Module, y: torch.Tensor, lora: torch.Tensor, wrapper) -> torch.Tensor:
        """Embedding: y = E[ids] (..., dim), lora = s·B(A[ids]) (..., dim) -> c ⊙ (y + lora)."""
        c = self.scale(wrapper, adapter)
        return ((y.to(c.dtype) + lora) * c).to(y.dtype)

    # ---- merging: W' = c ⊙ (W + ΔW), and back ------------------------------------------------
    @torch.no_grad()
    def merge_delta(self, wrapper: nn.Module, adapter: nn.Module) -> torch.Tensor:
        """What to add to the base weight (laid out like it) so that it becomes c ⊙ (W + ΔW)."""
        w = base_weight_out_in(wrapper).float()
        norm = self.weight_norm(wrapper, adapter)
        self.merged_norm = norm
        c = (self.magnitude.float() / norm).unsqueeze(1)
        delta = (c - 1) * w + c * adapter.delta_weight().float()
        return _like_base(wrapper, delta)

    @torch.no_grad()
    def unmerge_delta(self, wrapper: nn.Module, adapter: nn.Module) -> torch.Tensor:
        """What to add to the merged base weight W' to get W = W' / c − ΔW back (c as at merge time)."""
        w = base_weight_out_in(wrapper).float()
        c = (self.magnitude.float() / self.merged_norm).unsqueeze(1)
        self.merged_norm = None
        self.invalidate()
        return _like_base(wrapper, w / c - adapter.delta_weight().float() - w)


def _like_base(wrapper: nn.Module, delta_out_in: torch.Tensor) -> torch.Tensor:
    if isinstance(wrapper.base, nn.Embedding) or getattr(wrapper, "fan_in_fan_out", False):
        return delta_out_in.T
    return delta_out_in
