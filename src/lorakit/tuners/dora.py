"""DoRA: weight-decomposed LoRA (Liu et al. 2024), as a strategy object held by a `LoraAdapter`.

    W' = m ⊙ (W + ΔW) / ‖W + ΔW‖        norm per output row (over the input dim), ΔW = adapter.delta_weight()

The norm is treated as a constant in backward (paper §4.3, as peft and torchtune do), so it is
computed under `no_grad`. The forward reuses the base layer's output instead of a second matmul:

    y = c ⊙ (base(x) − bias + s·B(A(x))) + bias,     c = m / ‖W + ΔW‖   (out,)

With adapter dropout active in training the identity does not hold (the base saw x, the adapter
dropout(x)), so, like peft, W·dropout(x) is computed once more for that case only.

Without dropout, that expression runs as one hand-written autograd Function (`_DoraLinear`),
which walks the (tokens, out) activations three times per step where autograd would take five.

The norm uses ‖W_i + ΔW_i‖² = ‖W_i‖² + 2s·⟨B_i, (W Aᵀ)_i⟩ + s²·B_i (A Aᵀ) B_iᵀ: one (out, in)·(in, r)
matmul and no (out, in) temporary; ‖W_i‖² is cached while the base weight is unchanged, and the
whole norm is cached outside training (keyed by the tensors' version counters).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


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
        w = wrapper.weight_out_in()
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
        m = self.magnitude
        inv = self._inv_norm(wrapper, adapter).to(m.dtype)
        bias = getattr(wrapper.base, "bias", None)
        xa = x.to(adapter.lora_A.dtype)
        if self.training and not isinstance(adapter.dropout, nn.Identity):
            c = m * inv
            xa = adapter.dropout(xa)
            w = wrapper.weight_out_in()
            base_part = F.linear(xa.to(w.dtype), w).to(c.dtype)
            lora = F.linear(F.linear(xa, adapter.lora_A) * adapter.scaling, adapter.lora_B)
            return y + ((c - 1) * base_part + c * lora).to(y.dtype)
        h = F.linear(xa, adapter.lora_A)
        if y.dtype == h.dtype == m.dtype and (bias is None or bias.dtype == m.dtype):
            out = _DoraLinear.apply(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), adapter.lora_B, m, inv,
                                    adapter.scaling, bias)
            return out.view(y.shape)
        c = m * inv  # mixed dtypes (e.g. a bf16 base under fp32 factors): the plain expression
        t = torch.add(y.to(c.dtype), F.linear(h, adapter.lora_B), alpha=adapter.scaling)
        if bias is None:
            return (t * c).to(y.dtype)
        return torch.addcmul(bias.to(c.dtype) * (1 - c), t, c).to(y.dtype)

    def embedding_forward(self, adapter: nn.Module, y: torch.Tensor, lora: torch.Tensor, wrapper) -> torch.Tensor:
        """Embedding: y = E[ids] (..., dim), lora = s·B(A[ids]) (..., dim) -> c ⊙ (y + lora)."""
        c = self.scale(wrapper, adapter)
        return ((y.to(c.dtype) + lora) * c).to(y.dtype)

    # ---- merging: W' = c ⊙ (W + ΔW), and back ------------------------------------------------
    @torch.no_grad()
    def merged_weight(self, wrapper: nn.Module, adapter: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """W' = c ⊙ (W + ΔW) for the (out, in) fp32 base weight W; c is kept for `unmerged_weight`."""
        norm = self.weight_norm(wrapper, adapter)
        self.merged_norm = norm
        c = (self.magnitude.float() / norm).unsqueeze(1)
        return c * (w + adapter.delta_weight(torch.float32))

    @torch.no_grad()
    def unmerged_weight(self, wrapper: nn.Module, adapter: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """W = W' / c − ΔW (c as at merge time)."""
        c = (self.magnitude.float() / self.merged_norm).unsqueeze(1)
        self.merged_norm = None
        self.invalidate()
        return w / c - adapter.delta_weight(torch.float32)


class _DoraLinear(torch.autograd.Function):
    """out = c ⊙ (y − bias) + bias + s·(h Bᵀ) ⊙ c,  c = m ⊙ inv_norm;  y (N, out) = base(x), h (N, r) = A x.

    Written by hand so that the (N, out) activations are walked as few times as possible, which is
    what DoRA costs over LoRA: forward one pass (y·c; the low-rank product is accumulated into it by
    the matmul), backward two (g ⊙ y summed over N for m, then g·c for the base and the factors, in
    the same buffer: fresh large allocations page-fault). Autograd on the plain expression makes
    five passes and three allocations. m's low-rank part, Σ_N g ⊙ (h Bᵀ) = rowdot(B, gᵀh), reuses
    gᵀh, which B's gradient needs anyway. Only y and h are kept for backward.
    """

    @staticmethod
    def forward(ctx, y, h, lora_b, magnitude, inv_norm, scaling, bias):
        c = magnitude * inv_norm
        out = y * c if bias is None else torch.addcmul(bias * (1 - c), y, c)
        out.addmm_(h, lora_b.t() * (c * scaling))
        ctx.save_for_backward(y, h, lora_b, magnitude, inv_norm, bias)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, g):
        y, h, lora_b, magnitude, inv_norm, bias = ctx.saved_tensors
        s = ctx.scaling
        need_y, need_h, need_b, need_m, _, _, need_bias = ctx.needs_input_grad
        c = magnitude * inv_norm
        grad_y = grad_h = grad_b = grad_m = grad_bias = None
        g_sum = g.sum(0) if bias is not None and (need_m or need_bias) else None
        buf = None  # one (N, out) buffer: first g ⊙ y, then g ⊙ c (fresh large allocations page-fault)
        if need_m:
            buf = torch.mul(g, y)
            dot = buf.sum(0) if g_sum is None else buf.sum(0) - g_sum * bias
        if need_b or need_m:
            gh = g.t() @ h  # (out, r)
            if need_b:
                grad_b = gh * (c * s).unsqueeze(1)
            if need_m:
                grad_m = inv_norm * (dot + s * torch.linalg.vecdot(lora_b, gh))
        if need_y or need_h:
            gc = torch.mul(g, c, out=buf) if buf is not None else g * c
            grad_y = gc if need_y else None
            if need_h:
                grad_h = gc @ (lora_b * s)
        if need_bias:
            grad_bias = g_sum * (1 - c)
        return grad_y, grad_h, grad_b, grad_m, None, None, grad_bias
