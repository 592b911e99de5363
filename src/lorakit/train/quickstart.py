"""`lorakit quickstart`: the whole promise of lorakit in one run, offline, in a few minutes on a CPU.

SmolLM2-135M-Instruct cannot turn a calendar note ("Dinner with Priya on Friday at 7pm.") into the
record `dinner|Priya|Fri|7:00pm`. The run measures that (exact match on held-out notes), trains a
LoRA adapter on 400 notes, measures again, shows before/after answers side by side and saves
everything a user needs next. `configs/quickstart.yaml` is the same run as a config file
(a test keeps the two equal): `lorakit train configs/quickstart.yaml` trains it without the show.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Callable

from ..inject import describe_trainable
from ..strict import ConfigError
from ..yamlconfig import load_config
from .config import RunConfig
from .evaluate import EvalResult, Generation
from .loop import TrainResult, evaluate, train
from .prepare import load_data, prepare

QUICKSTART: dict = {
    "task": "sft",
    "model": {"name": "smollm2-135m-instruct"},
    "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
    "data": {"train": "bundled:quickstart_train", "eval": "bundled:quickstart_eval",
             "max_length": 128, "batching": "grouped", "max_tokens": 512},
    "train": {"steps": 30, "lr": 2.0e-3, "schedule": "cosine", "warmup_steps": 3, "seed": 0},
    "eval": {"max_new_tokens": 24, "batch_size": 30},
    "output_dir": "runs/quickstart",
}


@dataclass
class QuickstartReport:
    config: RunConfig
    before: EvalResult
    after: EvalResult
    result: TrainResult
    seconds: float


def quickstart_config(overrides: list[str] = ()) -> RunConfig:
    return load_config(RunConfig, None, list(overrides), base=QUICKSTART)


def run_quickstart(overrides: list[str] = (), echo: Callable[[str], None] = print,
                   quiet: bool = False) -> QuickstartReport:
    """Evaluate the base model, fine-tune, evaluate again, save, and tell the user what to do next."""
    start = time.perf_counter()
    config = quickstart_config(overrides)
    data = load_data(config)
    if not (config.eval.generate and data.eval is not None and data.eval.kind == "chat"):
        raise ConfigError("the before/after comparison needs chat data in data.eval and eval.generate=true")
    echo(f"data: {len(data.train)} training notes, {len(data.eval)} held-out notes")
    echo(f"loading {config.model.name} (the first run converts the GGUF file once; later runs read a cache)")
    run = prepare(config, data)
    echo(f"model ready after {time.perf_counter() - start:.0f}s; {describe_trainable(run.model)}")

    before = evaluate(run, config)
    echo(f"base model: exact match {before.exact_match:.0%} on {len(before.samples)} held-out notes")
    if config.out.joinpath("checkpoints").is_dir():
        shutil.rmtree(config.out / "checkpoints")  # a fresh run, not a resume of an older quickstart
    result = train(config, run=run, quiet=quiet)
    after = result.final_eval
    echo(f"fine-tuned: exact match {after.exact_match:.0%} (was {before.exact_match:.0%}); "
         f"{result.steps} steps in {result.seconds:.0f}s")
    echo("")
    echo(side_by_side(run.eval_conversations, before.samples, after.samples))
    seconds = time.perf_counter() - start
    out = config.out
    echo("")
    echo(f"saved to {out}/: adapter/ (peft format), config.yaml, metrics.jsonl, loss_curve.png  [{seconds:.0f}s total]")
    echo(f"  chat with it:   lorakit chat --adapter {out}/adapter")
    echo(f"  evaluate it:    lorakit eval --adapter {out}/adapter --data {config.data.eval}")
    echo(f"  merge it:       lorakit merge {out}/adapter {out}/merged")
    return QuickstartReport(config, before, after, result, seconds)


def side_by_side(conversations: list, before: list[Generation], after: list[Generation], rows: int = 5,
                 width: int = 34) -> str:
    """A small table: the note, the base model's answer, the fine-tuned answer (✓ = exact match)."""
    def cell(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    def mark(g: Generation) -> str:
        return "✓" if g.correct else "✗"

    lines = [f"{'note':<{width}}  {'before':<{width + 2}}  after", "-" * (3 * width + 8)]
    for conv, b, a in list(zip(conversations, before, after))[:rows]:
        note = conv[-2]["content"]  # the user turn the answer replies to
        lines.append(f"{cell(note):<{width}}  {mark(b)} {cell(b.prediction):<{width}}  {mark(a)} {cell(a.prediction)}")
    return "\n".join(lines)
