"""Length-grouped padding vs packing: real (non-pad) tokens per second of forward+backward on CPU.

    python benchmarks/packing.py [--examples 240] [--max-tokens 2048] [--max-length 512] [--threads 2]

Model: a random LlamaForCausalLM (hidden 256, 4 layers, 4 heads, vocab 8192, sdpa).
Data: ``--examples`` samples with lengths uniform in [20, 400], half of each a prompt (-100).
Every strategy sees the same examples under the same token budget for one epoch, after one
warm-up batch; prints tokens/s, padding share and the ratio to length-grouping.
"""
from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorakit.data import IGNORE, Example, grouped_batches, packed_batches


def make_examples(n: int, seed: int = 0, vocab: int = 8192) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(20, 400)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        out.append(Example(ids, [IGNORE] * (length // 2) + ids[length // 2:]))
    return out


def run(model: torch.nn.Module, loader, real_tokens: int) -> tuple[float, float]:
    """Returns (real tokens/s, padded share) for one epoch of fwd+bwd."""
    batches = list(loader)
    model.zero_grad()
    model(**batches[0]).loss.backward()  # warm-up
    slots = 0
    start = time.perf_counter()
    for batch in batches:
        model(**batch).loss.backward()
        slots += batch["input_ids"].numel()
    elapsed = time.perf_counter() - start
    return real_tokens / elapsed, 1 - real_tokens / slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=240)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      attn_implementation="sdpa", use_cache=False)
    model = LlamaForCausalLM(cfg).train()
    examples = make_examples(args.examples)
    real = sum(len(e) for e in examples)
    loaders = {
        "grouped (right-padded)": grouped_batches(examples, args.max_tokens, pad_id=0, seed=0),
        "packed, 4D block mask": packed_batches(examples, args.max_length, args.max_tokens, pad_id=0, seed=0),
        "packed, position_ids": packed_batches(examples, args.max_length, args.max_tokens, pad_id=0, seed=0,
                                               mask="position_ids"),
    }
    print(f"{len(examples)} examples, {real} tokens, budget {args.max_tokens} tokens/batch, "
          f"pack length {args.max_length}, {torch.get_num_threads()} threads")
    base = None
    for name, loader in loaders.items():
        tps, pad = run(model, loader, real)
        base = base or tps
        print(f"{name:24s} {tps:8.0f} tok/s  padding {pad:5.1%}  batches {len(loader):3d}  x{tps / base:.2f}")


if __name__ == "__main__":
    main()
