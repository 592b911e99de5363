"""Structured pruning of Llama-family models: whole MLP channels, attention heads and layers removed,
so the result is a smaller dense model (fewer parameters, faster matmuls) that transformers loads.

    model = prune_structured(model, mlp=0.5, heads=1/3, calibration=batches)   # a new, smaller model

- MLP channels: channel j of a layer is row j of gate_proj and up_proj and column j of down_proj.
  Each layer keeps the same number (the config has one `intermediate_size`), rounded to a multiple
  of 32 where it can (GGUF q8_0 blocks, SIMD widths), chosen per layer by importance.
- Attention heads: with grouped-query attention each key/value head serves a group of query heads;
  every group keeps the same number of query heads (the config needs heads / kv_heads whole), and
  `head_dim` is written explicitly since heads × head_dim no longer equals the hidden size.
- Layers: `keep_layers` (indices) rebuilds the stack from those decoder layers, in order.

Importance: with `calibration` (an iterable of batches: input_ids, attention_mask), the activation-
aware score of Wanda (Sun et al., 2023) restricted to whole structures: ‖X_j‖₂ over the calibration
tokens times the norm of the weights that read it (down_proj column j; o_proj's columns of head h).
Without it, weight magnitudes: ‖gate_j‖·‖up_j‖·‖down_:,j‖ and ‖q_h‖·‖o_:,h‖.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import InputError


def _layers(model: nn.Module) -> nn.ModuleList:
    if getattr(model.config, "model_type", None) != "llama":
        raise InputError(f"structured pruning supports Llama-family models (model_type 'llama'); "
                         f"{getattr(model.config, 'model_type', None)!r} is not supported yet")
    return model.model.layers


def evenly_spaced_layers(total: int, keep: int) -> list[int]:
    """`keep` of `total` layer indices spread evenly, the first and the last always among them."""
    if not 1 <= keep <= total:
        raise InputError(f"keep {keep} of {total} layers: expected 1..{total}")
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def round_kept(total: int, fraction_removed: float, multiple: int = 32) -> int:
    """How many of `total` units stay: (1 − fraction) · total, rounded to a multiple of `multiple` when
    `total` is large enough (≥ 16 multiples) for that to move the fraction by little."""
    kept = max(1, round((1.0 - fraction_removed) * total))
    if fraction_removed > 0 and total >= 16 * multiple and total % multiple == 0:
        kept = min(total - multiple, max(multiple, round(kept / multiple) * multiple))
    return min(kept, total)


@torch.no_grad()
def calibration_norms(model: nn.Module, batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """‖X‖₂ per input feature of every layer's down_proj and o_proj over the calibration tokens
    (padding excluded): {"layers.{i}.down": (intermediate,), "layers.{i}.o": (heads·head_dim,)}."""
    sums: dict[str, torch.Tensor] = {}
    mask_holder: dict[str, torch.Tensor] = {}
    hooks = []

    def record(key):
        def hook(module, inputs):
            x = inputs[0].detach().float()  # (batch, seq, features)
            mask = mask_holder["mask"].bool()
            x = x[mask] if mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            sums[key] = sums.get(key, 0) + x.pow(2).sum(0)
        return hook

    for i, layer in enumerate(_layers(model)):
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(record(f"layers.{i}.down")))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(record(f"layers.{i}.o")))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            mask_holder["mask"] = mask if mask is not None else torch.ones_like(batch["input_ids"])
            model(input_ids=batch["input_ids"], attention_mask=mask_holder["mask"])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not sums:
        raise InputError("calibration data gave no batch")
    return {k: v.sqrt() for k, v in sums.items()}


def calibration_batches(tokenizer, data: str, max_samples: int = 64, max_length: int = 256) -> list[dict]:
    """Padded batches of the first `max_samples` rows of `data` (a chat or text file, or bundled:NAME)."""
    from ..data.batching import grouped_batches
    from ..data.formats import Dataset, load_dataset
    from ..data.tokenize import encode_dataset
    from ..data.io import data_path

    dataset = load_dataset(data_path(data, "--calibration"))
    if dataset.kind == "classification":
        raise InputError(f"--calibration {data}: needs chat or text rows, not classification data")
    rows = Dataset(dataset.source, dataset.format, dataset.kind, dataset.rows[:max_samples])
    examples, _ = encode_dataset(tokenizer, rows, max_length)
    return list(grouped_batches(examples, 2048, tokenizer.pad_token_id, 0))


def _mlp_scores(layer, norms: Optional[torch.Tensor]) -> torch.Tensor:
    down = layer.mlp.down_proj.weight.float()  # (hidden, intermediate)
    if norms is not None:
        return norms * down.norm(dim=0)
    gate, up = layer.mlp.gate_proj.weight.float(), layer.mlp.up_proj.weight.float()
    return gate.norm(dim=1) * up.norm(dim=1) * down.norm(dim=0)


def _head_scores(layer, heads: int, head_dim: int, norms: Optional[torch.Tensor]) -> torch.Tensor:
    o = layer.self_attn.o_proj.weight.float().reshape(-1, heads, head_dim)  # (hidden, heads, head_dim)
    o_norm = o.pow(2).sum(dim=(0, 2)).sqrt()
    if norms is not None:
        return norms.reshape(heads, head_dim).norm(dim=1) * o_norm
    q = layer.self_attn.q_proj.weight.float().reshape(heads, head_dim, -1)
    return q.pow(2).sum(dim=(1, 2)).sqrt() * o_norm


@torch.no_grad()
def prune_structured(model: nn.Module, mlp: float = 0.0, heads: float = 0.0,
                     keep_layers: Optional[list[int]] = None,
                     calibration: Optional[Iterable[dict]] = None) -> nn.Module:
    """A new, smaller Llama-family model: `mlp` of the MLP channels and `heads` of the query heads
    removed in every layer (fractions), and only the decoder layers `keep_layers` (all if None)."""
    from transformers import AutoModelForCausalLM

    layers = _layers(model)
    config = model.config
    for name, value in (("mlp", mlp), ("heads", heads)):
        if not 0.0 <= value < 1.0:
            raise InputError(f"{name} {value}: expected a fraction in [0, 1)")
    keep_layers = list(range(len(layers))) if keep_layers is None else sorted(set(keep_layers))
    if not keep_layers or keep_layers[0] < 0 or keep_layers[-1] >= len(layers):
        raise InputError(f"keep_layers {keep_layers}: expected indices in 0..{len(layers) - 1}")
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    group = n_heads // n_kv
    keep_mlp = round_kept(config.intermediate_size, mlp)
    keep_group = max(1, round((1.0 - heads) * group))
    norms = calibration_norms(model, calibration) if calibration is not None else {}

    state = {}
    for new_index, old_index in enumerate(keep_layers):
        layer = layers[old_index]
        channels = _mlp_scores(layer, norms.get(f"layers.{old_index}.down")).topk(keep_mlp).indices.sort().values
        scores = _head_scores(layer, n_heads, head_dim, norms.get(f"layers.{old_index}.o")).reshape(n_kv, group)
        kept_heads = (scores.topk(keep_group, dim=1).indices.sort(dim=1).values
                      + torch.arange(n_kv)[:, None] * group).reshape(-1)
        rows = (kept_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        prefix = f"model.layers.{new_index}."
        for key, value in layer.state_dict().items():
            if key in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                value = value[channels]
            elif key == "mlp.down_proj.weight":
                value = value[:, channels]
            elif key == "self_attn.q_proj.weight":
                value = value[rows]
            elif key == "self_attn.o_proj.weight":
                value = value[:, rows]
            state[prefix + key] = value.clone()
    for key, value in model.state_dict().items():
        if not key.startswith("model.layers."):
            state[key] = value.clone()

    new_config = copy.deepcopy(config)
    new_config.intermediate_size = keep_mlp
    new_config.num_attention_heads = keep_group * n_kv
    new_config.head_dim = head_dim
    new_config.num_hidden_layers = len(keep_layers)
    if isinstance(getattr(new_config, "layer_types", None), list):
        new_config.layer_types = [new_config.layer_types[i] for i in keep_layers]
    dtype = next(model.parameters()).dtype
    pruned = AutoModelForCausalLM.from_config(new_config, dtype=dtype)
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (new_config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"structured pruning built an inconsistent state: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if new_config.tie_word_embeddings:
        pruned.tie_weights()
    pruned.generation_config = copy.deepcopy(model.generation_config)
    return pruned.eval()


def linear_parameters(model: nn.Module) -> int:
    """Weights in the decoder layers' linears (what structured pruning removes)."""
    return sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and ".layers." in f".{n}")
