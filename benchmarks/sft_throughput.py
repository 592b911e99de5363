"""SFT throughput and memory: lorakit's trainer vs transformers.Trainer + peft (issue #3).

    python benchmarks/sft_throughput.py [--examples 96] [--steps N] [--threads 2] [--repeats 1] [--quick]

Both sides train LoRA (r=16, alpha=32, dropout 0, every linear but lm_head) on the embedded
SmolLM2-135M-Instruct (fp32, sdpa attention), from the same adapter init, with AdamW at the same lr,
cosine decay without warmup, gradient clipping at 1.0, the same seed and the same number of optimizer
steps (default: one epoch of the HF side, ceil(examples / (batch × accum))).

Data: an instruction set generated here with a fixed seed (messages format: reverse / sort /
capitalise / number / count a list of words; word counts log-normal, so conversations span
~45-450 tokens with SmolLM2's default system prompt; about half of the non-system tokens are
assistant targets), written to a temp JSONL that both sides read, plus a held-out set from another seed.
Both sides tokenize with `lorakit.data.encode_dataset` (same ids, same assistant-only labels).

    lorakit   `lorakit.train.train(config)`: length-grouped right-padded batches under a token
              budget `data.max_tokens` (chosen here so its examples per micro-batch average ~ the HF
              batch size), `grad_accum` micro-batches per step, LM head at target positions only.
    HF        `Trainer(model=get_peft_model(...))` with `per_device_train_batch_size`, the same
              `gradient_accumulation_steps`, a random sampler (HF's default; `--hf-grouped` adds a
              run with `train_sampling_strategy="group_by_length"`) and `DataCollatorForSeq2Seq`
              padding each batch to its longest row. Loss normalised per target token over the whole
              accumulated batch (HF: `num_items_in_batch`), as lorakit does.

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
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

import torch

MODEL = "smollm2-135m-instruct"
R, ALPHA = 16, 32

WORDS = """apple river stone cloud garden window silver market candle bridge forest engine
letter pocket winter summer autumn spring yellow purple orange planet rocket ticket pencil
basket castle dragon island jacket kitchen ladder mirror needle ocean pepper rabbit saddle
teacher tunnel valley wagon zebra anchor blanket button camera carpet copper desert doctor
feather finger flower guitar hammer harbor helmet honey jungle kettle lemon magnet meadow
monkey motor nickel noodle orchard oyster paddle parrot pillow pirate puzzle quartz radio
ribbon robot salmon shadow shovel signal spider sponge statue sugar tablet tiger tomato
tower travel trumpet umbrella velvet violin walnut whistle wizard yogurt acorn badge bakery
beacon bottle breeze cactus canyon cherry circus comet cookie cotton crayon crystal dancer
diamond dolphin elbow falcon fossil galaxy glacier goblet harvest horizon iceberg insect
lantern lizard marble melody mitten nectar oasis olive palace panda pebble pigeon pyramid
quiver rainbow raven saucer scarf sketch sleeve sparrow spiral summit thistle thunder
tulip turtle vapor voyage waffle walrus willow""".split()


# ---------------------------------------------------------------------------------------------
# data


#: Word-count cap per task: SmolLM2 spends ~1.1 tokens on a word, ~3 capitalised, ~5 numbered, so
#: every conversation stays under ~470 tokens (max_length 512: nothing is truncated).
MAX_WORDS = {"reverse": 180, "sort": 180, "upper": 100, "number": 70, "count": 300}


def _conversation(rng: random.Random) -> dict:
    """One user/assistant exchange about a list of words; its length is log-normal."""
    task = rng.choices(list(MAX_WORDS), weights=[3, 3, 2, 2, 1])[0]
    k = int(min(MAX_WORDS[task], max(2, rng.lognormvariate(math.log(28), 0.75))))
    words = [rng.choice(WORDS) for _ in range(k)]
    listed = " ".join(words)
    if task == "reverse":
        prompt, answer = f"Reverse the order of these words:\n{listed}", " ".join(reversed(words))
    elif task == "sort":
        prompt, answer = f"Sort these words alphabetically:\n{listed}", " ".join(sorted(words))
    elif task == "upper":
        prompt, answer = f"Rewrite these words in capital letters:\n{listed}", listed.upper()
    elif task == "number":
        prompt = f"Write these words as a numbered list, one per line:\n{listed}"
        answer = "\n".join(f"{i}. {w}" for i, w in enumerate(words, 1))
    else:
        target = rng.choice(words)
        n = words.count(target)
        prompt = f"How many times does the word '{target}' appear in this list?\n{listed}"
        answer = f"The word '{target}' appears {n} time{'s' if n != 1 else ''} in the list of {k} words."
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def write_dataset(path: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(_conversation(rng)) + "\n")


def encoded(tokenizer, path: str, max_length: int):
    from lorakit.data import encode_dataset, load_dataset

    return encode_dataset(tokenizer, load_dataset(path, "messages"), max_length)


def choose_max_tokens(lengths: list[int], batch_size: int, seed: int) -> tuple[int, int]:
    """lorakit's token budget whose length-grouped epoch has the batch count closest to
    ceil(n / batch_size) (the HF epoch); returns (max_tokens, batches per epoch)."""
    from lorakit.data import length_grouped_plan
    from lorakit.data.batching import _generator

    want = math.ceil(len(lengths) / batch_size)
    best = None
    for budget in range(max(lengths), max(lengths) * batch_size * 4, 16):
        n = len(length_grouped_plan(lengths, budget, _generator(seed, 0)))
        key = (abs(n - want), budget)
        if best is None or key < best[0]:
            best = (key, budget, n)
        if n < want:
            break
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------
# shared by both workers


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def _touch(model) -> None:
    """Read every weight once, so "setup" RSS includes them (safetensors pages load lazily)."""
    for p in model.parameters():
        p.sum()


def _init_a(name: str, weight: torch.Tensor, seed: int) -> None:
    """The same Kaiming-uniform A on both sides, drawn from a generator keyed by the module path."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    bound = 1.0 / math.sqrt(weight.shape[1])  # kaiming_uniform_(a=sqrt(5)) on an (r, in) matrix
    with torch.no_grad():
        weight.copy_(torch.rand(weight.shape, generator=g) * 2 * bound - bound)


@torch.no_grad()
def heldout_loss(model, examples) -> tuple[float, float]:
    """(mean cross-entropy per target token, mean over examples of their per-token mean), one
    example at a time (no padding), full logits."""
    import torch.nn.functional as F

    model.eval()
    total, n, per_example = 0.0, 0, []
    for e in examples:
        ids = torch.tensor([e.input_ids])
        labels = torch.tensor([e.labels])[:, 1:]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        loss = float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                     reduction="sum"))
        total, n = total + loss, n + int((labels != -100).sum())
        per_example.append(loss / int((labels != -100).sum()))
    return total / n, statistics.mean(per_example)


def _batch_stats(batch: dict) -> dict:
    mask = batch["attention_mask"]
    rows = mask.sum(1)
    return {"rows": int(mask.shape[0]), "slots": int(mask.numel()), "real": int(rows.sum()),
            "targets": int((batch["labels"][:, 1:] != -100).sum()), "sq": int((rows * rows).sum())}


def _window(micro: list[dict], step_ends: list[float], accum: int) -> dict:
    """Totals over steps 2..S (micro-batches accum..S·accum) and that span's wall seconds."""
    steps = len(step_ends)
    sel = micro[accum: steps * accum]
    tot = {k: sum(m[k] for m in sel) for k in ("rows", "slots", "real", "targets", "sq")}
    allm = micro[: steps * accum]
    tot.update(seconds=step_ends[-1] - step_ends[0], steps=steps - 1,
               all_rows=sum(m["rows"] for m in allm), all_slots=sum(m["slots"] for m in allm),
               all_real=sum(m["real"] for m in allm))
    return tot


def _flop_terms(model) -> dict:
    """Parameter counts for the FLOP model (see the module docstring)."""
    cfg = model.config
    head = model.get_output_embeddings().weight
    n_base = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not head and not module.weight.requires_grad:
            n_base += module.weight.numel()
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"n_base": n_base, "n_lora": n_lora, "head": head.numel(), "layers": cfg.num_hidden_layers,
            "d_attn": cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)}


# ---------------------------------------------------------------------------------------------
# workers (each in a fresh process)


def lorakit_worker(a: dict) -> dict:
    from lorakit import LoraConfig
    from lorakit.train.config import RunConfig
    from lorakit.train.loop import train
    from lorakit.train.prepare import load_data, prepare
    from lorakit.tuners.lora import LoraWrapper

    torch.set_num_threads(a["threads"])
    imported = _peak_rss_mib()
    out = os.path.join(a["tmp"], f"lorakit-run{a['rep']}")
    config = RunConfig(
        model={"name": MODEL},
        lora=LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear"),
        data={"train": a["train"], "format": "messages", "max_length": a["max_length"], "batching": "grouped",
              "max_tokens": a["max_tokens"]},
        train={"steps": a["steps"], "grad_accum": a["accum"], "lr": a["lr"], "schedule": "cosine",
               "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": a["seed"], "log_every": 1},
        eval={"generate": False}, output_dir=out)
    run = prepare(config, load_data(config))
    for name, module in run.model.named_modules():
        if isinstance(module, LoraWrapper):
            _init_a(name, module.active.lora_A, a["seed"])
    micro: list[dict] = []
    loss_sum = run.loss_sum

    def recording_loss_sum(model, batch):
        micro.append(_batch_stats(batch))
        return loss_sum(model, batch)

    run.loss_sum = recording_loss_sum
    _touch(run.model)
    setup = _peak_rss_mib()
    start = time.perf_counter()
    result = train(config, run=run, quiet=True)
    total_s = time.perf_counter() - start
    peak = _peak_rss_mib()
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    ends = [r["elapsed_s"] for r in rows if r.get("split") == "train"]
    res = {"side": "lorakit", "imported_mib": imported, "setup_mib": setup, "peak_mib": peak,
           "train_call_s": total_s, "losses": result.losses, **_window(micro, ends, a["accum"]),
           "flop_terms": _flop_terms(run.model)}
    from lorakit.data import encode_dataset, load_dataset

    evals, _ = encode_dataset(run.tokenizer, load_dataset(a["eval"], "messages"), a["max_length"])
    res["heldout_after"], res["heldout_after_ex"] = heldout_loss(run.model, evals)
    if a["rep"] == 0:
        from lorakit import disable_adapters

        with disable_adapters(run.model):
            res["heldout_before"], res["heldout_before_ex"] = heldout_loss(run.model, evals)
    return res


def hf_worker(a: dict, grouped: bool) -> dict:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from lorakit.models import load_causal_lm

    torch.set_num_threads(a["threads"])
    imported = _peak_rss_mib()
    model, tokenizer = load_causal_lm(MODEL)
    tokenizer.padding_side = "right"  # load_causal_lm sets left padding for generation
    torch.manual_seed(a["seed"])
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            _init_a(name.removeprefix("base_model.model."), module.lora_A["default"].weight, a["seed"])
    examples, _ = encoded(tokenizer, a["train"], a["max_length"])
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": e.labels} for e in examples]
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    micro: list[dict] = []

    def collate(features):
        batch = pad(features)
        micro.append(_batch_stats(batch))
        return batch

    ends: list[float] = []

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=os.path.join(a["tmp"], f"hf-run{a['rep']}"), per_device_train_batch_size=a["batch_size"],
        gradient_accumulation_steps=a["accum"], max_steps=a["steps"], learning_rate=a["lr"],
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=a["seed"],
        data_seed=a["seed"], logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if grouped else "random")
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[StepEnd()])
    _touch(model)
    setup = _peak_rss_mib()
    start = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - start
    peak = _peak_rss_mib()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    evals, _ = encoded(tokenizer, a["eval"], a["max_length"])
    after, after_ex = heldout_loss(model, evals)
    return {"side": "hf-grouped" if grouped else "hf", "imported_mib": imported, "setup_mib": setup,
            "peak_mib": peak, "train_call_s": total_s, "losses": losses, **_window(micro, ends, a["accum"]),
            "heldout_after": after, "heldout_after_ex": after_ex}


# ---------------------------------------------------------------------------------------------
# parent


def matmul_peak(threads: int, n: int = 2048, seconds: float = 2.0) -> float:
    """fp32 FLOP/s of back-to-back (n × n) @ (n × n) matmuls: the best of 1-matmul timings."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.matmul(a, b, out=c)
    best, start = math.inf, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


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
    ap.add_argument("--batch-size", type=int, default=4, help="HF per_device_train_batch_size")
    ap.add_argument("--accum", type=int, default=2, help="gradient accumulation (both)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1,
                    help="interleaved runs of each side; repeat i uses seed+i for init and data order (both sides)")
    ap.add_argument("--hf-grouped", action="store_true", help="also run HF with group_by_length sampling")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 32 examples, 8 held out")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        a = json.loads(args.worker_args)
        result = lorakit_worker(a) if args.worker == "lorakit" else hf_worker(a, args.worker == "hf-grouped")
        print(json.dumps(result))
        return

    if args.quick:
        args.examples, args.eval_examples = 32, 8
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
        print(f"model: {MODEL} fp32, LoRA r={R} alpha={ALPHA} dropout 0 on all linears but lm_head; "
              f"AdamW lr {args.lr:g}, cosine, no warmup, clip 1.0, seed {args.seed}")
        print(f"steps: {steps} (both), grad accum {args.accum}; HF batch {args.batch_size} rows "
              f"({args.batch_size * args.accum} examples/step); lorakit max_tokens {max_tokens} "
              f"({lk_batches} grouped batches/epoch = {len(examples) * args.accum / lk_batches:.2f} examples/step "
              f"on average vs HF {math.ceil(len(examples) / args.batch_size)} batches)")
        print(f"threads: {args.threads} (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}); "
              f"torch {torch.__version__}; each run in a fresh process; timed: steps 2..{steps}")
        peak = matmul_peak(args.threads)

        a = {"train": train_path, "eval": eval_path, "tmp": tmp, "max_length": args.max_length, "steps": steps,
             "accum": args.accum, "lr": args.lr, "seed": args.seed, "threads": args.threads,
             "batch_size": args.batch_size, "max_tokens": max_tokens}
        sides = ["lorakit", "hf"] + (["hf-grouped"] if args.hf_grouped else [])
        results: dict[str, list[dict]] = {s: [] for s in sides}
        for rep in range(args.repeats):
            order = sides if rep % 2 == 0 else sides[::-1]
            seed = args.seed + rep  # adapter init and data order; the rows stay those of --seed
            budget = max_tokens if rep == 0 else choose_max_tokens([len(e) for e in examples], args.batch_size, seed)[0]
            for side in order:
                r = run_child(side, dict(a, rep=rep, seed=seed, max_tokens=budget))
                r["tok_s"], r["tgt_s"] = r["real"] / r["seconds"], r["targets"] / r["seconds"]
                results[side].append(r)
                print(f"  run {rep + 1}/{args.repeats} {side:10s} {r['tok_s']:7.1f} tok/s  "
                      f"peak RSS {r['peak_mib']:6.0f} MiB  {r['seconds']:.1f} s timed")
        peak = max(peak, matmul_peak(args.threads))
        report(results, peak, args, steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total wall time {time.perf_counter() - wall:.0f} s")


def report(results: dict[str, list[dict]], peak: float, args, steps: int) -> None:
    med = lambda side, key: statistics.median(r[key] for r in results[side])  # noqa: E731
    mean = lambda side, key: statistics.mean(r[key] for r in results[side])  # noqa: E731
    last = max(1, min(5, steps // 4))
    print()
    header = ("", "real tok/s", "target tok/s", "peak RSS MiB", "RSS setup MiB", "train +MiB", "rows/step",
              "padding", "held-out loss", "(per example)", f"train loss (last {last})")
    table = [header]
    for side, runs in results.items():
        r0 = runs[0]
        train_tail = statistics.mean(statistics.mean(r["losses"][-last:]) for r in runs)
        table.append((side, f"{med(side, 'tok_s'):.1f}", f"{med(side, 'tgt_s'):.1f}", f"{med(side, 'peak_mib'):.0f}",
                      f"{med(side, 'setup_mib'):.0f}", f"{med(side, 'peak_mib') - med(side, 'setup_mib'):.0f}",
                      f"{r0['all_rows'] / steps:.2f}", f"{1 - r0['all_real'] / r0['all_slots']:.1%}",
                      f"{mean(side, 'heldout_after'):.4f}", f"{mean(side, 'heldout_after_ex'):.4f}", f"{train_tail:.4f}"))
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

    print()
    tok = med("lorakit", "tok_s") / med("hf", "tok_s")
    tgt = med("lorakit", "tgt_s") / med("hf", "tgt_s")
    rss = med("lorakit", "peak_mib") / med("hf", "peak_mib")
    loss = mean("lorakit", "heldout_after") / mean("hf", "heldout_after")
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    print(f"lorakit / HF  real tokens/s    {tok:.2f}x   (goal >= 1.5x)  {verdict(tok >= 1.5)}")
    print(f"lorakit / HF  target tokens/s  {tgt:.2f}x")
    print(f"lorakit / HF  peak RSS         {rss:.2f}x   (goal <= 0.7x)  {verdict(rss <= 0.7)}")
    seeds = "" if args.repeats == 1 else f", mean over {args.repeats} seeds; per seed " + ", ".join(
        f"{lk['heldout_after'] / hf['heldout_after'] - 1:+.2%}" for lk, hf in zip(results["lorakit"], results["hf"]))
    print(f"lorakit / HF  held-out loss    {loss:.4f}  ({loss - 1:+.2%}{seeds}; goal within +-2%)  "
          f"{verdict(abs(loss - 1) <= 0.02)}")

    r = results["lorakit"][len(results["lorakit"]) // 2]
    t = r["flop_terms"]
    linear, attention = _model_flops(r, t)
    achieved = linear / r["seconds"]
    print()
    print(f"FLOP model: N_base {t['n_base']:,} (q,k,v,o,gate,up,down x {t['layers']} layers), N_lora {t['n_lora']:,}, "
          f"lm_head V*d {t['head']:,} at targets only")
    print(f"  per step window: 4*N_base*real + 6*N_lora*real + 4*V*d*targets = {linear / 1e12:.3f} TFLOP over "
          f"{r['real']} real tokens / {r['targets']} targets; attention 6*layers*d_attn*sum(len^2) = "
          f"{attention / 1e12:.3f} TFLOP")
    print(f"measured fp32 matmul peak ({args.threads} threads, 2048^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"lorakit achieved: {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of peak "
          f"({(linear + attention) / r['seconds'] / 1e9:.1f} GFLOP/s = {(linear + attention) / r['seconds'] / peak:.1%} "
          f"with attention)")
    for side in results:
        if side == "lorakit":
            continue
        h = results[side][len(results[side]) // 2]
        hl, ha = _model_flops(h, t)
        print(f"{side} achieved (same useful-FLOP model): {hl / h['seconds'] / 1e9:.1f} GFLOP/s = "
              f"{hl / h['seconds'] / peak:.1%} of peak")
    print("note: a shared 2-core machine; timings are noisy (see --repeats)")


if __name__ == "__main__":
    main()
