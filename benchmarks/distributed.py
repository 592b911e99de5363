"""Data-parallel training: what torchrun gives on this machine, and what it would cost on GPUs (issue #16).

    python benchmarks/distributed.py [--steps 8] [--repeats 2] [--max-tokens 512] [--quick]

1. Throughput on SmolLM2-135M-Instruct (fp32, LoRA r=16 on every linear layer but the head, the bundled
   quickstart data, length-grouped batches of `--max-tokens`): the same global batch per step trained by
      1 process × 2 threads     `lorakit train CONFIG train.grad_accum=2`            (OMP_NUM_THREADS=2)
      2 processes × 1 thread    `torchrun --nproc-per-node 2 -m lorakit train CONFIG`  (OMP_NUM_THREADS=1, gloo, DDP)
   Each run is a fresh job; runs are interleaved and the order alternates each round. Real (non-padding)
   tokens/s over steps 2..S from the run's metrics.jsonl; the job's wall time (load included) apart. The two
   set-ups take the same rows per step, so their losses must agree (printed).
2. Communication per optimizer step: the bytes DDP all-reduces (the trainable gradients) for this LoRA and for
   full fine-tuning of the same model, and a gloo all-reduce of each size timed here between 2 processes.
3. A paper estimate for a 7B Llama (Llama-2-7B shapes) on 8 GPUs (one node, NVLink) and 64 GPUs (8 nodes,
   InfiniBand): ring all-reduce time of the gradients against the compute of one step, LoRA r=16 on every
   linear layer vs full fine-tuning. Assumptions are arguments and are printed with the result.

Workers run with OMP_WAIT_POLICY=PASSIVE unless the environment sets it (see sft_throughput.py). On a
shared machine, run it under the heavy lock: `flock /tmp/lorakit-heavy.lock python benchmarks/distributed.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import paired_ratio  # noqa: E402

MODEL = "smollm2-135m-instruct"
SETUPS = {"1 proc x 2 threads": (1, 2), "2 procs x 1 thread": (2, 1)}


def run_config(directory: Path, steps: int, max_tokens: int) -> Path:
    config = {
        "model": {"name": MODEL},
        "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "exclude_modules": ["lm_head"]},
        "data": {"train": "bundled:quickstart_train", "max_length": 256, "max_tokens": max_tokens},
        "train": {"steps": steps, "lr": 2e-4, "schedule": "constant", "seed": 0},
        "output_dir": str(directory / "out"),
    }
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_once(config: Path, procs: int, threads: int) -> dict:
    """One fresh job; returns tokens/s and seconds per step over steps 2..S, the losses and the job's wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = config.parent / "out"
    if procs == 1:
        cmd = [sys.executable, "-m", "lorakit", "train", str(config), "train.grad_accum=2"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               "-m", "lorakit", "train", str(config)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    tokens = [r["tokens_per_s"] * r["elapsed_s"] for r in train]
    rate = (tokens[-1] - tokens[0]) / (train[-1]["elapsed_s"] - train[0]["elapsed_s"])
    step_s = (train[-1]["elapsed_s"] - train[0]["elapsed_s"]) / (len(train) - 1)
    return {"tokens_per_s": rate, "step_s": step_s, "losses": [r["loss"] for r in train], "wall": wall}


def throughput(steps: int, repeats: int, max_tokens: int) -> tuple[dict, dict]:
    samples: dict[str, list[dict]] = {name: [] for name in SETUPS}
    names = list(SETUPS)
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            with tempfile.TemporaryDirectory(prefix="lorakit-dist-") as d:
                config = run_config(Path(d), steps, max_tokens)
                result = train_once(config, *SETUPS[name])
            samples[name].append(result)
            print(f"  round {i + 1}: {name}: {result['tokens_per_s']:.1f} tok/s, job {result['wall']:.0f} s",
                  flush=True)
    return samples, {name: statistics.median(s["tokens_per_s"] for s in runs) for name, runs in samples.items()}


_ALLREDUCE = textwrap.dedent("""
    import json, statistics, sys, time
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    out = {}
    for label, numel, reps in json.loads(sys.argv[1]):
        t = torch.ones(numel)
        dist.all_reduce(t)  # warm-up: connections, buffers
        times = []
        for _ in range(reps):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - start)
        out[label] = statistics.median(times)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(out))
    dist.destroy_process_group()
""")


def gloo_allreduce_seconds(sizes: dict[str, int], reps: int) -> dict[str, float]:
    """Median seconds of one fp32 all-reduce of each size between 2 processes on this machine (gloo, loopback)."""
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "allreduce.py"
        script.write_text(_ALLREDUCE)
        plan = json.dumps([[label, numel, reps] for label, numel in sizes.items()])
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                               str(script), plan], env=dict(os.environ, OMP_NUM_THREADS="1"),
                              capture_output=True, text=True, timeout=900)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"all-reduce timing failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def smollm2_counts() -> tuple[int, int]:
    """(trainable parameters with LoRA r=16 on every linear but the head, all parameters) of SmolLM2-135M."""
    import torch

    import lorakit
    from lorakit.models import load_causal_lm

    torch.set_num_threads(1)
    model, _ = load_causal_lm(MODEL)
    total = sum(p.numel() for p in model.parameters())
    lorakit.inject(model, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                             exclude_modules=["lm_head"]))
    trainable, _ = lorakit.trainable_parameters(model)
    return trainable, total


# ------------------------------------------------------------------------------------------- paper estimate

LLAMA_7B = {"layers": 32, "d": 4096, "ffn": 11008, "vocab": 32000}


def llama_counts(layers: int, d: int, ffn: int, vocab: int, r: int) -> tuple[int, int]:
    """(LoRA r parameters on q, k, v, o, gate, up, down; all parameters) of a Llama with MHA (kv = d)."""
    shapes = [(d, d)] * 4 + [(d, ffn)] * 2 + [(ffn, d)]
    lora = layers * sum(r * (i + o) for i, o in shapes)
    total = layers * (sum(i * o for i, o in shapes) + 2 * d) + 2 * vocab * d + d
    return lora, total


def ring_allreduce_s(nbytes: float, gpus: int, bus_gbs: float, hop_latency_us: float) -> float:
    """Ring all-reduce: every GPU sends and receives 2(n-1)/n of the buffer, in 2(n-1) latency-bound hops."""
    return 2 * (gpus - 1) / gpus * nbytes / (bus_gbs * 1e9) + 2 * (gpus - 1) * hop_latency_us * 1e-6


def paper_estimate(args) -> list[str]:
    n_lora, n_total = llama_counts(**LLAMA_7B, r=16)
    tokens = args.tokens_per_gpu
    # FLOPs per step and GPU: forward 2N·T; backward 2N·T for input gradients (+2N·T weight gradients when
    # every weight trains; LoRA's own weight gradients are 6·N_lora·T, negligible).
    compute = {"LoRA r=16": (4 * n_total + 6 * n_lora) * tokens, "full FT": 6 * n_total * tokens}
    grads = {"LoRA r=16": n_lora * 4, "full FT": n_total * 2}  # fp32 adapter grads; bf16 full grads
    lines = [f"7B Llama ({n_total / 1e9:.2f}B parameters; LoRA r=16 on every linear layer: {n_lora / 1e6:.1f}M), "
             f"{tokens} tokens per GPU per step, {args.tflops:g} TFLOP/s achieved per GPU, ring all-reduce with "
             f"{args.hop_latency_us:g} us per hop",
             f"{'':<10} {'GPUs':>5} {'bus GB/s':>9} {'grad bytes':>11} {'all-reduce':>11} {'compute':>9} "
             f"{'comm/compute':>13}"]
    for gpus, bus in ((8, args.nvlink_gbs), (64, args.ib_gbs)):
        for name in compute:
            seconds = compute[name] / (args.tflops * 1e12)
            comm = ring_allreduce_s(grads[name], gpus, bus, args.hop_latency_us)
            lines.append(f"{name:<10} {gpus:>5} {bus:>9g} {grads[name] / 2**20:>9.0f} MiB {comm * 1e3:>8.1f} ms "
                         f"{seconds:>7.2f} s {comm / seconds:>12.1%}")
    lines.append("full FT under FSDP moves 1.5x the all-reduce volume (all-gather of the weights in forward and "
                 "backward, reduce-scatter of the gradients) but overlaps it with compute layer by layer.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (step 1 is warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each set-up, interleaved")
    parser.add_argument("--max-tokens", type=int, default=512, help="token budget of one micro-batch")
    parser.add_argument("--allreduce-reps", type=int, default=5)
    parser.add_argument("--tokens-per-gpu", type=int, default=16384, help="paper estimate: tokens per GPU per step")
    parser.add_argument("--tflops", type=float, default=400, help="paper estimate: achieved bf16 TFLOP/s per GPU")
    parser.add_argument("--nvlink-gbs", type=float, default=300, help="paper estimate: all-reduce bus GB/s, 8 GPUs")
    parser.add_argument("--ib-gbs", type=float, default=40, help="paper estimate: all-reduce bus GB/s, 64 GPUs")
    parser.add_argument("--hop-latency-us", type=float, default=10)
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 repeat, 2 all-reduce reps")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.allreduce_reps = 3, 1, 2

    print(f"== throughput: SmolLM2-135M, LoRA r=16, {args.steps} steps, micro-batch <= {args.max_tokens} tokens, "
          f"same global batch per step", flush=True)
    samples, rate = throughput(args.steps, args.repeats, args.max_tokens)
    one, two = (samples[name] for name in SETUPS)
    for name, runs in samples.items():
        print(f"{name:<20} {rate[name]:8.1f} real tok/s   job wall {statistics.median(r['wall'] for r in runs):5.0f} s")
    ratio = paired_ratio([r["tokens_per_s"] for r in two], [r["tokens_per_s"] for r in one])
    print(f"2 procs / 1 proc: {ratio:.3f}x tokens/s (median of per-round ratios)")
    worst = max(abs(a - b) / abs(b) for x, y in zip(one, two) for a, b in zip(x["losses"], y["losses"]))
    print(f"same rows per step: largest relative loss difference, 2 procs vs 1 proc: {worst:.1e}")

    print("\n== communication per optimizer step (DDP all-reduces the trainable gradients)", flush=True)
    trainable, total = smollm2_counts()
    seconds = gloo_allreduce_seconds({"LoRA": trainable, "full": total}, args.allreduce_reps)
    step_s = statistics.median(r["step_s"] for r in two)
    for label, numel in (("LoRA r=16", trainable), ("full FT", total)):
        key = "LoRA" if label.startswith("LoRA") else "full"
        print(f"{label:<10} {numel / 1e6:8.2f}M fp32 gradients = {numel * 4 / 2**20:7.1f} MiB per step; "
              f"gloo all-reduce, 2 procs here: {seconds[key] * 1e3:8.1f} ms = {seconds[key] / step_s:6.1%} of a "
              f"2-proc step ({step_s:.2f} s)")
    print(f"full / LoRA volume: {total / trainable:.0f}x")

    print("\n== paper estimate", flush=True)
    print("\n".join(paper_estimate(args)))


if __name__ == "__main__":
    main()
