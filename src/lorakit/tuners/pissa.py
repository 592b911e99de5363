"""PiSSA initialisation (Meng et al. 2024): start LoRA from the principal singular directions of W.

    W = U S Vᵀ,   A = sqrt(S_r / s) V_rᵀ  (r, in),   B = U_r sqrt(S_r / s)  (out, r),   s = scaling
    base weight ← W − s·B A     (the residual; the model's outputs are unchanged)

`init_lora_weights="pissa"` uses a full SVD; `"pissa_niter_<k>"` uses `torch.svd_lowrank` with k
subspace iterations (much faster on large matrices, near-identical factors for small k ≥ 2).

Which file to ship after training (`lorakit.save_adapter`):
- plain `save_adapter(model, dir)`: the adapter applies to the **residual** base only, so ship it
  with the residual model (e.g. `lorakit.unload(model)` then `save_pretrained`). Use this to keep
  training or when you control the base weights.
- `save_adapter(model, dir, convert_pissa_to_lora=initial_dir)`, where `initial_dir` holds the adapter
  saved right after `inject` (before any training step): writes a rank-2r plain LoRA adapter,
  B' = [B, −B₀], A' = [A; A₀] with the same scaling, that applies to the **original** base weights
  (peft's `path_initial_model_for_weight_conversion`). Use this to share the adapter with anyone
  who has the original model; peft and lorakit both load it as ordinary LoRA.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .svd import split_factors, top_singular


@torch.no_grad()
def pissa_init(wrapper: nn.Module, adapter: nn.Module, niter: Optional[int] = None) -> None:
    """Set A, B to the top-r singular factors of the base weight and leave the residual in the base."""
    base = wrapper.base
    if hasattr(base, "dequantize") or isinstance(base, nn.Embedding):
        raise TypeError("PiSSA initialises float Linear / Conv1D layers; quantize the residual model afterwards")
    w = wrapper.weight_out_in()
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"PiSSA needs a float32/float16/bfloat16 base weight, got {w.dtype}")
    w32 = w.float()
    a, b = split_factors(*top_singular(w32, adapter.r, niter), scaling=adapter.scaling)  # (r, in), (out, r)
    adapter.lora_A.copy_(a.to(adapter.lora_A.dtype))
    adapter.lora_B.copy_(b.to(adapter.lora_B.dtype))
    residual = w32 - adapter.delta_weight(torch.float32)
    base.weight.data.copy_(wrapper.like_base(residual).to(base.weight.dtype))


def converted_tensors(trained: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank-2r LoRA tensors for the original base: A' = [A; A₀] (2r, in), B' = [B, −B₀] (out, 2r).

    `trained` / `initial`: on-disk key → tensor of the trained and the freshly initialised PiSSA adapter.
    """
    out = dict(trained)
    for key, a in trained.items():
        if key.endswith(".lora_A.weight"):
            bkey = key[: -len("lora_A.weight")] + "lora_B.weight"
            if key not in initial or bkey not in initial:
                raise KeyError(f"initial PiSSA adapter has no {key} / {bkey}")
            out[key] = torch.cat([a, initial[key].to(a.dtype)], dim=0)
            out[bkey] = torch.cat([trained[bkey], -initial[bkey].to(a.dtype)], dim=1)
        elif "lora_magnitude_vector" in key or "lora_embedding" in key:
            raise ValueError("PiSSA conversion handles plain LoRA linear layers only (no DoRA, no embeddings)")
    return out


def doubled_alpha(alpha: float, use_rslora: bool) -> float:
    """alpha for rank 2r that keeps scaling unchanged."""
    return alpha * (math.sqrt(2) if use_rslora else 2)
