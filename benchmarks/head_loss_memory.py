"""Peak memory of the LM head + cross-entropy: lorakit's fused, chunked loss vs F.linear + F.cross_entropy.

    python benchmarks/head_loss_memory.py [--targets 600]

SmolLM2-135M's head shape (vocab 49152 × 576, fp32, frozen), `--targets` hidden rows with
requires_grad; forward + backward of the summed loss. Each variant runs in its own fresh process
and prints its peak RSS above the RSS after setup (`ru_maxrss`), and its wall time.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def worker(variant: str, targets: int) -> None:
    from lorakit.train.losses import linear_cross_entropy_sum

    torch.manual_seed(0)
    weight = torch.randn(49152, 576) * 0.02
    hidden = torch.randn(targets, 576, requires_grad=True)
    labels = torch.randint(0, 49152, (targets,))
    setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if variant == "fused":
        loss = linear_cross_entropy_sum(hidden, weight, None, labels)
    else:
        loss = F.cross_entropy(F.linear(hidden, weight).float(), labels, reduction="sum")
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{variant:6s} peak RSS +{peak - setup:.0f} MiB over setup ({setup:.0f} MiB); {seconds:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=600)
    ap.add_argument("--worker", choices=("fused", "plain"))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.targets)
        return
    for variant in ("plain", "fused"):
        subprocess.run([sys.executable, __file__, "--worker", variant, "--targets", str(args.targets)], check=True)
    print("note: one run each; the time is noisy on a shared machine, the memory is not")


if __name__ == "__main__":
    main()
