"""Paired A/B of lorakit training-step options on SmolLM2-135M (issue #18): keep an option only if it wins.

    python benchmarks/sft_step.py [--rounds 5] [--examples 4] [--threads 2] [--variants lorakit,plain_ce]

One process loads SmolLM2-135M-Instruct (fp32) with LoRA r=16 on every linear but lm_head (B
randomised), takes `--examples` conversations of benchmarks/sft_throughput.py's generator as one
right-padded batch, and times forward + backward of the summed causal-LM loss for each variant in
turn, `--rounds` times (order rotated every round, gradients cleared between, the weights never
change). Printed: each variant's median seconds and the median over rounds of its time divided by
the first variant's in the same round (paired, so drift on a shared machine cancels), and the
largest gradient difference to the first variant (equivalence).

Variants (each differs from `lorakit`, the library as it is, in one thing):
    lorakit     the head at target positions fused and chunked with the cross-entropy
    plain_ce    the head at target positions, then F.cross_entropy on the (targets, vocab) logits
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved  # noqa: E402
from _sft_sides import MODEL, write_dataset  # noqa: E402

from lorakit.train import losses  # noqa: E402


def plain_ce(model, batch: dict) -> torch.Tensor:
    """The loss before the fused head: (targets, vocab) logits, then F.cross_entropy."""
    inputs = {k: batch[k] for k in losses.MODEL_INPUTS if k in batch}
    labels = batch["labels"][:, 1:]
    body, head = losses.body_and_head(model)
    hidden = body(**inputs, use_cache=False).last_hidden_state[:, :-1]
    keep = labels != losses.IGNORE
    return F.cross_entropy(head(hidden[keep]).float(), labels[keep], reduction="sum")


VARIANTS = {"lorakit": losses.causal_lm_loss_sum, "plain_ce": plain_ce}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")

    import lorakit
    from lorakit.data import collate_padded, encode_dataset, load_dataset
    from lorakit.models import load_causal_lm

    model, tokenizer = load_causal_lm(MODEL)
    lorakit.inject(model, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for _, w in lorakit.tuners.layers.layer_wrappers(model):
            w.active.lora_B.copy_(torch.randn(w.active.lora_B.shape, generator=g) * 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.jsonl")
        write_dataset(path, args.examples, args.seed)
        examples, _ = encode_dataset(tokenizer, load_dataset(path, "messages"), 512)
    batch = collate_padded(examples, tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    grads = {}

    def step(name):
        loss_sum = VARIANTS[name]

        def run():
            for p in params:
                p.grad = None
            loss_sum(model, batch).backward()
            grads[name] = [p.grad.clone() for p in params]
        return run

    samples = interleaved({n: step(n) for n in names}, reps=args.rounds, warmup=1)
    first = names[0]
    print(f"batch {tuple(batch['input_ids'].shape)}, {int(batch['attention_mask'].sum())} real tokens, "
          f"{int((batch['labels'][:, 1:] != -100).sum())} targets; {args.threads} threads; {args.rounds} rounds")
    for n in names:
        paired = statistics.median(a / b for a, b in zip(samples[n], samples[first]))
        diff = max(float((a - b).abs().max()) for a, b in zip(grads[n], grads[first]))
        print(f"{n:10s} median {statistics.median(samples[n]):.3f} s   / {first}: {paired:.3f} paired   "
              f"max |grad - {first}| {diff:.2e}")
    print("note: timings are from whatever machine ran this; on a shared machine they are noisy")


if __name__ == "__main__":
    main()
