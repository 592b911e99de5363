"""Where one training step's time goes, by category: `profile_steps(run, config)`.

The profiled step is the single-process loop's (train/loop.py): forward + backward of each
micro-batch's summed loss over the step's target count, then clip, AdamW, zero_grad; it runs under
`torch.profiler` with input shapes recorded. Every op's *self* time (the calling
thread's; intra-op worker threads run inside it) goes to one category:

    base matmuls      mm/addmm/linear whose operands are a frozen weight's (out, in)
    LoRA matmuls      matmuls with an adapter rank among their dimensions
    attention         scaled-dot-product attention, forward and backward
    LM head + loss    matmuls with the vocabulary among their dimensions, log-softmax, NLL,
                      gathering the target positions
    norms/act/RoPE    every other tensor op: RMSNorm, SiLU, RoPE, residual adds, casts, copies
    optimizer         clip_grad_norm_, AdamW.step, zero_grad
    data              fetching and collating the step's micro-batches
    overhead          the step's wall time not inside any op: Python, the autograd engine's
                      bookkeeping, the dispatcher

An op nested in another (aten::mm under aten::linear) keeps its own category, except inside the
scopes of `SCOPES` (the data fetch, the optimizer, the fused head + loss), whose ops all take theirs.
The profiler adds a few microseconds per op, so the profiled step is slower than an unprofiled one
(`wall_s` vs `unprofiled_s`); the shares are what matters.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from ..tuners.layers import layer_wrappers
from .losses import count_targets

CATEGORIES = ("base matmuls", "LoRA matmuls", "attention", "LM head + loss", "norms/act/RoPE", "optimizer", "data",
              "overhead")
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
LOSS_OPS = ("log_softmax", "nll_loss", "cross_entropy", "logsumexp", "aten::index", "index_put", "masked_select")
SCOPES = {"lorakit::data": "data", "lorakit::optimizer": "optimizer", "Optimizer.": "optimizer",
          "LinearCrossEntropy": "LM head + loss"}
"""Scopes (by a part of their name) whose category every op inside them takes."""


@dataclass
class StepProfile:
    """Seconds per category summed over the profiled steps; `wall_s` their wall time."""

    seconds: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    unprofiled_s: Optional[float] = None
    steps: int = 1
    ops: int = 0
    real_tokens: int = 0  # non-padding tokens of the profiled steps
    target_tokens: int = 0

    def table(self) -> str:
        """The profile as aligned text: category, ms per step, share of the step."""
        lines = [f"{'category':16s} {'ms/step':>9s} {'share':>6s}"]
        for name in CATEGORIES:
            s = self.seconds.get(name, 0.0)
            lines.append(f"{name:16s} {1e3 * s / self.steps:9.1f} {s / self.wall_s:6.1%}")
        lines.append(f"{'step (profiled)':16s} {1e3 * self.wall_s / self.steps:9.1f} {1:6.0%}")
        if self.unprofiled_s is not None:
            lines.append(f"{'step (plain)':16s} {1e3 * self.unprofiled_s:9.1f}")
        return "\n".join(lines)


def _dims(shapes: Iterable) -> set[int]:
    return {d for s in shapes or () if isinstance(s, (list, tuple)) for d in s if isinstance(d, int)}


def _scope_name(name: str) -> Optional[str]:
    return next((cat for part, cat in SCOPES.items() if part in name), None)


def classify(name: str, shapes, ranks: set[int], vocab: int) -> Optional[str]:
    """The category of one op from its name and input shapes; None: overhead (autograd nodes, wrappers)."""
    if name.startswith("aten::_foreach") or "clip_grad" in name:
        return "optimizer"
    if "scaled_dot_product" in name or "flash_attention" in name or "attention" in name.lower():
        return "attention"
    if any(op in name for op in LOSS_OPS):
        return "LM head + loss"
    if name in MATMULS:
        dims = _dims(shapes)
        if vocab in dims:
            return "LM head + loss"
        if dims & ranks:
            return "LoRA matmuls"
        return "base matmuls" if name != "aten::linear" else None
    if name.startswith("aten::"):
        return "norms/act/RoPE"
    return None


def categorize(events, ranks: set[int], vocab: int, wall_s: float) -> dict[str, float]:
    """Seconds per category from a profiler's event list (see the module docstring)."""
    seconds = {c: 0.0 for c in CATEGORIES}
    cache: dict[int, tuple[Optional[str], Optional[str]]] = {}

    def scope(ev) -> tuple[Optional[str], Optional[str]]:
        """(the category of `ev`, the scope category it passes to its children)."""
        key = id(ev)
        if key not in cache:
            parent = scope(ev.cpu_parent)[1] if ev.cpu_parent is not None else None
            own = _scope_name(ev.name) or parent
            cache[key] = (own or classify(ev.name, getattr(ev, "input_shapes", None), ranks, vocab), own)
        return cache[key]

    ops = 0.0
    for ev in events:
        if ev.device_type != torch.autograd.DeviceType.CPU:
            continue
        self_s = ev.self_cpu_time_total / 1e6
        cat = scope(ev)[0]
        if cat is None:
            continue  # autograd nodes, aten::linear wrappers, ...: their self time stays in overhead
        seconds[cat] += self_s
        ops += self_s
    seconds["overhead"] = max(0.0, wall_s - ops)
    return seconds


def profile_steps(model, loss_sum, batches, optimizer, steps: int = 1, grad_accum: int = 1,
                  max_grad_norm: Optional[float] = 1.0, warmup: int = 1) -> StepProfile:
    """Run `warmup` plain steps and `steps` profiled ones on micro-batches drawn from the iterator
    `batches`, then the profiled steps' batches again unprofiled (`unprofiled_s`, data excluded).
    The adapter weights change: profile after training or on a copy."""
    params = [p for p in model.parameters() if p.requires_grad]
    ranks = {a.r for _, w in layer_wrappers(model) for a in w.adapters.values() if hasattr(a, "r")}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = head.weight.shape[0] if head is not None else -1

    fetched: list[list[dict]] = []

    def one_step(micro: Optional[list[dict]] = None) -> None:
        if micro is None:
            with torch.profiler.record_function("lorakit::data"):
                micro = [next(batches) for _ in range(grad_accum)]
            fetched.append(micro)
        n_targets = max(sum(count_targets(b) for b in micro), 1)
        for batch in micro:
            (loss_sum(model, batch) / n_targets).backward()
        with torch.profiler.record_function("lorakit::optimizer"):
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    model.train()
    for _ in range(warmup):
        one_step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        wall = time.perf_counter() - start
    events = prof.events()
    start = time.perf_counter()
    for micro in fetched[warmup:]:  # the same batches again, unprofiled (their data time not included)
        one_step(micro)
    plain = (time.perf_counter() - start) / steps
    profiled = [b for micro in fetched[warmup:] for b in micro]
    real = sum(int(b["attention_mask"].sum()) if b.get("attention_mask") is not None and b["attention_mask"].dim() == 2
               else b["input_ids"].numel() for b in profiled)
    return StepProfile(categorize(events, ranks, vocab, wall), wall, plain, steps, len(events), real,
                       sum(count_targets(b) for b in profiled))
