"""Step time of LoRA variants, lorakit vs peft, on a randomly initialised SmolLM2-shaped Llama (6 layers).

    python benchmarks/variants.py [--repeats 7] [--steps 3] [--device cuda|cpu]

Every (library, variant) model is built once; timing rounds are interleaved (each round runs every
model for `--steps` fwd+bwd steps) and the median over rounds is reported, with each library's
variant / LoRA ratio. r=16 on all linear layers (not the LM head), batch 4×128, fp32 (TF32 on GPU).
An AdaLoRA step also pays for its training extras, in both libraries: the orthogonality penalty in
the loss and the rank allocation after backward (init_r=16 → target_r=8 over 1000 steps, so every
timed step is in the pruning phase: importance update and a new mask each step).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import lorakit
from lorakit.tuners import adalora


def base_model(device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).to(device)


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lorakit_model(variant, device):
    model = base_model(device)
    cfg = {
        "LoRA": lambda: lorakit.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS),
        "DoRA": lambda: lorakit.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, use_dora=True),
        "VeRA": lambda: lorakit.VeraConfig(r=16, target_modules=TARGETS),
        "AdaLoRA": lambda: lorakit.AdaLoraConfig(init_r=16, target_r=8, lora_alpha=32, target_modules=TARGETS,
                                                 total_step=1000),
    }[variant]()
    lorakit.inject(model, cfg)
    if variant == "AdaLoRA":
        hooks = adalora.training_hooks(model)
        return model, hooks.regularizer, hooks.after_backward
    return model, None, None


def peft_model(variant, device):
    import peft

    cfg = {
        "LoRA": lambda: peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS),
        "DoRA": lambda: peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, use_dora=True),
        "VeRA": lambda: peft.VeraConfig(r=16, target_modules=TARGETS),
        "AdaLoRA": lambda: peft.AdaLoraConfig(init_r=16, target_r=8, lora_alpha=32, target_modules=TARGETS,
                                              total_step=1000),
    }[variant]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base_model(device), cfg)
    if variant == "AdaLoRA":  # peft adds the orthogonality penalty to the loss inside its forward
        return model, None, lambda m, i: m.base_model.update_and_allocate(i)
    return model, None, None


def step(entry, ids, device, i):
    """One fwd+bwd step (plus AdaLoRA's penalty and allocation); `i` counts steps from 1."""
    model, penalty, after_backward = entry
    loss = model(input_ids=ids, labels=ids).loss
    if penalty is not None:
        loss = loss + penalty(model)
    loss.backward()
    if after_backward is not None:
        after_backward(model, i)
    for p in model.parameters():
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default="LoRA,DoRA,VeRA,AdaLoRA")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    variants = args.variants.split(",")
    models, skipped = {}, []
    for v in variants:
        for lib, make in (("lorakit", lorakit_model), ("peft", peft_model)):
            try:
                models[(lib, v)] = make(v, device)
                models[(lib, v)][0].train()
            except NotImplementedError as e:
                skipped.append(f"{lib} {v}: {e or 'not implemented'}")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (4, 128), generator=g).to(device)
    counts = {k: 0 for k in models}

    def run(key):
        counts[key] += 1
        step(models[key], ids, device, counts[key])

    for key in models:  # warm-up
        run(key)
        run(key)
    times = {k: [] for k in models}
    for _ in range(args.repeats):
        for key in models:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run(key)
            times[key].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; batch 4x128, r=16 all linear, fp32; median of {args.repeats} rounds x {args.steps} steps")
    print(f"{'variant':<9} {'lorakit ms':>11} {'peft ms':>9} {'lorakit/peft':>13} {'lorakit /LoRA':>14} {'peft /LoRA':>11}")
    for v in variants:
        ours, theirs = med.get(("lorakit", v)), med.get(("peft", v))
        lo, lp = med.get(("lorakit", "LoRA")), med.get(("peft", "LoRA"))
        fmt = lambda x: f"{x:.1f}" if x is not None else "-"  # noqa: E731
        ratio = lambda a, b: f"{a / b:.3f}" if a is not None and b else "-"  # noqa: E731
        print(f"{v:<9} {fmt(ours):>11} {fmt(theirs):>9} {ratio(ours, theirs):>13} {ratio(ours, lo):>14} "
              f"{ratio(theirs, lp):>11}")
    for s in skipped:
        print("skipped:", s)


if __name__ == "__main__":
    main()
