"""Looking at a model before and after adapting it: its adaptable modules, the usual targets, and
what a LoRA config would train (`lorakit inspect`)."""
from __future__ import annotations

import re
from collections import Counter, OrderedDict

from torch import nn

from .inject import trainable_parameters
from .targets import candidate_modules, preset_targets
from .tuners.layers import is_linear_like


def module_table(model: nn.Module) -> list[tuple[str, str, str, int]]:
    """Adaptable modules grouped by name with layer indices folded to `*`:
    (pattern, module type, weight shape, count), in model order."""
    groups: "OrderedDict[tuple[str, str, str], int]" = OrderedDict()
    for name, module in candidate_modules(model).items():
        pattern = re.sub(r"\.\d+\.", ".*.", name)
        weight = getattr(module, "weight", None)
        shape = "x".join(str(d) for d in weight.shape) if weight is not None else "?"
        key = (pattern, type(module).__name__, shape)
        groups[key] = groups.get(key, 0) + 1
    return [(*key, count) for key, count in groups.items()]


def describe_model(model: nn.Module) -> str:
    """A readable report: architecture, parameter count, adaptable modules and suggested targets."""
    config = getattr(model, "config", None)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    lines = [f"{type(model).__name__} (model_type {getattr(config, 'model_type', '?')}): {total:,} parameters", ""]
    rows = module_table(model)
    width = max(len(r[0]) for r in rows) if rows else 10
    lines.append(f"{'module':<{width}}  {'type':<10}  {'weight':<12}  count")
    for pattern, kind, shape, count in rows:
        lines.append(f"{pattern:<{width}}  {kind:<10}  {shape:<12}  {count}")
    kinds = Counter(type(m).__name__ for m in model.modules() if is_linear_like(m))
    lines += ["", "linear-like modules: " + ", ".join(f"{k} ×{v}" for k, v in kinds.items())]
    preset = preset_targets(model)
    lines.append(f"suggested target_modules: {preset if preset else 'all-linear'}")
    return "\n".join(lines)


def describe_adapted(model: nn.Module, names: list[str], what: str) -> str:
    """One line: how many modules `what` adapted and what it trains (after injection)."""
    trainable, total = trainable_parameters(model)
    return (f"{what}: {len(names)} modules adapted, {trainable:,} trainable of {total:,} "
            f"({100 * trainable / total:.3f}%)")
