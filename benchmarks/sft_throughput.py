"""SFT throughput and memory: lorakit's trainer vs transformers.Trainer + peft and TRL's SFTTrainer
(issues #3, #18).

    python benchmarks/sft_throughput.py [--examples 96] [--steps N] [--threads 2] [--repeats 3]
        [--sides lorakit,hf-grouped,trl,hf,lorakit-compile] [--profile-steps 2] [--profile-only] [--quick] [--device cpu|cuda]

Sides (each a fresh process per run; `--sides` picks them, lorakit first):
    lorakit     `lorakit.train.train(config)` (below)
    lorakit-compile  the same with `train.compile: true` (each decoder layer under torch.compile;
                step 1, which compiles, is not timed, like every side's step 1: its seconds are
                printed apart); not in the default sides
    hf-grouped  `transformers.Trainer` + peft with `train_sampling_strategy="group_by_length"`:
                the baseline a careful HF user configures; the headline ratio is against the
                strongest of hf-grouped and trl
    trl         TRL `SFTTrainer` + peft, `padding_free=True` (the rows of a micro-batch concatenated
                into one sequence, attention kept inside each example), assistant-only labels
    hf          `transformers.Trainer` + peft with HF's default random sampler (a footnote)

Every side trains LoRA (r=16, alpha=32, dropout 0, every linear but lm_head) on the embedded
SmolLM2-135M-Instruct (fp32, sdpa attention), from the same adapter init, with AdamW at the same lr,
cosine decay without warmup, gradient clipping at 1.0, the same seed and the same number of optimizer
steps (default: one epoch of the HF side, ceil(examples / (batch × accum))).

Data: an instruction set generated here with a fixed seed (messages format: reverse / sort /
capitalise / number / count a list of words; word counts log-normal, so conversations span
~45-450 tokens with SmolLM2's default system prompt; about half of the non-system tokens are
assistant targets), written to a temp JSONL that every side reads, plus a held-out set from another seed.
Every side tokenizes with `lorakit.data.encode_dataset` (same ids, same assistant-only labels).

    lorakit   `lorakit.train.train(config)`: length-grouped right-padded batches under a token
              budget `data.max_tokens` (chosen here so its examples per micro-batch average ~ the HF
              batch size), `grad_accum` micro-batches per step, LM head at target positions only (fused, chunked
              with the cross-entropy: lorakit.train.losses).
    HF        `Trainer(model=get_peft_model(...))` with `per_device_train_batch_size`, the same
              `gradient_accumulation_steps`, the sampler of its side and `DataCollatorForSeq2Seq`
              padding each batch to its longest row. Loss normalised per target token over the whole
              accumulated batch (HF: `num_items_in_batch`), as lorakit does.
    TRL       `SFTTrainer(model=get_peft_model(...), args=SFTConfig(padding_free=True, bf16=False,
              gradient_checkpointing=False, ...))` on the same tokenised rows and labels (a `labels`
              column, which TRL keeps), `per_device_train_batch_size` rows per micro-batch.

Profile: after the first lorakit run, `--profile-steps` more steps run under torch.profiler
(lorakit.train.profile) and the table of op self time by category (base matmuls, LoRA
matmuls, attention, norms/activations/RoPE, LM head + loss, optimizer, data, overhead) is
printed; `--profile-only` prints just that, without training runs.

Each run is a fresh subprocess (peak RSS = its own `ru_maxrss`: model load + training; the
held-out evaluation runs after the peak is read; "RSS setup" is after model, adapter, data and
a read of every weight). With `--repeats`, runs are interleaved, the order alternates, and
repeat i uses seed+i (adapter init and data order, both sides; the rows stay the same).
Throughput counts steps 2..S (step 1 is warm-up): real (non-padding) tokens/s and target
tokens/s (medians over repeats). Loss: the held-out loss after training (per target token, same
function, batch size 1 so no padding; mean over repeats) is the fair comparison, since the two
sides see the rows in different batches; the per-example mean and the mean training loss over
the last steps are printed too. On identical batches the two sides give bit-identical losses
and LoRA gradients, so a gap comes from batch composition and order; at the default size a
single seed moves the held-out loss by a few percent: use --repeats 3 or more to test +-2%.

GPU (`--device cuda`): the same comparison on one CUDA device, every side with the base in bfloat16
and fp32 LoRA weights under bf16 autocast (lorakit `model.dtype: bfloat16`, `train.device: cuda`,
fused AdamW; HF / TRL: peft's fp32 adapters, `bf16=True`), the held-out loss under the same
autocast. Peak GPU memory (`torch.cuda.max_memory_allocated`) is reported beside RSS, the roofline
is against a measured bf16 matmul peak of the device, and the CPU op profile is not run. Step
timestamps wait for the GPU (HF / TRL: synchronize at each step end; lorakit reads its loss every
micro-batch). Not yet run on a GPU: no figures in the README.

FLOPs (model FLOPs, useful work only, padding not counted), per optimizer step:
    4 · N_base · real_tokens            frozen linears in the decoder: forward + input-gradient
    6 · N_lora · real_tokens            LoRA factors: forward + input-gradient + weight-gradient
    4 · V · d  · target_tokens          LM head (tied, frozen) applied at target positions only
    6 · L_layers · d_attn · Σ len²      causal attention scores and values (fwd 2, bwd 4), reported apart
N_base = every q/k/v/o/gate/up/down weight of the 30 layers (embedding, norms and lm_head
excluded). The fraction is over this machine's fp32 matmul peak measured here with a loop of
large square `torch.matmul`s (best of before and after the runs).

Workers run with OMP_WAIT_POLICY=PASSIVE unless the environment sets it: on a shared machine,
OpenMP threads that spin-wait for a descheduled sibling made a step up to 7x slower (measured on
2 cores beside one busy process); on an idle machine ACTIVE may be a little faster.
The machine may be shared: timings are noisy; rerun with --repeats to see the spread.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sft_sides import (MODEL, ALPHA, R, choose_max_tokens, encoded, hf_worker, lorakit_worker,  # noqa: E402
                        trl_worker, write_dataset)

# ---------------------------------------------------------------------------------------------
# parent


def matmul_peak(threads: int, n: int = 2048, seconds: float = 2.0, device: str = "cpu",
                dtype: str = "float32") -> float:
    """FLOP/s of back-to-back (n × n) @ (n × n) matmuls: the best of 1-matmul timings (CPU: in `dtype`;
    CUDA: bf16, 8192², timed over 20 matmuls between synchronizations)."""
    if device == "cuda":
        return _cuda_matmul_peak(seconds=seconds)
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    c = torch.empty(n, n, dtype=getattr(torch, dtype))
    torch.matmul(a, b, out=c)
    best, start = math.inf, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def _cuda_matmul_peak(n: int = 8192, seconds: float = 2.0, reps: int = 20) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
    best, start = math.inf, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best


WORKERS = {"lorakit": lorakit_worker, "hf-grouped": lambda a: hf_worker(a, grouped=True),
           "trl": trl_worker, "hf": lambda a: hf_worker(a, grouped=False),
           "lorakit-compile": lambda a: lorakit_worker(dict(a, compile=True, side="lorakit-compile"))}
OURS = ("lorakit", "lorakit-compile")
BASELINES = ("hf-grouped", "trl", "hf")
GOALS = {"hf-grouped": 2.0, "trl": 1.3}  # lorakit / baseline real tokens/s
RSS_GOAL, ROOFLINE_GOAL = 0.45, 0.65  # lorakit peak RSS / HF (grouped); useful FLOPs / matmul peak


def run_child(side: str, a: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(a["threads"]), MKL_NUM_THREADS=str(a["threads"]),
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--worker-args", json.dumps(a)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{side} worker failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _model_flops(r: dict, terms: dict) -> tuple[float, float]:
    """(FLOPs without attention, attention FLOPs) of the timed window of run `r`."""
    linear = 4 * terms["n_base"] * r["real"] + 6 * terms["n_lora"] * r["real"] + 4 * terms["head"] * r["targets"]
    attention = 6 * terms["layers"] * terms["d_attn"] * r["sq"]
    return linear, attention


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=96, help="training conversations generated")
    ap.add_argument("--eval-examples", type=int, default=24, help="held-out conversations")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one HF epoch)")
    ap.add_argument("--batch-size", type=int, default=4, help="HF / TRL per_device_train_batch_size")
    ap.add_argument("--accum", type=int, default=2, help="gradient accumulation (all sides)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1,
                    help="interleaved runs of each side; repeat i uses seed+i for init and data order (all sides)")
    ap.add_argument("--sides", default="lorakit,hf-grouped,trl,hf",
                    help=f"comma-separated, lorakit first (default: lorakit,hf-grouped,trl,hf; any of "
                         f"{', '.join(WORKERS)})")
    ap.add_argument("--profile-steps", type=int, default=2,
                    help="lorakit steps profiled by category after the first run (0: none)")
    ap.add_argument("--profile-only", action="store_true", help="only the lorakit step profile, no training runs")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 32 examples, 8 held out")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: every side on the GPU, bf16 base + fp32 LoRA under autocast (see above)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                    help="the base's dtype on every side (default: float32 on the CPU, bfloat16 with --device "
                         "cuda); bfloat16: fp32 LoRA weights, HF / TRL with bf16=True (autocast)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.worker_args))))
        return

    if args.quick:
        args.examples, args.eval_examples = 32, 8
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    if args.device == "cuda" and (args.profile_only or args.profile_steps):
        if args.profile_only:
            ap.error("--profile-only: the op profile is a CPU profile; not with --device cuda")
        print("--device cuda: the CPU op profile is not run")
        args.profile_steps = 0
    if args.device == "cpu" and args.dtype == "bfloat16":
        from lorakit.train.precision import native_half_matmul
        if not native_half_matmul(torch.bfloat16):
            ap.error("--dtype bfloat16: this CPU has no native bf16 matmuls (no AVX512-BF16 / AMX); every side would "
                     "run a generic kernel many times slower than float32 and the figures would say nothing")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in WORKERS]
    if unknown or not sides or sides[0] != "lorakit":
        ap.error(f"--sides: lorakit first, then any of {', '.join(w for w in WORKERS if w != 'lorakit')} "
                 f"(got {args.sides!r})")
    if "trl" in sides and importlib.util.find_spec("trl") is None:
        print("trl is not installed (pip install -e '.[bench]'): the TRL side is skipped")
        sides.remove("trl")
    from transformers import AutoTokenizer

    from lorakit.models import local_dir

    wall = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="lorakit-sft-bench-")
    try:
        train_path, eval_path = os.path.join(tmp, "train.jsonl"), os.path.join(tmp, "eval.jsonl")
        write_dataset(train_path, args.examples, args.seed)
        write_dataset(eval_path, args.eval_examples, args.seed + 1)
        tokenizer = AutoTokenizer.from_pretrained(local_dir(MODEL))
        examples, stats = encoded(tokenizer, train_path, args.max_length)
        lengths = sorted(len(e) for e in examples)
        max_tokens, lk_batches = choose_max_tokens([len(e) for e in examples], args.batch_size, args.seed)
        steps = args.steps or math.ceil(len(examples) / (args.batch_size * args.accum))
        print(f"data: {len(examples)} conversations, {stats.tokens} tokens, {stats.target_tokens} targets "
              f"({stats.target_tokens / stats.tokens:.0%}); length min/median/p90/max "
              f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[int(0.9 * len(lengths))]}/{lengths[-1]}; "
              f"{args.eval_examples} held out")
        args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
        base = "fp32" if args.dtype == "float32" else f"bf16 base, fp32 LoRA, bf16 autocast (HF / TRL) on {args.device}"
        print(f"model: {MODEL} {base}, LoRA r={R} alpha={ALPHA} dropout 0 on all linears but lm_head; "
              f"AdamW lr {args.lr:g}, cosine, no warmup, clip 1.0, seed {args.seed}")
        print(f"steps: {steps} (all sides), grad accum {args.accum}; HF/TRL batch {args.batch_size} rows "
              f"({args.batch_size * args.accum} examples/step); lorakit max_tokens {max_tokens} "
              f"({lk_batches} grouped batches/epoch = {len(examples) * args.accum / lk_batches:.2f} examples/step "
              f"on average vs HF {math.ceil(len(examples) / args.batch_size)} batches)")
        print(f"threads: {args.threads} (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}); "
              f"torch {torch.__version__}; each run in a fresh process; timed: steps 2..{steps}")
        a = {"train": train_path, "eval": eval_path, "tmp": tmp, "max_length": args.max_length, "steps": steps,
             "accum": args.accum, "lr": args.lr, "seed": args.seed, "threads": args.threads,
             "batch_size": args.batch_size, "max_tokens": max_tokens, "profile_steps": args.profile_steps,
             "device": args.device, "dtype": args.dtype}
        if args.profile_only:
            r = run_child("lorakit", dict(a, rep=0, profile_only=True, profile_steps=max(1, args.profile_steps)))
            print_profile(r["profile"], matmul_peak(args.threads, dtype=args.dtype))
            return
        peak = matmul_peak(args.threads, device=args.device, dtype=args.dtype)
        results: dict[str, list[dict]] = {s: [] for s in sides}
        for rep in range(args.repeats):
            order = sides if rep % 2 == 0 else sides[::-1]
            seed = args.seed + rep  # adapter init and data order; the rows stay those of --seed
            budget = max_tokens if rep == 0 else choose_max_tokens([len(e) for e in examples], args.batch_size, seed)[0]
            for side in order:
                r = run_child(side, dict(a, rep=rep, seed=seed, max_tokens=budget))
                r["tok_s"], r["tgt_s"] = r["real"] / r["seconds"], r["targets"] / r["seconds"]
                results[side].append(r)
                gpu = f"  peak GPU {r['gpu_peak_mib']:6.0f} MiB" if "gpu_peak_mib" in r else ""
                print(f"  run {rep + 1}/{args.repeats} {side:10s} {r['tok_s']:7.1f} tok/s  "
                      f"peak RSS {r['peak_mib']:6.0f} MiB{gpu}  {r['seconds']:.1f} s timed", flush=True)
        peak = max(peak, matmul_peak(args.threads, device=args.device, dtype=args.dtype))
        report(results, peak, args, steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total wall time {time.perf_counter() - wall:.0f} s")


def print_profile(p: dict, peak: float) -> None:
    """The profile table, and the matmul categories' FLOP rates against the measured peak."""
    print(f"lorakit step profile ({p['steps']} optimizer step(s), {p['real']} real tokens, {p['targets']} targets; "
          f"torch.profiler, op self time by category):")
    print("  " + p["table"].replace("\n", "\n  "))
    t, s = p["flop_terms"], p["seconds"]
    rates = {"base matmuls": 4 * t["n_base"] * p["real"], "LoRA matmuls": 6 * t["n_lora"] * p["real"],
             "LM head + loss": 4 * t["head"] * p["targets"]}
    for cat, flops in rates.items():
        if s.get(cat):
            print(f"  {cat}: {flops / s[cat] / 1e9:.1f} GFLOP/s in the profiled step = {flops / s[cat] / peak:.0%} "
                  f"of the matmul peak ({peak / 1e9:.1f} GFLOP/s)")


def report(results: dict[str, list[dict]], peak: float, args, steps: int) -> None:
    med = lambda side, key: statistics.median(r[key] for r in results[side])  # noqa: E731
    mean = lambda side, key: statistics.mean(r[key] for r in results[side])  # noqa: E731
    sd = lambda side, key: statistics.stdev(r[key] for r in results[side]) if len(results[side]) > 1 else 0.0  # noqa: E731
    last = max(1, min(5, steps // 4))
    print()
    header = ("", "real tok/s", "target tok/s", "peak RSS MiB", "RSS setup MiB", "train +MiB", "rows/step",
              "padding", "held-out loss", "(+-sd)", "(per example)", f"train loss (last {last})")
    table = [header]
    for side, runs in results.items():
        r0 = runs[0]
        train_tail = statistics.mean(statistics.mean(r["losses"][-last:]) for r in runs)
        table.append((side, f"{med(side, 'tok_s'):.1f}", f"{med(side, 'tgt_s'):.1f}", f"{med(side, 'peak_mib'):.0f}",
                      f"{med(side, 'setup_mib'):.0f}", f"{med(side, 'peak_mib') - med(side, 'setup_mib'):.0f}",
                      f"{r0['all_rows'] / steps:.2f}", f"{1 - r0['all_real'] / r0['all_slots']:.1%}",
                      f"{mean(side, 'heldout_after'):.4f}", f"{sd(side, 'heldout_after'):.4f}",
                      f"{mean(side, 'heldout_after_ex'):.4f}", f"{train_tail:.4f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    before = [r for r in results["lorakit"] if "heldout_before" in r]
    if before:
        print(f"held-out loss before training (base model): {before[0]['heldout_before']:.4f} per token, "
              f"{before[0]['heldout_before_ex']:.4f} per example")
    if args.repeats > 1:
        for side, runs in results.items():
            print(f"{side} tok/s samples: " + ", ".join(f"{r['tok_s']:.1f}" for r in runs))

    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    ours = [s for s in results if s in OURS]
    baselines = [s for s in results if s not in OURS]
    if "lorakit-compile" in results:
        print("lorakit-compile step 1 (the compile; not timed above) s: "
              + ", ".join(f"{r['first_step_s']:.1f}" for r in results["lorakit-compile"])
              + "; lorakit step 1 s: " + ", ".join(f"{r['first_step_s']:.1f}" for r in results["lorakit"]))
    print()
    if baselines:
        strongest = max(baselines, key=lambda s: med(s, "tok_s"))
        print(f"strongest baseline (median real tok/s): {strongest}")
    for mine in ours:
        for side in (["lorakit"] if mine == "lorakit-compile" else []) + baselines:
            paired = statistics.median(lk["tok_s"] / b["tok_s"] for lk, b in zip(results[mine], results[side]))
            goal = GOALS.get(side)
            judged = (f"(goal >= {goal:.1f}x)  {verdict(paired >= goal)}" if goal else
                      "(footnote: HF's default sampler)" if side == "hf" else "")
            print(f"{mine} / {side:10s} real tokens/s  {paired:.2f}x paired per round, "
                  f"{med(mine, 'tok_s') / med(side, 'tok_s'):.2f}x of medians  {judged}")
            loss = mean(mine, "heldout_after") - mean(side, "heldout_after")
            spread = max(sd(mine, "heldout_after"), sd(side, "heldout_after"))
            within = "" if args.repeats < 3 else f"; seed sd {spread:.4f}: {verdict(abs(loss) <= spread)}"
            print(f"{mine} - {side:10s} held-out loss  {loss:+.4f}  "
                  f"({loss / mean(side, 'heldout_after'):+.2%}{within})")
    if args.device == "cuda":
        for side in results:
            print(f"{side:10s} peak GPU memory {med(side, 'gpu_peak_mib'):.0f} MiB"
                  + (f"  (lorakit / {side} {med('lorakit', 'gpu_peak_mib') / med(side, 'gpu_peak_mib'):.2f}x)"
                     if side != "lorakit" else ""))
    if "hf-grouped" in results:
        for mine in ours:
            rss = med(mine, "peak_mib") / med("hf-grouped", "peak_mib")
            print(f"{mine} / hf-grouped peak RSS     {rss:.2f}x   (goal <= {RSS_GOAL}x)  {verdict(rss <= RSS_GOAL)}")
    if args.repeats < 3:
        print("(held-out loss: use --repeats 3 or more to compare against the seed spread)")

    for mine in ours:
        r = sorted(results[mine], key=lambda x: x["tok_s"])[len(results[mine]) // 2]
        t = r["flop_terms"]
        linear, attention = _model_flops(r, t)
        achieved = linear / r["seconds"]
        print(f"{mine} achieved (median run): {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of peak "
              f"(goal >= {ROOFLINE_GOAL:.0%})  {verdict(achieved / peak >= ROOFLINE_GOAL)}; "
              f"{(linear + attention) / r['seconds'] / 1e9:.1f} GFLOP/s = "
              f"{(linear + attention) / r['seconds'] / peak:.1%} with attention")
    r = sorted(results["lorakit"], key=lambda x: x["tok_s"])[len(results["lorakit"]) // 2]
    t = r["flop_terms"]
    linear, attention = _model_flops(r, t)
    print()
    print(f"FLOP model: N_base {t['n_base']:,} (q,k,v,o,gate,up,down x {t['layers']} layers), N_lora {t['n_lora']:,}, "
          f"lm_head V*d {t['head']:,} at targets only")
    print(f"  per step window: 4*N_base*real + 6*N_lora*real + 4*V*d*targets = {linear / 1e12:.3f} TFLOP over "
          f"{r['real']} real tokens / {r['targets']} targets; attention 6*layers*d_attn*sum(len^2) = "
          f"{attention / 1e12:.3f} TFLOP")
    what = f"{args.dtype} matmul peak ({args.threads} threads, 2048^3)" if args.device == "cpu" else \
        "bf16 matmul peak (cuda, 8192^3)"
    print(f"measured {what}: {peak / 1e9:.1f} GFLOP/s (the achieved figures above are against this)")
    for side in baselines:
        h = sorted(results[side], key=lambda x: x["tok_s"])[len(results[side]) // 2]
        hl, _ = _model_flops(h, t)
        print(f"{side} achieved (same useful-FLOP model): {hl / h['seconds'] / 1e9:.1f} GFLOP/s = "
              f"{hl / h['seconds'] / peak:.1%} of peak")
    profiled = [x["profile"] for x in results["lorakit"] if "profile" in x]
    if profiled:
        print()
        print_profile(profiled[0], peak)
    print("note: timings are from whatever machine ran this; on a shared machine they are noisy (see --repeats)")


if __name__ == "__main__":
    main()
