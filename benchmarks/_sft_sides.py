"""The data and the per-side workers of benchmarks/sft_throughput.py (see its docstring).

Each worker runs in a fresh process (`sft_throughput.py --worker SIDE`), trains one side and
returns its measurements as a dict: timed window totals, peak RSS, losses, held-out loss.
`a["device"]` cuda (`--device cuda`): every side loads the base in bfloat16 and trains fp32 LoRA
weights under bf16 autocast on the GPU (lorakit: `model.dtype: bfloat16`, `train.device: cuda`;
HF / TRL: peft's fp32 adapters, `bf16=True`), and reports its peak GPU memory too.
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import statistics
import time
import zlib
from contextlib import nullcontext

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


def _cuda(a: dict) -> bool:
    return a.get("device", "cpu") == "cuda"


def _dtype(a: dict) -> str:
    """The base's dtype (`--dtype`; default bfloat16 on the GPU, float32 on the CPU); LoRA weights stay fp32."""
    return a.get("dtype") or ("bfloat16" if _cuda(a) else "float32")


def _gpu_peak(a: dict) -> dict:
    return {"gpu_peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20} if _cuda(a) else {}


def _sync(a: dict) -> None:
    """Step-end timestamps mean the step's GPU work is done (CUDA runs asynchronously)."""
    if _cuda(a):
        torch.cuda.synchronize()


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
    device = next(model.parameters()).device
    bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())  # a bf16 base: evaluated under bf16 autocast
    for e in examples:
        ids = torch.tensor([e.input_ids], device=device)
        labels = torch.tensor([e.labels], device=device)[:, 1:]
        with torch.autocast(device.type, torch.bfloat16) if bf16 else nullcontext():
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
        model={"name": MODEL, "dtype": _dtype(a)},
        lora=LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear"),
        data={"train": a["train"], "format": "messages", "max_length": a["max_length"], "batching": "grouped",
              "max_tokens": a["max_tokens"]},
        train={"steps": a["steps"], "grad_accum": a["accum"], "lr": a["lr"], "schedule": "cosine",
               "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": a["seed"], "log_every": 1,
               "device": a.get("device", "cpu"), "compile": a.get("compile", False)},
        eval={"generate": False}, output_dir=out)
    run = prepare(config, load_data(config))
    for name, module in run.model.named_modules():
        if isinstance(module, LoraWrapper):
            _init_a(name, module.active.lora_A, a["seed"])
    if a.get("profile_only"):
        return {"side": "lorakit", "profile": lorakit_profile(run, a)}
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
    res = {"side": a.get("side", "lorakit"), "first_step_s": ends[0], "imported_mib": imported,
           "setup_mib": setup, "peak_mib": peak, "train_call_s": total_s, "losses": result.losses, **_window(micro, ends, a["accum"]),
           "flop_terms": _flop_terms(run.model), **_gpu_peak(a)}
    from lorakit.data import encode_dataset, load_dataset

    evals, _ = encode_dataset(run.tokenizer, load_dataset(a["eval"], "messages"), a["max_length"])
    res["heldout_after"], res["heldout_after_ex"] = heldout_loss(run.model, evals)
    if a["rep"] == 0 and not a.get("compile"):
        from lorakit import disable_adapters

        with disable_adapters(run.model):
            res["heldout_before"], res["heldout_before_ex"] = heldout_loss(run.model, evals)
        if a.get("profile_steps"):
            run.loss_sum = loss_sum
            res["profile"] = lorakit_profile(run, a)
    return res


def _trainer_arguments(a: dict, side: str) -> dict:
    """The `TrainingArguments` both HF-based sides share: lorakit's schedule, no saving, no logging sinks."""
    return dict(
        output_dir=os.path.join(a["tmp"], f"{side}-run{a['rep']}"), per_device_train_batch_size=a["batch_size"],
        gradient_accumulation_steps=a["accum"], max_steps=a["steps"], learning_rate=a["lr"],
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=a["seed"],
        data_seed=a["seed"], logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=not _cuda(a), bf16=_dtype(a) == "bfloat16", dataloader_num_workers=0)


def hf_worker(a: dict, grouped: bool) -> dict:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from lorakit.models import load_causal_lm

    torch.set_num_threads(a["threads"])
    imported = _peak_rss_mib()
    model, tokenizer = load_causal_lm(MODEL, _dtype(a))
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
            _sync(a)
            ends.append(time.perf_counter())

    args = TrainingArguments(**_trainer_arguments(a, "hf"), remove_unused_columns=False,
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
            "heldout_after": after, "heldout_after_ex": after_ex, **_gpu_peak(a)}


def _packed_stats(batch: dict) -> dict:
    """`_batch_stats` of a padding-free batch: one row of concatenated sequences, no padding."""
    pos = batch["position_ids"].flatten()
    starts = torch.nonzero(pos == 0).flatten().tolist() + [pos.numel()]
    lens = torch.tensor([b - a for a, b in zip(starts, starts[1:])])
    return {"rows": len(lens), "slots": pos.numel(), "real": pos.numel(),
            "targets": int((batch["labels"][:, 1:] != -100).sum()), "sq": int((lens * lens).sum())}


def trl_worker(a: dict) -> dict:
    """TRL's SFTTrainer + peft: padding-free batches (each micro-batch's rows concatenated into one
    sequence, attention kept inside each example from the restarting position ids), the dataset
    given pre-tokenised with lorakit's assistant-only labels (TRL keeps a `labels` column as is),
    fp32 on the CPU (SFTConfig's bf16 default off), bf16 autocast with `--dtype bfloat16` (the default with
    `--device cuda`), and no gradient checkpointing
    (SFTConfig turns it on by default; off is faster, and this benchmark is about speed)."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lorakit.models import load_causal_lm

    torch.set_num_threads(a["threads"])
    imported = _peak_rss_mib()
    model, tokenizer = load_causal_lm(MODEL, _dtype(a))
    tokenizer.padding_side = "right"
    torch.manual_seed(a["seed"])
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            _init_a(name.removeprefix("base_model.model."), module.lora_A["default"].weight, a["seed"])
    examples, _ = encoded(tokenizer, a["train"], a["max_length"])
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    ends: list[float] = []

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(a)
            ends.append(time.perf_counter())

    args = SFTConfig(**_trainer_arguments(a, "trl"), padding_free=True, max_length=None,
        gradient_checkpointing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StepEnd()])
    micro: list[dict] = []
    collate = trainer.data_collator

    def recording(features):
        batch = collate(features)
        micro.append(_packed_stats(batch))
        return batch

    trainer.data_collator = recording
    _touch(model)
    setup = _peak_rss_mib()
    start = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - start
    peak = _peak_rss_mib()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    evals, _ = encoded(tokenizer, a["eval"], a["max_length"])
    after, after_ex = heldout_loss(model, evals)
    return {"side": "trl", "imported_mib": imported, "setup_mib": setup, "peak_mib": peak,
            "train_call_s": total_s, "losses": losses, **_window(micro, ends, a["accum"]),
            "heldout_after": after, "heldout_after_ex": after_ex, **_gpu_peak(a)}


def lorakit_profile(run, a: dict) -> dict:
    """Seconds per category of `a["profile_steps"]` lorakit steps (lorakit.train.profile), on
    the run's own batches and a fresh AdamW over its adapter."""
    from lorakit.train.optim import build_optimizer
    from lorakit.train.profile import profile_steps

    def stream():
        while True:
            yield from run.train_batches

    optimizer = build_optimizer(run.model, lr=a["lr"])
    p = profile_steps(run.model, run.loss_sum, stream(), optimizer, steps=a["profile_steps"],
                      grad_accum=a["accum"], max_grad_norm=1.0)
    return {"seconds": p.seconds, "wall_s": p.wall_s, "unprofiled_s": p.unprofiled_s, "steps": p.steps,
            "table": p.table(), "real": p.real_tokens, "targets": p.target_tokens, "flop_terms": _flop_terms(run.model)}
