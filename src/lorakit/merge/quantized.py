"""Merging an adapter out of a quantized (QLoRA) base: a full-precision model with the base's keys.

A QLoRA adapter was trained against dequant(Q(W)), not W, so it is merged into the dequantized
base: W' = dequant(Q(W)) + ΔW, kept in full precision. Re-quantizing W' (to serve it in 4 bits)
rounds again; `requantization_error` measures it. For a QLoRA adapter this is worse than it looks:
dequant(Q(W)) already sits on the NF4 grid and ΔW is mostly smaller than half a grid step, so
rounding snaps W' back to the base. SmolLM2-135M after 20 quickstart steps: ‖Q(W') − W'‖ is only
0.9 % of ‖W'‖ but 1.08 × ‖ΔW‖, and eval loss goes 0.012 → 2.78 (untrained base: 3.38). Serve a
QLoRA result as the 4-bit base plus the adapter, or merged in full precision.

    stats = merge_adapter_to_dir("runs/qlora/adapter", "out/merged", requantize="nf4")

The directory written is a plain HF model (safetensors + config + tokenizer) that
`transformers.AutoModelForCausalLM.from_pretrained` loads; `lorakit.models.load_causal_lm(dir,
quantization="nf4")` loads it in 4 bits, which is exactly the re-quantized model measured here.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..io import WEIGHTS_NAME, attach_adapter, read_base_quantization, read_config, read_weights
from ..io.model_dir import save_model_dir
from ..io.shards import check_output_directory
from ..quant import dequantize, quantizable_linears, quantized_linear_class
from ..state import holders, set_adapter
from ..tuners.layers import LayerWrapper
from .base import merge_and_unload
from ..errors import InputError

CAUSAL_TASKS = (None, "CAUSAL_LM")


def merge_dequantized(model: nn.Module, adapter_name: Optional[str] = None) -> tuple[nn.Module, dict[str, float]]:
    """Merge `adapter_name` (default: the active adapter) and dequantize every quantized linear.

    Returns (plain full-precision model with the base's original state-dict keys,
    {merged module name: ||W' − W||_F}, the change the merge makes to each layer's weight).
    """
    if adapter_name is not None:
        set_adapter(model, adapter_name)
    norms = {}
    for name, holder in holders(model):
        if isinstance(holder, LayerWrapper) and holder.active is not None:
            with torch.no_grad():
                w = holder.weight_out_in().float()
                norms[name] = float((holder.active.merged_weight(holder, w) - w).norm())
    model = merge_and_unload(model)
    dequantize(model)
    return model, norms


def requantization_error(model: nn.Module, method: str, names: list[str], deltas: Optional[dict] = None,
                         double_quant: bool = True, blocksize: int = 64) -> dict[str, float]:
    """What re-quantizing the merged linears `names` with `method` would cost, layer by layer.

    rel_error: ‖Q(W') − W'‖_F / ‖W'‖_F pooled over the layers (W' the merged full-precision weight).
    error_vs_delta: ‖Q(W') − W'‖_F / ‖ΔW‖_F pooled (when `deltas`, the ‖ΔW‖_F per layer, are given):
    above 1 the rounding is larger than the whole adapter update.
    max_layer_rel_error: the worst single layer's relative error.
    """
    cls = quantized_linear_class(method)
    err2 = ref2 = delta2 = 0.0
    worst = 0.0
    for name in names:
        weight = model.get_submodule(name).weight.detach().float()  # (out, in)
        rounded = cls.from_weight(weight, double_quant=double_quant, blocksize=blocksize).dequantize()
        e2 = float((rounded - weight).pow(2).sum())
        r2 = float(weight.pow(2).sum())
        err2, ref2 = err2 + e2, ref2 + r2
        worst = max(worst, math.sqrt(e2 / r2) if r2 else 0.0)
        if deltas and deltas.get(name) is not None:
            delta2 += deltas[name] ** 2
    out = {"rel_error": math.sqrt(err2 / ref2) if ref2 else 0.0, "max_layer_rel_error": worst}
    if delta2:
        out["error_vs_delta"] = math.sqrt(err2 / delta2)
    return out


def merge_adapter_to_dir(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    requantize: Optional[str] = None,
    base_model: Optional[str] = None,
    base_quantization: Optional[str] = None,
    dtype: Optional[str] = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """Load the adapter's base, merge the adapter into it and save a full-precision HF model.

    Everything is checked before the base loads: the adapter's files (config, weights, values) and
    `out_dir`, which must be absent or empty unless `overwrite`. The model is written to a temporary
    directory beside `out_dir` and moved into place at the end, so a failure leaves `out_dir` as it was.

    adapter_dir: a lorakit- or peft-written LoRA adapter for a causal LM.
    base_model: overrides `base_model_name_or_path` of the adapter config (a name
        `lorakit.models` resolves: an embedded default, a local HF directory or a .gguf file).
    base_quantization: how the base was quantized during training ("nf4", "int8"); by default
        read from the adapter's `base_quantization.json` (written by lorakit for QLoRA adapters).
        A quantized base is loaded quantized the same way and merged after dequantization, so
        the merged weights are exactly dequant(Q(W)) + ΔW, the function the adapter was trained on.
    requantize: also measure the error of re-quantizing the merged linears with this method
        (the directory still holds full-precision weights; load it with quantization=... to get
        that re-quantized model).
    dtype: weight dtype of the merged model ("float32", "bfloat16", "float16"); default: the
        quantized base's compute dtype, else float32.
    overwrite: replace a non-empty `out_dir` (checked before anything loads).
    allow_pickle: read a legacy `adapter_model.bin` (see `lorakit.io.read_weights`).
    Returns a dict of what was done: out_dir, base_model, base_quantization, merged_layers,
    dtype, seconds, and with `requantize` the figures of `requantization_error`.
    """
    from ..models import DTYPES, load_causal_lm

    start = time.perf_counter()
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config = read_config(adapter_dir)
    if config.task_type not in CAUSAL_TASKS:
        raise InputError(f"{adapter_dir}: task_type {config.task_type!r}: only causal LM adapters can be merged here")
    base = base_model or config.base_model_name_or_path
    if not base:
        raise InputError(f"{adapter_dir}: adapter_config.json has no base_model_name_or_path; pass base_model=")
    spec = read_base_quantization(adapter_dir) or {}
    method = base_quantization or spec.get("method")
    if base_quantization and base_quantization != spec.get("method"):
        spec = {}
    dtype = dtype or spec.get("compute_dtype", "float32")
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if requantize is not None:
        quantized_linear_class(requantize)  # unknown method: fail before loading anything
    options = {k: spec[k] for k in ("double_quant", "blocksize") if k in spec}
    weights = read_weights(adapter_dir, allow_pickle)
    out_dir = check_output_directory(out_dir, overwrite, [adapter_dir])

    model, tokenizer = load_causal_lm(base, dtype, quantization=method, quant_options=options)
    attach_adapter(model, config, weights, adapter_dir / WEIGHTS_NAME)
    model, deltas = merge_dequantized(model)
    stats = {"out_dir": str(out_dir), "base_model": base, "base_quantization": method,
             "merged_layers": len(deltas), "dtype": dtype}
    if requantize is not None:
        targets = [n for n in quantizable_linears(model) if n in deltas]
        stats["requantize"] = requantize
        stats.update(requantization_error(model, requantize, targets, deltas, **options))
    save_model_dir(model, out_dir, tokenizer)
    stats["seconds"] = time.perf_counter() - start
    return stats


__all__ = ["merge_adapter_to_dir", "merge_dequantized", "requantization_error"]
