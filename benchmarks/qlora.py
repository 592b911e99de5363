"""QLoRA benchmarks: lorakit's NF4 layer vs bitsandbytes' Linear4bit vs dense nn.Linear.

Part 1 (layer level): on SmolLM2-135M's linear shapes, time forward (no grad) and forward +
backward (input gradient only, the QLoRA case: the base weight is frozen) and print medians,
the lorakit / bitsandbytes ratios and bytes per parameter of both.

    python benchmarks/qlora.py                    # 1×256 and 8×256 tokens, all shapes
    python benchmarks/qlora.py --batches 1 --reps 10 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable

import torch
from torch import nn

from lorakit.quant import NF4Linear

#: (in_features, out_features) of SmolLM2-135M's linears: q/o, k/v, gate/up, down.
SMOLLM2_SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], reps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of `fn()` in seconds over `reps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bnb_linear4bit(weight: torch.Tensor, double_quant: bool = True) -> nn.Module:
    """bitsandbytes' NF4 layer (blocksize 64, fp32 compute) holding `weight` (out, in)."""
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    layer = bnb.nn.Linear4bit(
        in_features, out_features, bias=False, compute_dtype=torch.float32,
        quant_type="nf4", compress_statistics=double_quant,
    )
    layer.weight = bnb.nn.Params4bit(
        weight.detach().cpu().clone(), requires_grad=False, quant_type="nf4",
        compress_statistics=double_quant, blocksize=64,
    )
    return layer.to(weight.device)


def bnb_bytes_per_param(layer: nn.Module) -> float:
    """Bytes of a Linear4bit's packed weight and all quantization statistics per parameter."""
    qs = layer.weight.quant_state
    tensors = [layer.weight.data, qs.absmax, qs.code]
    if qs.nested:
        tensors += [qs.offset, qs.state2.absmax, qs.state2.code]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    return nbytes / (layer.in_features * layer.out_features)


def time_layer(layer: nn.Module, x: torch.Tensor, reps: int, warmup: int) -> tuple[float, float]:
    """(forward seconds without grad, forward+backward seconds for the input gradient)."""
    def forward():
        with torch.no_grad():
            layer(x)

    xg = x.clone().requires_grad_(True)
    grad = torch.randn(*x.shape[:-1], layer.out_features, device=x.device)

    def forward_backward():
        xg.grad = None
        layer(xg).backward(grad)

    return (
        median_time(forward, reps, warmup, x.device),
        median_time(forward_backward, reps, warmup, x.device),
    )


def compare_layers(
    shapes: list[tuple[int, int]], batches: list[int], seq_len: int, reps: int, warmup: int,
    device: torch.device,
) -> list[dict]:
    """Time dense, lorakit NF4 and bitsandbytes NF4 per shape and batch; one row per case."""
    rows = []
    for in_features, out_features in shapes:
        torch.manual_seed(0)
        dense = nn.Linear(in_features, out_features, bias=False).to(device).requires_grad_(False)
        layers = {
            "dense": dense,
            "lorakit": NF4Linear.from_linear(dense, double_quant=True),
            "bnb": bnb_linear4bit(dense.weight, double_quant=True),
        }
        for batch in batches:
            x = torch.randn(batch, seq_len, in_features, device=device)
            row = {"shape": f"{in_features}->{out_features}", "tokens": f"{batch}x{seq_len}"}
            for name, layer in layers.items():
                row[f"{name}_fwd"], row[f"{name}_fwdbwd"] = time_layer(layer, x, reps, warmup)
            rows.append(row)
    return rows


def print_layer_table(rows: list[dict]) -> None:
    ms = 1e3
    header = (
        f"{'shape':>10} {'tokens':>7} | {'dense fwd':>9} {'lorakit':>8} {'bnb':>8} {'lk/bnb':>6} |"
        f" {'dense f+b':>9} {'lorakit':>8} {'bnb':>8} {'lk/bnb':>6}   (ms, medians)"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['shape']:>10} {r['tokens']:>7} | {r['dense_fwd'] * ms:9.3f} {r['lorakit_fwd'] * ms:8.3f}"
            f" {r['bnb_fwd'] * ms:8.3f} {r['lorakit_fwd'] / r['bnb_fwd']:6.2f} |"
            f" {r['dense_fwdbwd'] * ms:9.3f} {r['lorakit_fwdbwd'] * ms:8.3f} {r['bnb_fwdbwd'] * ms:8.3f}"
            f" {r['lorakit_fwdbwd'] / r['bnb_fwdbwd']:6.2f}"
        )
    fwd = statistics.geometric_mean([r["lorakit_fwd"] / r["bnb_fwd"] for r in rows])
    fb = statistics.geometric_mean([r["lorakit_fwdbwd"] / r["bnb_fwdbwd"] for r in rows])
    print(f"geometric mean lorakit/bnb: forward {fwd:.2f}, forward+backward {fb:.2f}")


def print_bytes_per_param(shapes: list[tuple[int, int]], device: torch.device) -> None:
    for in_features, out_features in shapes:
        weight = torch.randn(out_features, in_features, device=device) * 0.02
        ours = NF4Linear.from_weight(weight, double_quant=True)
        theirs = bnb_linear4bit(weight, double_quant=True)
        print(
            f"bytes/param {in_features}->{out_features}: lorakit {ours.nbytes() / weight.numel():.4f}"
            f"  bnb {bnb_bytes_per_param(theirs):.4f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (rows of tokens)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per case (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print_bytes_per_param(SMOLLM2_SHAPES, device)
    rows = compare_layers(SMOLLM2_SHAPES, args.batches, args.seq_len, args.reps, args.warmup, device)
    print_layer_table(rows)


if __name__ == "__main__":
    main()
