"""A whole model directory written from a model in memory: config, generation config, tokenizer and
safetensors weights, staged beside the target and renamed into place (`shards.staged_directory`).

    save_model_dir(model, "out/merged", tokenizer)                      # transformers loads it back

Used by merging (`lorakit merge`), compression (pruned, int8 and distilled models) and the GGUF
cache of `lorakit.models`. It also writes models `save_pretrained` refuses (loaded from GGUF) and
custom state dicts (the int8 format keeps codes and scales under its own file name, see
`lorakit.quant.saved`). Callers check the output path first (`shards.check_output_directory`),
before any heavy work.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .shards import SAFETENSORS_FILE, ShardWriter, staged_directory

DEFAULT_MAX_SHARD_BYTES = 2 * 1024 ** 3


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors to save: contiguous CPU tensors; a tied output head left out (transformers re-ties it
    on load); any other storage shared between keys cloned (safetensors refuses shared storage)."""
    state = model.state_dict()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and head is not None:
        key = next((f"{n}.weight" for n, m in model.named_modules() if m is head), None)
        if key in state and any(t.data_ptr() == state[key].data_ptr() for k, t in state.items() if k != key):
            state.pop(key)
    out, seen = {}, set()
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        where = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[key] = t.clone() if where is not None and where in seen else t
        seen.add(where)
    return out


def save_model_dir(model: nn.Module, out: str | Path, tokenizer=None, state: Optional[dict] = None,
                   config_update: Optional[dict] = None, weights_name: str = SAFETENSORS_FILE,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                   extra_files: Optional[dict[str, str]] = None) -> Path:
    """Write `model` as a HF directory `out` (replaced whole if it exists): config.json (with
    `config_update` merged in), generation_config.json, the tokenizer, the weights (`state`, default
    `plain_state_dict(model)`) as `weights_name` or its shards, and `extra_files` (name → text)."""
    out = Path(out).expanduser()
    state = plain_state_dict(model) if state is None else state
    config = model.config
    config.architectures = [type(model).__name__]  # as save_pretrained does: loaders pick the head class by it
    with staged_directory(out) as staging:
        saved_quantization = getattr(config, "quantization_config", None)
        if saved_quantization is not None:  # a model loaded from GGUF: its weights are plain now
            del config.quantization_config
        try:
            config.save_pretrained(staging)
        finally:
            if saved_quantization is not None:
                config.quantization_config = saved_quantization
        if config_update:
            data = json.loads((staging / "config.json").read_text())
            data.update(config_update)
            (staging / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        writer = ShardWriter(staging, [(k, tuple(t.shape), t.dtype) for k, t in state.items()], max_shard_bytes,
                             name=weights_name)
        for key, tensor in state.items():
            writer.write(key, tensor)
        writer.close()
    return out
