"""A merged model as ONNX (`torch.onnx.export`, dynamo), checked with onnxruntime.

    stats = export_onnx("runs/quickstart/adapter", "out/onnx")      # model.onnx + tokenizer + onnx_export.json

Why torch.onnx's dynamo exporter and not optimum: optimum's ONNX exporter (optimum-onnx) pins
transformers < 4.58, which this project cannot take; `torch.onnx.export(..., dynamo=True)` ships
with torch, follows transformers' cache classes through `torch.export`, and needs only `onnxscript`.

A causal LM is exported with its key/value cache as plain tensors, so one graph serves the prompt
(empty cache) and every decoding step:

    inputs   input_ids (batch, seq) int64, attention_mask (batch, past + seq) int64,
             position_ids (batch, seq) int64, past.{i}.key / past.{i}.value (batch, kv_heads, past, head_dim)
    outputs  logits (batch, seq, vocab), present.{i}.key / present.{i}.value (batch, kv_heads, past + seq, head_dim)

A sequence classifier takes input_ids, attention_mask (and token_type_ids when the model has
them) and returns logits (batch, labels). `onnx_export.json` says which, with the input and output
names, so `OnnxModel` (export/onnx_runtime.py) and other runtimes need nothing else.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import InputError
from ..io.shards import check_output_directory, staged_directory
from ..train.config import Task
from .onnx_runtime import MANIFEST, OnnxModel, OnnxParity, check_onnx

ONNX_FILE = "model.onnx"


class _CausalWithCache(nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), caches as flat tensors."""

    def __init__(self, model: nn.Module, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        present = []
        for layer in out.cache.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def cache_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head_dim) of a decoder's attention cache."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, kv_heads, head_dim


def _export(module: nn.Module, args: tuple, names_in: list[str], names_out: list[str], dynamic: dict,
            path: Path) -> None:
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" x4
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic, input_names=names_in,
                                        output_names=names_out, verbose=False)
    finally:
        registration.setLevel(level)
    program.save(str(path))


def write_onnx(model: nn.Module, tokenizer, out_dir: str | os.PathLike, task: Task) -> Path:
    """Export `model` (a plain causal LM for Task.SFT, a sequence classifier for Task.CLASSIFICATION) into
    `out_dir` (replaced whole) with its tokenizer, config and `onnx_export.json`."""
    from torch.export import Dim

    model = model.eval()
    with staged_directory(out_dir) as tmp:
        if task is Task.SFT:
            layers, kv_heads, head_dim = cache_shape(model.config)
            batch, seq, past_len = Dim("batch"), Dim("sequence"), Dim("past_sequence")
            past_names = [f"past.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
            names_in = ["input_ids", "attention_mask", "position_ids", *past_names]
            names_out = ["logits", *[n.replace("past.", "present.") for n in past_names]]
            b, s, p = 2, 3, 4
            args = (torch.ones(b, s, dtype=torch.long), torch.ones(b, p + s, dtype=torch.long),
                    torch.arange(p, p + s).expand(b, s).contiguous(),
                    *[torch.zeros(b, kv_heads, p, head_dim, dtype=next(model.parameters()).dtype)
                      for _ in past_names])
            dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: Dim("total_sequence")},
                       "position_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past_len} for _ in past_names)}
            _export(_CausalWithCache(model, layers), args, names_in, names_out, dynamic, tmp / ONNX_FILE)
            manifest = {"task": "causal-lm", "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}
        elif task is Task.CLASSIFICATION:
            names_in = ["input_ids", "attention_mask"]
            if "token_type_ids" in tokenizer.model_input_names:
                names_in.append("token_type_ids")
            batch, seq = Dim("batch"), Dim("sequence")
            args = tuple(torch.ones(2, 5, dtype=torch.long) for _ in names_in)
            dynamic = {"inputs": tuple({0: batch, 1: seq} for _ in names_in)}
            names_out = ["logits"]
            _export(_Classifier(model, names_in), args, names_in, names_out, dynamic, tmp / ONNX_FILE)
            manifest = {"task": "sequence-classification",
                        "labels": [model.config.id2label[i] for i in range(model.config.num_labels)]}
        else:
            raise InputError(f"ONNX export: task {task!r} is not supported")
        manifest.update({"inputs": names_in, "outputs": names_out, "torch": torch.__version__})
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None and task is Task.SFT:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Path(out_dir)


class _Classifier(nn.Module):
    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs))).logits


def export_onnx(source: str, out_dir: str | os.PathLike, base: Optional[str] = None, check: bool = True,
                overwrite: bool = False) -> dict:
    """Merge `source` (adapter dir or model) and export it to ONNX; with `check`, the parity figures
    against onnxruntime (`check_onnx`)."""
    from ..inference import load_merged

    start = time.perf_counter()
    check_output_directory(out_dir, overwrite, [Path(source).expanduser()])
    merged = load_merged(source, base)
    path = write_onnx(merged.model, merged.tokenizer, out_dir, merged.task)
    stats = {"out": str(path), "task": merged.task.value, "bytes": sum(f.stat().st_size for f in path.iterdir())}
    if check:
        parity: OnnxParity = check_onnx(merged.model, merged.tokenizer, OnnxModel(path))
        stats.update({f"parity_{k}": v for k, v in asdict(parity).items() if v is not None})
    stats["seconds"] = time.perf_counter() - start
    return stats
