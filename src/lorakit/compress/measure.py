"""What compression is judged by: bytes on disk, greedy decoding speed on the CPU, held-out quality.

Shared by the compress commands (`--eval`), the iterative pruner (quality per step) and
benchmarks/compression.py, so every row of the README's table is measured the same way.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

DECODE_PROMPT = "Lunch with Ana on Friday at noon."


def dir_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a file, or of every file under a directory."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and persistent buffers in memory (tied tensors once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def decode_tokens_per_second(model: nn.Module, tokenizer, new_tokens: int = 32, repeats: int = 3,
                             prompt: str = DECODE_PROMPT) -> float:
    """Median tokens/s of greedy generation of exactly `new_tokens` tokens after a chat prompt
    (one row, key/value cache, prefill included), after one warm-up run."""
    from ..data.tokenize import render_ids

    ids = torch.tensor([render_ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)])
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    model.generate(**kwargs, max_new_tokens=2, min_new_tokens=2)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(**kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        rates.append(new_tokens / (time.perf_counter() - start))
    return sorted(rates)[len(rates) // 2]


@torch.no_grad()
def forward_seconds(model: nn.Module, batch: dict, repeats: int = 5) -> float:
    """Median seconds of one forward pass over `batch` (a classifier's speed measure)."""
    model(**batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def quality(model: nn.Module, tokenizer, data: str, labels: Optional[list] = None,
            max_samples: Optional[int] = None, max_new_tokens: int = 48) -> dict:
    """Held-out metrics of `lorakit eval` (loss, perplexity, exact match or accuracy) on `data`
    (a file or bundled:NAME)."""
    from ..data.formats import load_dataset
    from ..train.evaluate import evaluate_dataset
    from ..data.io import data_path

    dataset = load_dataset(data_path(data, "--eval"))
    result = evaluate_dataset(model, tokenizer, dataset, labels=labels, max_samples=max_samples,
                              max_new_tokens=max_new_tokens)
    return result.metrics()
