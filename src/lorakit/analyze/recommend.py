"""Which method and settings for a model, a memory budget, a data size and a task (`lorakit recommend`).

A small rule table: each rule is a predicate on the situation, the settings it chooses and the
reason, which cites the measured table in the README it rests on (sections "Benchmarks" and
"Analysis tools"). Rules are tried in order within each decision; the first that applies wins.
Memory is judged with `estimate_memory` (the estimator of `lorakit analyze memory`).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from ..errors import InputError
from .memory import GIB, Dtype, Method, ModelShape, estimate_memory, load_shape


class Task(str, enum.Enum):
    SFT = "sft"
    CLASSIFICATION = "classification"


@dataclass(frozen=True)
class Situation:
    shape: ModelShape
    memory_bytes: float
    examples: int
    task: Task
    dtype: Dtype
    method: Optional[Method] = None  # set once the method is chosen (the learning-rate rules read it)


@dataclass(frozen=True)
class Rule:
    """When `applies`, choose `settings` because of `reason` (which names the README table behind it)."""

    name: str
    applies: Callable[[Situation], bool]
    settings: dict
    reason: str


FULL_NEEDS_EXAMPLES = 50_000
SMALL_DATA = 2_000

METHOD_RULES: tuple[Rule, ...] = (
    Rule("small-data-adapter", lambda s: s.examples < FULL_NEEDS_EXAMPLES, {"prefer": [Method.LORA, Method.QLORA]},
         "with fewer than 50k examples an adapter generalises at least as well as full fine-tuning: on the "
         "600-example classification set LoRA r=8 reached 93.3% held-out accuracy, full fine-tuning 89.3% "
         "(README, Benchmarks: Classification)"),
    Rule("large-data-full", lambda s: s.examples >= FULL_NEEDS_EXAMPLES, {"prefer": [Method.FULL, Method.LORA,
                                                                                      Method.QLORA]},
         "with 50k+ examples full fine-tuning can use its capacity; it needs 4 copies of every weight "
         "(weights, gradients, two AdamW moments: the full rows of the estimator-vs-measured table, README "
         "Analysis tools), so it is taken only when it fits"),
)

FIT_RULES: tuple[Rule, ...] = (
    Rule("no-checkpointing-first", lambda s: True, {"gradient_checkpointing": False},
         "gradient checkpointing recomputes each layer in the backward: QLoRA's step went from 14.3 s to 21.5 s "
         "(README, Benchmarks: QLoRA), so it is switched on only when the run does not fit without it"),
    Rule("checkpointing-to-fit", lambda s: True, {"gradient_checkpointing": True},
         "with checkpointing the saved activations shrink to one tensor per layer: measured peak RSS 1879 → 985 "
         "MiB for LoRA at 512 tokens (README, Analysis tools: estimator vs measured)"),
)

QLORA_REASON = ("a 4-bit base takes 0.516 bytes per weight instead of 4 (fp32) or 2 (bf16); it costs step "
                "time: 11.5 s LoRA vs 14.3 s QLoRA per step (README, Benchmarks: QLoRA), so QLoRA is chosen "
                "only when LoRA does not fit")

RANK_RULES: tuple[Rule, ...] = (
    Rule("classification-r8", lambda s: s.task is Task.CLASSIFICATION, {"r": 8, "lora_alpha": 16},
         "r=8 (1.47% of MiniLM trainable, head included) reached 93.3% on the bundled ticket set "
         "(README, Benchmarks: Classification)"),
    Rule("sft-r16", lambda s: s.task is Task.SFT, {"r": 16, "lora_alpha": 32},
         "r=16 on every linear layer took the quickstart task from 0% to 100% exact match in 30 steps "
         "(README, The quickstart); `lorakit analyze adapter` on the trained adapter says whether a smaller "
         "rank holds its update"),
)

LR_RULES: tuple[Rule, ...] = (
    Rule("full-lr", lambda s: s.method is Method.FULL, {"lr": 2e-4},
         "full fine-tuning moves every weight: of the two rates measured on MiniLM, 2e-4 reached 89.3% and 5e-5 "
         "88.0% (README, Benchmarks: Classification; configs/classify_full.yaml)"),
    Rule("small-data-lr", lambda s: s.examples < SMALL_DATA, {"lr": 2e-3},
         "a few hundred examples and a few dozen steps: the quickstart and the classification LoRA run train "
         "at lr 2e-3 (configs/quickstart.yaml: 0% → 100% exact match, README The quickstart; "
         "configs/classify_lora.yaml: 93.3%, README Benchmarks: Classification)"),
    Rule("default-lr", lambda s: True, {"lr": 2e-4},
         "the trainer's default (train.lr = 2e-4; README, Configs); the README has no measured table for "
         "adapter runs on more data, so the default stands"),
)

BATCH_TOKENS = (4096, 2048, 1024, 512)
"""Micro-batch token budgets tried, largest first (data.max_tokens); grad_accum makes up the rest."""


@dataclass
class Recommendation:
    method: Optional[Method]
    settings: dict = field(default_factory=dict)
    estimate_bytes: Optional[float] = None
    reasons: list[tuple[str, str]] = field(default_factory=list)  # (rule name, reason)

    def to_dict(self) -> dict:
        return {"method": self.method.value if self.method else None,
                "settings": {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in self.settings.items()},
                "estimate_gib": None if self.estimate_bytes is None else round(self.estimate_bytes / GIB, 2),
                "reasons": [{"rule": n, "reason": r} for n, r in self.reasons]}


def parse_params(text: str) -> int:
    """'7B', '13b', '135M', '7e9' → a parameter count."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbt]?)\s*", text.lower())
    if not m:
        raise InputError(f"--params {text!r}: expected a size like 7B, 13B, 135M or 7e9")
    value = float(m[1]) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m[2]]
    if value < 1e3:
        raise InputError(f"--params {text!r}: expected a size like 7B, 13B, 135M or 7e9")
    return int(value)


def shape_for_params(params: int) -> ModelShape:
    """A Llama-family shape of about `params` parameters: the bundled Llama-2 shape nearest in size,
    its width and layer count scaled (d ∝ p^(1/3), layers ∝ p^(1/3), head_dim 128)."""
    shapes = [load_shape(n) for n in ("llama-2-7b", "llama-2-13b", "llama-2-70b")]
    ref = min(shapes, key=lambda s: abs(s.parameters() - params))
    scale = (params / ref.parameters()) ** (1 / 3)
    heads = max(1, round(ref.heads * scale))
    kv = heads if ref.kv_heads == ref.heads else max(1, heads // (ref.heads // ref.kv_heads))
    while heads % kv:
        kv -= 1
    hidden = heads * ref.head_dim
    return ModelShape(name=f"~{params / 1e9:.3g}B Llama-like", hidden=hidden,
                      intermediate=int(round(ref.intermediate / ref.hidden * hidden / 256)) * 256 or 256,
                      layers=max(1, round(ref.layers * scale)), heads=heads, kv_heads=kv, head_dim=ref.head_dim,
                      vocab=ref.vocab, tied=ref.tied)


def _first(rules: tuple[Rule, ...], situation: Situation) -> Rule:
    return next(rule for rule in rules if rule.applies(situation))


def recommend(shape: ModelShape, memory_gb: float, examples: int, task: Task = Task.SFT,
              dtype: Dtype = Dtype.FLOAT32) -> Recommendation:
    """The method, rank, learning rate, batch size and checkpointing the rule tables choose."""
    if not memory_gb > 0 or examples <= 0:
        raise InputError(f"--memory-gb and --examples must be positive, got {memory_gb:g} and {examples}")
    try:  # plain strings from Python callers become the enums here
        task, dtype = Task(task), Dtype(dtype)
    except ValueError as e:
        raise InputError(str(e)) from None
    situation = Situation(shape, memory_gb * GIB, examples, task, dtype)
    rec = Recommendation(method=None)
    method_rule = _first(METHOD_RULES, situation)
    rank_rule = _first(RANK_RULES, situation)
    r = rank_rule.settings["r"]
    for method in method_rule.settings["prefer"]:
        for fit_rule in FIT_RULES:
            for tokens in BATCH_TOKENS:
                est = estimate_memory(shape, method, r=r, batch_tokens=tokens, dtype=dtype,
                                      gradient_checkpointing=fit_rule.settings["gradient_checkpointing"])
                if est.total <= situation.memory_bytes:
                    rec.method, rec.estimate_bytes = method, est.total
                    rec.settings.update(fit_rule.settings, max_tokens=tokens, dtype=dtype)
                    rec.reasons.append((method_rule.name, method_rule.reason))
                    if method is Method.QLORA:
                        rec.reasons.append(("qlora-when-lora-does-not-fit", QLORA_REASON))
                    rec.reasons.append((fit_rule.name, fit_rule.reason))
                    rec.reasons.append(("largest-batch-that-fits",
                                        f"the largest micro-batch of {', '.join(map(str, BATCH_TOKENS))} tokens "
                                        f"whose estimate ({est.total / GIB:.2f} GiB) fits {memory_gb:g} GB "
                                        "(README, Analysis tools: the estimate is within 10.5% of 22 of 24 measured peaks)"))
                    break
            if rec.method is not None:
                break
        if rec.method is not None:
            break
    if rec.method is None:
        smallest = estimate_memory(shape, Method.QLORA, r=r, batch_tokens=BATCH_TOKENS[-1], dtype=dtype,
                                   gradient_checkpointing=True)
        rec.reasons.append(("does-not-fit", f"even QLoRA with checkpointing at {BATCH_TOKENS[-1]} tokens needs "
                                            f"{smallest.total / GIB:.2f} GiB: more memory or a smaller model"))
        return rec
    lr_rule = _first(LR_RULES, replace(situation, method=rec.method))
    if rec.method is not Method.FULL:
        rec.settings.update(rank_rule.settings, target_modules="all-linear")
        rec.reasons.append((rank_rule.name, rank_rule.reason))
    rec.settings.update(lr_rule.settings)
    rec.reasons.append((lr_rule.name, lr_rule.reason))
    return rec


def format_recommendation(rec: Recommendation, shape: ModelShape) -> str:
    lines = [f"{shape.name} ({shape.parameters() / 1e9:.2f}B parameters)"]
    if rec.method is None:
        lines.append("no method fits")
    else:
        lines.append(f"method: {rec.method.value}  (estimated peak {rec.estimate_bytes / GIB:.2f} GiB)")
        lines += [f"  {k}: {v.value if isinstance(v, enum.Enum) else v}" for k, v in rec.settings.items()]
    lines.append("why:")
    lines += [f"  [{name}] {reason}" for name, reason in rec.reasons]
    return "\n".join(lines)
