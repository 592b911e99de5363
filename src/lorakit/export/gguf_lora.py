"""A LoRA adapter alone as a llama.cpp LoRA GGUF (`llama-cli -m base.gguf --lora adapter.gguf`).

    stats = export_gguf_lora("runs/quickstart/adapter", "out/adapter.gguf")

llama.cpp's adapter layout (what its `convert_lora_to_gguf.py` writes and `llama_adapter_lora`
reads): `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (one float for
the whole file), and per adapted matrix `<base tensor>.lora_a` holding A (r, in) and
`<base tensor>.lora_b` holding B (out, r), stored in PyTorch's row-major order (GGUF lists the
dimensions reversed: ne = [in, r] and [r, out]). llama.cpp adds scale · B A x with
scale = alpha / r, r read from each tensor, so per-module ranks and alphas (rank_pattern,
alpha_pattern, rsLoRA's alpha/√r) are folded into B here. Q and K rows get llama.cpp's rotary
permutation, which for ΔW = B A means permuting B's rows.

Parity (`check_gguf_lora`): the file is read back with `gguf.GGUFReader`; ΔW = alpha/r · B A is
rebuilt the way llama.cpp applies it, un-permuted, and compared with lorakit's own `delta_weight()`
of the adapter loaded on its base.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import gguf
import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..io.shards import check_output_file
from ..train.config import Task
from ..tuners.layers import layer_wrappers
from .gguf import UnsupportedArchitecture, check_type, llama_layout, rope_permute, write_file


class UnsupportedAdapter(InputError):
    """An adapter llama.cpp's LoRA format cannot express."""


def lora_factors(model: nn.Module, layout: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor, nn.Module]]:
    """GGUF base tensor name → (A (r, in), B (out, r) with the module's scaling folded in relative to
    alpha/r, the wrapper), for the active adapter of every LoRA-wrapped linear; alpha is `layout["alpha"]`."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layout["block_count"])
    tie = getattr(model.config, "tie_word_embeddings", False)
    out = {}
    for path, wrapper in layer_wrappers(model):
        if wrapper.active is None:
            continue
        if wrapper.embedding:
            raise UnsupportedAdapter(f"{path}: LoRA on the token embedding is not exported to GGUF yet")
        factors = wrapper.active.low_rank_factors()
        if factors is None:
            raise UnsupportedAdapter(f"{path}: {type(wrapper.active).__name__} (or DoRA) is not a plain low-rank "
                                     "update; llama.cpp's LoRA format holds plain LoRA factors only")
        lora_a, lora_b, scaling = factors
        if path == "lm_head" and tie:
            raise UnsupportedAdapter("lm_head: the base ties it to the token embedding, which llama.cpp stores "
                                     "once; an adapter on it cannot be applied there")
        name = names.get_name(path)
        if name is None:
            raise UnsupportedArchitecture(f"{path}: no llama.cpp tensor for this module")
        rank = lora_a.shape[0]
        a = lora_a.detach().float()
        b = lora_b.detach().float() * (scaling / (layout["alpha"] / rank))
        if ".attn_q" in name:
            b = rope_permute(b, layout["head_count"])
        elif ".attn_k" in name:
            b = rope_permute(b, layout["head_count_kv"])
        out[f"{name}.weight"] = (a, b, wrapper)
    if not out:
        raise UnsupportedAdapter("no LoRA-adapted linear layer to export")
    return out


def write_gguf_lora(model: nn.Module, alpha: float, out: str | os.PathLike, gguf_type: str = "f32",
                    name: Optional[str] = None) -> Path:
    """Write the active LoRA adapter of `model` (a Llama-family causal LM) as a llama.cpp LoRA GGUF."""
    check_type(gguf_type)
    layout = {**llama_layout(model.config), "alpha": float(alpha)}
    tensors = {base + suffix: value for base, (a, b, _) in lora_factors(model, layout).items()
               for suffix, value in ((".lora_a", a), (".lora_b", b))}

    def metadata(writer) -> None:
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, layout["alpha"])

    return write_file(out, gguf.GGUFType.ADAPTER, name, gguf_type, metadata, tensors)


def rope_unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `rope_permute` (llama.cpp's interleaved rotary rows back to HF's order)."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@torch.no_grad()
def check_gguf_lora(model: nn.Module, path: str | os.PathLike) -> dict:
    """Read `path` with `gguf.GGUFReader`, rebuild each ΔW as llama.cpp applies it (alpha / r · B A,
    r from the tensor) and compare with the active adapter's `delta_weight()` in `model`.

    Returns {"tensors", "alpha", "max_abs_delta_diff", "max_rel_delta_diff"} (relative to ‖ΔW‖_max
    per matrix). Raises UnsupportedAdapter if the file's metadata or shapes are not llama.cpp's.
    """
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    if fields.get("general.type") != "adapter" or fields.get(gguf.Keys.Adapter.TYPE) != "lora":
        raise UnsupportedAdapter(f"{path}: not a LoRA adapter GGUF (general.type {fields.get('general.type')!r})")
    alpha = float(fields[gguf.Keys.Adapter.LORA_ALPHA])
    layout = llama_layout(model.config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layout["block_count"])
    tensors = {t.name: t for t in reader.tensors}
    worst_abs = worst_rel = 0.0
    pairs = 0
    for path_name, wrapper in layer_wrappers(model):
        if wrapper.active is None:
            continue
        base = f"{names.get_name(path_name)}.weight"
        a_t, b_t = tensors.pop(base + ".lora_a"), tensors.pop(base + ".lora_b")
        out_f, in_f = wrapper.base.out_features, wrapper.base.in_features
        rank = int(a_t.shape[1])
        if (int(a_t.shape[0]), int(b_t.shape[1]), int(b_t.shape[0])) != (in_f, out_f, rank):  # llama.cpp's checks
            raise UnsupportedAdapter(f"{base}: GGUF shapes a {list(a_t.shape)}, b {list(b_t.shape)} do not fit "
                                     f"a ({out_f}, {in_f}) weight")
        a, b = _read(a_t), _read(b_t)
        if ".attn_q." in base:
            b = rope_unpermute(b, layout["head_count"])
        elif ".attn_k." in base:
            b = rope_unpermute(b, layout["head_count_kv"])
        rebuilt = torch.from_numpy((alpha / rank) * (b.astype(np.float64) @ a.astype(np.float64)))
        reference = wrapper.active.delta_weight(torch.float32).double()
        diff = float((rebuilt - reference).abs().max())
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(reference.abs().max()), 1e-30))
        pairs += 1
    if tensors:
        raise UnsupportedAdapter(f"{path}: tensors without an adapted module: {', '.join(list(tensors)[:5])}")
    return {"tensors": pairs, "alpha": alpha, "max_abs_delta_diff": worst_abs, "max_rel_delta_diff": worst_rel}


def _read(tensor) -> np.ndarray:
    """A GGUFReader tensor as float32 in PyTorch's (rows, cols) order."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(data, np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))


def export_gguf_lora(adapter_dir: str | os.PathLike, out: str | os.PathLike, base: Optional[str] = None,
                     gguf_type: str = "f32", check: bool = True, overwrite: bool = False) -> dict:
    """Write the LoRA adapter in `adapter_dir` as a llama.cpp LoRA GGUF; with `check`, the parity figures."""
    from ..config import LoraConfig
    from ..inference import load_trained
    from ..io import check_adapter_dir, read_config

    start = time.perf_counter()
    adapter_dir = check_adapter_dir(adapter_dir, str(adapter_dir), UnsupportedAdapter)
    check_output_file(out, overwrite)
    config = read_config(adapter_dir)
    if not isinstance(config, LoraConfig) or config.use_dora:
        raise UnsupportedAdapter(f"{adapter_dir}: peft_type {config.PEFT_TYPE}"
                                 f"{' with DoRA' if getattr(config, 'use_dora', False) else ''}: llama.cpp's LoRA "
                                 "format holds plain LoRA factors only (merge it and use `lorakit export gguf`)")
    if config.modules_to_save:
        raise UnsupportedAdapter(f"{adapter_dir}: modules_to_save {config.modules_to_save} are full trained copies; "
                                 "llama.cpp's LoRA format cannot hold them (merge and use `lorakit export gguf`)")
    trained = load_trained(adapter_dir, base)
    if trained.task is not Task.SFT:
        raise UnsupportedArchitecture(f"{adapter_dir}: a {trained.task} adapter; llama.cpp LoRA needs a causal LM")
    path = write_gguf_lora(trained.model, config.lora_alpha, out, gguf_type, name=adapter_dir.name)
    stats = {"out": str(path), "type": gguf_type, "bytes": path.stat().st_size}
    if check:
        stats.update({f"parity_{k}": v for k, v in check_gguf_lora(trained.model, path).items()})
    stats["seconds"] = time.perf_counter() - start
    return stats
