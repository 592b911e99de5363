"""Post-training dynamic int8 quantization of a merged model's linear layers, for CPU inference.

    stats = compress_int8("runs/quickstart/adapter", "out/int8")        # kernel="auto"

Every `nn.Linear` but the output head becomes an `Int8Linear` (int8 codes, one absmax scale per
output row; embeddings, norms and the head stay float32), saved as a lorakit int8 directory that
`lorakit eval`, `generate` and `serve` load (see `lorakit.quant.saved`).

Two kernels run those layers (`lorakit.quant.int8`): lorakit's "dequant" (float matmul over the
int8 codes: weight-only int8, the most exact) and torch.ao's dynamic int8 "fbgemm" kernel
(activations quantized per call too). `kernel="auto"` times greedy decoding (a causal LM) or a
forward pass (a classifier) with both on this machine and records the faster one in the
directory; loaders switch to it. benchmarks/compression.py measured both on SmolLM2 (README).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from torch import nn

from ..errors import InputError
from ..io.shards import check_output_directory
from ..quant import quantize
from ..quant.int8 import Int8Linear
from ..quant.saved import save_int8_dir, use_int8_kernel
from ..train.config import Task
from .measure import decode_tokens_per_second, dir_bytes, forward_seconds, quality

KERNELS = ("auto",) + Int8Linear.KERNELS


def kernel_speeds(model: nn.Module, tokenizer, task: Task) -> dict[str, float]:
    """Speed of each int8 kernel on `model` (already int8): tokens/s (causal LM) or forwards/s."""
    speeds = {}
    for kernel in Int8Linear.KERNELS:
        use_int8_kernel(model, kernel)
        if task is Task.SFT:
            speeds[kernel] = decode_tokens_per_second(model, tokenizer, new_tokens=16, repeats=3)
        else:
            batch = tokenizer(["Where is my refund for order 1234?"] * 8, return_tensors="pt", padding=True)
            speeds[kernel] = 1.0 / forward_seconds(model, dict(batch))
    return speeds


def compress_int8(source: str, out: str | os.PathLike, kernel: str = "auto", base: Optional[str] = None,
                  eval_data: Optional[str] = None, max_samples: Optional[int] = None, overwrite: bool = False) -> dict:
    """Merge `source` (adapter dir or model), quantize its linears to int8 and save to `out`.

    With `eval_data`, also the held-out metrics before and after (`lorakit eval`'s).
    Returns a dict: out, layers, kernel, kernel speeds (with "auto"), bytes, fp32_weight_bytes, metrics.
    """
    from ..inference import load_merged
    from .measure import weight_bytes

    if kernel not in KERNELS:
        raise InputError(f"--kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
    check_output_directory(out, overwrite, [Path(source).expanduser()])
    start = time.perf_counter()
    trained = load_merged(source, base)
    model, tokenizer = trained.model, trained.tokenizer
    stats: dict = {"out": str(out), "fp32_weight_bytes": weight_bytes(model)}
    if eval_data:
        stats["before"] = quality(model, tokenizer, eval_data, trained.labels, max_samples)
    stats["layers"] = len(quantize(model, method="int8"))
    if kernel == "auto":
        speeds = kernel_speeds(model, tokenizer, trained.task)
        stats["kernel_speeds"] = {k: round(v, 2) for k, v in speeds.items()}
        kernel = max(speeds, key=speeds.get)
    use_int8_kernel(model, kernel)
    stats["kernel"] = kernel
    if eval_data:
        stats["after"] = quality(model, tokenizer, eval_data, trained.labels, max_samples)
    save_int8_dir(model, out, tokenizer, kernel, extra={"source": str(source)})
    stats["bytes"] = dir_bytes(out)
    stats["seconds"] = time.perf_counter() - start
    return stats
