"""QLoRA benchmarks: lorakit's NF4 layer vs bitsandbytes' Linear4bit vs dense nn.Linear, and
QLoRA vs LoRA on the embedded SmolLM2-135M.

Part 1 (layers): on SmolLM2-135M's linear shapes, time forward (no grad) and forward +
backward (input gradient only, the QLoRA case: the base weight is frozen) and print medians,
the lorakit / bitsandbytes ratios and bytes per parameter of both.

Part 2 (load): peak RSS of loading SmolLM2-135M (model + tokenizer) in full precision, loading
then quantizing to NF4, and quantizing layer by layer while loading (`load_causal_lm(...,
quantization="nf4")`); each in a fresh subprocess, after the load and after one forward pass
(which touches every weight: a full-precision load maps the safetensors file lazily).

Part 3 (train): one training step (forward, backward, AdamW) of LoRA r=16 on all linears over
a fixed 4×128-token batch, with a full-precision base, an NF4 base, and an NF4 base with
gradient checkpointing; median seconds per step and peak RSS, each in a fresh subprocess.

    python benchmarks/qlora.py                    # all parts
    python benchmarks/qlora.py --part layers --batches 1 --reps 10 --device cuda
    python benchmarks/qlora.py --part load train --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
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


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


LOAD_MODES = ("full", "quantize-after-load", "layer-by-layer")
TRAIN_MODES = ("lora", "qlora", "qlora+checkpointing")


def load_worker(mode: str) -> dict:
    """(in a fresh process) Load SmolLM2-135M one way; peak RSS after loading and after a forward."""
    from lorakit.models import load_causal_lm
    from lorakit.quant import quantize

    imported = _peak_rss_mib()
    start = time.perf_counter()
    if mode == "layer-by-layer":
        model, _ = load_causal_lm(quantization="nf4")
    else:
        model, _ = load_causal_lm()
        if mode == "quantize-after-load":
            quantize(model, method="nf4")
    seconds = time.perf_counter() - start
    loaded = _peak_rss_mib()
    with torch.no_grad():
        model(torch.randint(0, 1000, (1, 64)))
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {"mode": mode, "imported_mib": imported, "after_load_mib": loaded,
            "after_forward_mib": _peak_rss_mib(), "load_s": seconds, "model_mib": nbytes / 2**20}


def train_worker(mode: str, steps: int, batch: int = 4, seq_len: int = 128) -> dict:
    """(in a fresh process) LoRA r=16 on all linears of SmolLM2-135M; seconds per step and peak RSS."""
    import lorakit
    from lorakit.models import load_causal_lm

    model, _ = load_causal_lm(quantization=None if mode == "lora" else "nf4")
    loaded = _peak_rss_mib()
    lorakit.inject(model, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    if mode == "qlora+checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    losses = []

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))

    seconds = median_time(step, reps=steps, warmup=1, device=torch.device("cpu"))
    return {"mode": mode, "after_load_mib": loaded, "peak_mib": _peak_rss_mib(), "step_s": seconds,
            "tokens": batch * seq_len, "first_loss": losses[0], "last_loss": losses[-1]}


def run_worker(args: list[str], threads: int | None) -> dict:
    """Run this script with `--worker ...` in a fresh interpreter; returns the JSON it prints last."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *args] + (["--threads", str(threads)] if threads else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_load_table(rows: list[dict]) -> None:
    print("peak RSS loading SmolLM2-135M-Instruct (fp32 weights, + tokenizer), fresh process each (MiB)")
    header = f"{'mode':>20} | {'imports':>7} {'loaded':>7} {'+forward':>8} | {'model':>6} {'load s':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['mode']:>20} | {r['imported_mib']:7.0f} {r['after_load_mib']:7.0f} {r['after_forward_mib']:8.0f} |"
              f" {r['model_mib']:6.0f} {r['load_s']:6.1f}")


def print_train_table(rows: list[dict]) -> None:
    print(f"training step, SmolLM2-135M-Instruct, LoRA r=16 all-linear, {rows[0]['tokens']} tokens/step, "
          "AdamW; fresh process each")
    header = f"{'mode':>20} | {'s/step':>7} {'vs lora':>7} | {'RSS loaded':>10} {'RSS peak':>9} (MiB) | loss first→last"
    print(header)
    print("-" * len(header))
    base = rows[0]["step_s"]
    for r in rows:
        print(f"{r['mode']:>20} | {r['step_s']:7.2f} {r['step_s'] / base:7.2f} | {r['after_load_mib']:10.0f}"
              f" {r['peak_mib']:9.0f}       | {r['first_loss']:.3f}→{r['last_loss']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=["layers", "load", "train"], default=["layers", "load", "train"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (rows of tokens)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per case (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps per mode (part train)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.worker:
        kind, mode, *rest = args.worker
        result = load_worker(mode) if kind == "load" else train_worker(mode, int(rest[0]))
        print(json.dumps(result))
        return
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    if "layers" in args.part:
        print_bytes_per_param(SMOLLM2_SHAPES, device)
        rows = compare_layers(SMOLLM2_SHAPES, args.batches, args.seq_len, args.reps, args.warmup, device)
        print_layer_table(rows)
    if "load" in args.part:
        print_load_table([run_worker(["load", m], args.threads) for m in LOAD_MODES])
    if "train" in args.part:
        print_train_table([run_worker(["train", m, str(args.train_steps)], args.threads) for m in TRAIN_MODES])


if __name__ == "__main__":
    main()
