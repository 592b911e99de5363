"""LoRA layers side by side with peft, in one process, on a SmolLM2-135M-shaped Llama (6 layers).

Both libraries get identical copies of a randomly initialised LlamaForCausalLM (hidden 576,
intermediate 1536, 9 heads / 3 kv heads, vocab 49152, tied embeddings, fp32) and LoRA r=16,
alpha=32 on all linear layers. Checked first: both adapt the same modules and give the same
logits (atol 1e-4), single-adapter and mixed-batch. Then, timings over interleaved repeats
(medians; ratios also as the median of per-round ratios, on which the goals are judged):

1. training step: forward + backward of the causal-LM loss (no optimizer), lorakit vs peft;
2. mixed batch (forward, no grad): 8 adapters, one per group of rows, `lorakit.route` vs
   lorakit's single-adapter forward on the same batch, and vs peft's `adapter_names=` path;
   then the same for greedy generation (16-token prompts, 16 new tokens: mostly decode steps);
3. adapter I/O: loading one more adapter from disk into the adapted model (and deleting it),
   and switching the active adapter.

    python benchmarks/layers.py                 # full run, ~2-3 minutes on 2 idle cores (much longer if busy)
    python benchmarks/layers.py --quick         # fewer repeats, ~1 minute
    python benchmarks/layers.py --reps 11 --io-reps 30 --threads 4

Mixed-batch forwards keep only the last position's logits (`logits_to_keep=1`, as a server's
prefill does) so that the 49k-vocab head, identical in all paths, does not hide the adapter
cost; `--full-logits` computes logits for every position instead.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Table, fmt_time, interleaved, medians, paired_ratio, peak_rss_mib, spread, time_once  # noqa: E402

import lorakit  # noqa: E402
from lorakit.io import adapter_tensors  # noqa: E402
from lorakit.tuners.lora import LoraWrapper  # noqa: E402

RANK, ALPHA = 16, 32
SAMPLES: dict[str, dict[str, list[float]]] = {}


def build_base(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, rms_norm_eps=1e-5,
        tie_word_embeddings=True, rope_theta=100000.0, attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


def randomise_b(model, adapter_name: str, generator: torch.Generator, std: float = 0.02) -> None:
    """Give `adapter_name` non-zero B factors so that it changes the outputs."""
    with torch.no_grad():
        for _, w in lorakit_wrappers(model):
            if adapter_name in w.adapters:
                b = w.adapters[adapter_name].lora_B
                b.copy_(torch.randn(b.shape, generator=generator) * std)


def lorakit_wrappers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraWrapper)]


def peft_lora_names(peft_model) -> set[str]:
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {n[len(prefix):] for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def copy_adapter_to_peft(lk_model, peft_model, adapter_name: str) -> None:
    """lorakit's factors → peft's, through the shared on-disk key layout (no files)."""
    from peft.utils import set_peft_model_state_dict

    state = {k: t.detach().clone() for k, t in adapter_tensors(lk_model, adapter_name).items()}
    result = set_peft_model_state_dict(peft_model, state, adapter_name=adapter_name)
    lora_missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_name}." in k]
    if result.unexpected_keys or lora_missing:
        raise RuntimeError(f"peft state-dict copy failed: unexpected={result.unexpected_keys[:3]} "
                           f"missing={lora_missing[:3]}")


def check_close(label: str, a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> None:
    diff = (a - b).abs().max().item()
    status = "ok" if diff <= atol else "MISMATCH"
    print(f"  sanity {label}: max |lorakit - peft| = {diff:.2e} ({status}, atol {atol:g})")
    if diff > atol:
        raise SystemExit(f"{label}: outputs differ by {diff:.2e} > {atol:g}; the comparison would not be fair")


def clear_grads(*models) -> None:
    for m in models:
        for p in m.parameters():
            p.grad = None


def report(label: str, samples: dict[str, list[float]]) -> dict[str, float]:
    """Print and return the medians; all samples are kept in SAMPLES[label] for the summary's ratios."""
    med = medians(samples)
    SAMPLES[label] = dict(samples)
    parts = [f"{n} {fmt_time(t)} (min {fmt_time(min(samples[n]))}, spread {100 * spread(samples[n]):.0f}%)"
             for n, t in med.items()]
    print(f"  {label}: " + "  ".join(parts))
    return med


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    p.add_argument("--reps", type=int, default=None, help="timed repeats per path for steps 1-2 (default 9, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds before timing (default 2, quick 1)")
    p.add_argument("--io-reps", type=int, default=None, help="repeats for adapter load / switch (default 15, quick 5)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--batch", type=int, default=4, help="training-step batch rows")
    p.add_argument("--seq", type=int, default=128, help="training-step sequence length")
    p.add_argument("--adapters", type=int, default=8, help="adapters in the mixed batch")
    p.add_argument("--rows", type=int, default=32, help="mixed-batch rows (spread evenly over the adapters)")
    p.add_argument("--mixed-seq", type=int, default=64, help="mixed-batch sequence length")
    p.add_argument("--full-logits", action="store_true", help="mixed batch: logits for every position")
    p.add_argument("--gen-prompt", type=int, default=16, help="mixed-batch generation: prompt tokens per row")
    p.add_argument("--gen-tokens", type=int, default=16, help="mixed-batch generation: new tokens per row")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    reps = args.reps or (3 if args.quick else 9)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    io_reps = args.io_reps or (5 if args.quick else 15)

    import peft
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"torch {torch.__version__}, peft {peft.__version__}, lorakit {lorakit.__version__}; "
          f"threads {torch.get_num_threads()}; reps {reps}, warmup {warmup}, io reps {io_reps}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    # ---- models ------------------------------------------------------------------------------
    base = build_base(args.seed)
    lk = copy.deepcopy(base)
    lk_names = lorakit.inject(lk, lorakit.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear"))
    pf = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=RANK, lora_alpha=ALPHA,
                                                                  target_modules="all-linear", lora_dropout=0.0))
    del base
    pf_names = peft_lora_names(pf)
    if set(lk_names) != pf_names:
        raise SystemExit(f"libraries adapt different modules: only lorakit {sorted(set(lk_names) - pf_names)[:5]}, "
                         f"only peft {sorted(pf_names - set(lk_names))[:5]}")
    print(f"  both adapt the same {len(lk_names)} modules; trainable lorakit "
          f"{lorakit.trainable_parameters(lk)[0]:,} vs peft {sum(q.numel() for q in pf.parameters() if q.requires_grad):,}")
    randomise_b(lk, "default", gen)
    copy_adapter_to_peft(lk, pf, "default")

    # ---- 1. training step ------------------------------------------------------------------------
    print(f"\n[1] training step: forward + backward, causal-LM loss, batch {args.batch}x{args.seq}")
    ids = torch.randint(0, 49152, (args.batch, args.seq), generator=gen)
    lk.train()
    pf.train()
    loss_lk = lk(input_ids=ids, labels=ids).loss
    loss_pf = pf(input_ids=ids, labels=ids).loss
    check_close("train loss", loss_lk.detach(), loss_pf.detach())
    loss_lk.backward()
    loss_pf.backward()
    g_lk = adapter_tensors(lk, "default")
    g_pf = {n[:-len(".default.weight")] + ".weight": q for n, q in pf.named_parameters() if q.requires_grad}
    check_close("adapter grads", torch.stack([g_lk[k].grad.norm() for k in sorted(g_lk)]),
                torch.stack([g_pf[k].grad.norm() for k in sorted(g_lk)]))
    clear_grads(lk, pf)

    def step(model):
        def run():
            model(input_ids=ids, labels=ids).loss.backward()
        return run

    train = report("train step", interleaved({"lorakit": step(lk), "peft": step(pf)}, reps, warmup,
                                             setup=lambda: clear_grads(lk, pf)))
    clear_grads(lk, pf)
    lk.eval()
    pf.eval()

    # ---- 2. mixed batch ----------------------------------------------------------------------
    n_ad = args.adapters
    print(f"\n[2] mixed batch: {args.rows}x{args.mixed_seq} tokens over {n_ad} adapters, forward, no grad")
    names = [f"a{i}" for i in range(n_ad)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            lorakit.inject(lk, lorakit.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear"), name)
            randomise_b(lk, name, gen)
            lorakit.save_adapter(lk, os.path.join(tmp, name), adapter_name=name)
            pf.load_adapter(os.path.join(tmp, name), adapter_name=name)  # peft reads lorakit's files
    row_names = [names[i % n_ad] for i in range(args.rows)]
    mids = torch.randint(0, 49152, (args.rows, args.mixed_seq), generator=gen)
    kw = {} if args.full_logits else {"logits_to_keep": 1}
    lorakit.set_adapter(lk, names[0])
    pf.set_adapter(names[0])
    with torch.no_grad():
        with lorakit.route(lk, row_names):
            out_lk = lk(input_ids=mids, **kw).logits
        out_pf = pf(input_ids=mids, adapter_names=row_names, **kw).logits
        check_close("mixed-batch logits", out_lk, out_pf)
        check_close("single-adapter logits", lk(input_ids=mids, **kw).logits, pf(input_ids=mids, **kw).logits)

    def routed():
        with torch.no_grad(), lorakit.route(lk, row_names):
            lk(input_ids=mids, **kw)

    def lk_single():
        with torch.no_grad():
            lk(input_ids=mids, **kw)

    def pf_mixed():
        with torch.no_grad():
            pf(input_ids=mids, adapter_names=row_names, **kw)

    def pf_single():
        with torch.no_grad():
            pf(input_ids=mids, **kw)

    mixed = report("mixed", interleaved({"lorakit route": routed, "lorakit single": lk_single,
                                         "peft adapter_names": pf_mixed, "peft single": pf_single},
                                        reps, warmup))

    # generation: the prompt is a prefill like the above, then every new token is a forward of one
    # token per row (the decode path). Greedy, fixed length; the outputs of the paths agree.
    gen_ids = mids[:, : args.gen_prompt]
    gen_kw = dict(max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        with lorakit.route(lk, row_names):
            out_lk = lk.generate(gen_ids, **gen_kw)
        out_pf = pf.generate(input_ids=gen_ids, adapter_names=row_names, **gen_kw)
    same = torch.equal(out_lk, out_pf)
    print(f"  sanity mixed-batch generate: lorakit and peft tokens {'equal' if same else 'DIFFER'}")
    if not same:
        raise SystemExit("mixed-batch generations differ; the comparison would not be fair")

    def gen_routed():
        with torch.no_grad(), lorakit.route(lk, row_names):
            lk.generate(gen_ids, **gen_kw)

    def gen_single():
        with torch.no_grad():
            lk.generate(gen_ids, **gen_kw)

    def gen_peft():
        with torch.no_grad():
            pf.generate(input_ids=gen_ids, adapter_names=row_names, **gen_kw)

    print(f"\n[2b] mixed-batch generation: {args.rows} rows, {args.gen_prompt}-token prompts, {args.gen_tokens} new tokens")
    generation = report("generate", interleaved({"lorakit route": gen_routed, "lorakit single": gen_single,
                                                 "peft adapter_names": gen_peft}, max(3, reps // 2), 1))

    # ---- 3. adapter load / switch --------------------------------------------------------------
    print(f"\n[3] adapter I/O: load one more adapter from disk into the adapted model ({1 + n_ad} adapters), "
          f"delete it; switch adapters")
    with tempfile.TemporaryDirectory() as tmp:
        lk_dir, pf_dir = os.path.join(tmp, "lk"), os.path.join(tmp, "pf")
        lorakit.save_adapter(lk, lk_dir, adapter_name=names[0])
        pf.save_pretrained(pf_dir, selected_adapters=[names[0]])
        pf_dir = os.path.join(pf_dir, names[0]) if not os.path.isfile(os.path.join(pf_dir, "adapter_config.json")) \
            else pf_dir
        loads: dict[str, list[float]] = {"lorakit": [], "peft": []}
        deletes: dict[str, list[float]] = {"lorakit": [], "peft": []}
        ops = {
            "lorakit": (lambda n: lorakit.load_adapter(lk, lk_dir, adapter_name=n),
                        lambda n: lorakit.delete_adapter(lk, n)),
            "peft": (lambda n: pf.load_adapter(pf_dir, adapter_name=n), lambda n: pf.delete_adapter(n)),
        }
        for i in range(warmup + io_reps):
            order = list(ops) if i % 2 == 0 else list(ops)[::-1]
            for lib in order:
                load, delete = ops[lib]
                t_load = time_once(lambda: load(f"x{i}"))
                t_del = time_once(lambda: delete(f"x{i}"))
                if i >= warmup:
                    loads[lib].append(t_load)
                    deletes[lib].append(t_del)
    load = report("load adapter", loads)
    delete = report("delete adapter", deletes)
    lorakit.set_adapter(lk, names[0])
    pf.set_adapter(names[0])

    switches = 20

    def switch(set_fn):
        def run():
            for k in range(switches):
                set_fn(names[k % 2 + 1] if k < switches - 1 else names[0])
        return run

    sw = interleaved({"lorakit": switch(lambda n: lorakit.set_adapter(lk, n)), "peft": switch(pf.set_adapter)},
                     io_reps, warmup)
    sw = {k: [t / switches for t in v] for k, v in sw.items()}
    switch_med = report("set_adapter (per call)", sw)

    # ---- summary -----------------------------------------------------------------------------
    table = Table()

    def row(metric, label, med, ours, theirs, goal=None, reference="peft"):
        a, b = SAMPLES[label][ours], SAMPLES[label][theirs]
        return table.add(metric, med[ours], med[theirs], goal, reference=reference, mins=(min(a), min(b)),
                         paired=paired_ratio(a, b))

    mixed_label = f"mixed {n_ad} adapters {args.rows}x{args.mixed_seq} route"
    results = [
        row(f"train step fwd+bwd {args.batch}x{args.seq}", "train step", train, "lorakit", "peft", 1.0),
        row(mixed_label, "mixed", mixed, "lorakit route", "lorakit single", 1.05, "lorakit single"),
        row(mixed_label, "mixed", mixed, "lorakit route", "peft adapter_names", 1.0, "peft adapter_names"),
        row(f"single-adapter forward {args.rows}x{args.mixed_seq}", "mixed", mixed, "lorakit single", "peft single"),
        row(f"mixed generate {args.rows} rows +{args.gen_tokens} tokens", "generate", generation, "lorakit route",
            "lorakit single", reference="lorakit single"),
        row(f"mixed generate {args.rows} rows +{args.gen_tokens} tokens", "generate", generation, "lorakit route",
            "peft adapter_names", reference="peft adapter_names"),
        row("load adapter into adapted model", "load adapter", load, "lorakit", "peft"),
        row("delete adapter", "delete adapter", delete, "lorakit", "peft"),
        row("set_adapter", "set_adapter (per call)", switch_med, "lorakit", "peft"),
    ]
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB; load average now {os.getloadavg()[0]:.1f}; medians; "
          f"ratio = lorakit / reference (of the medians, of the fastest samples, and the median of per-round "
          f"ratios, on which goals are judged) "
          f"(mixed forwards: {'all' if args.full_logits else 'last-position'} logits)")
    print(table.render())
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
