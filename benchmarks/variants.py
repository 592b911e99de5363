"""Step time of LoRA variants, lorakit vs peft, on a randomly initialised SmolLM2-shaped Llama (6 layers).

    python benchmarks/variants.py [--repeats 9] [--steps 1] [--device cuda|cpu]

Every (library, variant) model is built once; timing rounds are interleaved (each round runs every
model for `--steps` fwd+bwd steps, in an order rotated every round). Reported: the median step
time over rounds, and each library's variant / LoRA ratio as the median of per-round ratios (a
variant against that library's LoRA in the same round, so that drift on a noisy machine cancels).
r=16 on all linear layers (not the LM head), batch 4×128, fp32 (TF32 on GPU); IA³ on keys, values and
the down projection's input (its usual placement; it has no rank).
An AdaLoRA step also pays for its training extras, in both libraries: the orthogonality penalty in
the loss and the rank allocation after backward (init_r=16 → target_r=8 over 1000 steps, so every
timed step is in the pruning phase: importance update and a new mask each step).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved  # noqa: E402

import lorakit  # noqa: E402
from lorakit.tuners import adalora  # noqa: E402


def base_model(device):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).to(device)


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IA3_TARGETS = ["k_proj", "v_proj", "down_proj"]  # the paper's (and peft's) placement: keys, values, FFN input


def lorakit_model(variant, device):
    model = base_model(device)
    cfg = {
        "LoRA": lambda: lorakit.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS),
        "DoRA": lambda: lorakit.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, use_dora=True),
        "VeRA": lambda: lorakit.VeraConfig(r=16, target_modules=TARGETS),
        "AdaLoRA": lambda: lorakit.AdaLoraConfig(init_r=16, target_r=8, lora_alpha=32, target_modules=TARGETS,
                                                 total_step=1000),
        "IA3": lambda: lorakit.IA3Config(target_modules=IA3_TARGETS, feedforward_modules=["down_proj"]),
    }[variant]()
    lorakit.inject(model, cfg)
    if variant == "AdaLoRA":
        hooks = adalora.training_hooks(model)
        return model, hooks.regularizer, hooks.after_step
    return model, None, None


def peft_model(variant, device):
    import peft

    cfg = {
        "LoRA": lambda: peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS),
        "DoRA": lambda: peft.LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, use_dora=True),
        "VeRA": lambda: peft.VeraConfig(r=16, target_modules=TARGETS),
        "AdaLoRA": lambda: peft.AdaLoraConfig(init_r=16, target_r=8, lora_alpha=32, target_modules=TARGETS,
                                              total_step=1000),
        "IA3": lambda: peft.IA3Config(target_modules=IA3_TARGETS, feedforward_modules=["down_proj"]),
    }[variant]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base_model(device), cfg)
    if variant == "AdaLoRA":  # peft adds the orthogonality penalty to the loss inside its forward
        return model, None, lambda m, i: m.base_model.update_and_allocate(i)
    return model, None, None


def step(entry, ids, device, i):
    """One fwd+bwd step (plus AdaLoRA's penalty and allocation); `i` counts steps from 1."""
    model, penalty, after_step = entry
    loss = model(input_ids=ids, labels=ids).loss
    if penalty is not None:
        loss = loss + penalty(model)
    loss.backward()
    if after_step is not None:
        after_step(model, i)
    for p in model.parameters():
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default="LoRA,DoRA,VeRA,AdaLoRA,IA3")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    variants = args.variants.split(",")
    if "LoRA" not in variants:
        variants.insert(0, "LoRA")  # the reference of the ratios
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
        def steps():
            for _ in range(args.steps):
                counts[key] += 1
                step(models[key], ids, device, counts[key])
        return steps

    samples = interleaved({key: run(key) for key in models}, args.repeats, warmup=2, device=device)
    med = {k: statistics.median(v) / args.steps * 1e3 for k, v in samples.items()}

    def paired(a, b):
        """Median over rounds of a's time / b's time in the same round."""
        if a not in samples or b not in samples:
            return None
        return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; batch 4x128, r=16 all linear, fp32; {args.repeats} rounds x {args.steps} steps; "
          f"step times are medians, ratios medians of per-round ratios")
    print(f"{'variant':<9} {'lorakit ms':>11} {'peft ms':>9} {'lorakit/peft':>13} {'lorakit /LoRA':>14} {'peft /LoRA':>11}")
    for v in variants:
        fmt = lambda x: f"{x:.1f}" if x is not None else "-"  # noqa: E731
        ratio = lambda x: f"{x:.3f}" if x is not None else "-"  # noqa: E731
        print(f"{v:<9} {fmt(med.get(('lorakit', v))):>11} {fmt(med.get(('peft', v))):>9} "
              f"{ratio(paired(('lorakit', v), ('peft', v))):>13} {ratio(paired(('lorakit', v), ('lorakit', 'LoRA'))):>14} "
              f"{ratio(paired(('peft', v), ('peft', 'LoRA'))):>11}")
    for s in skipped:
        print("skipped:", s)


if __name__ == "__main__":
    main()
