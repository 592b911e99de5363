"""Which modules an adapter goes into: target matching and wrapping.

Selection, in order: candidates (Linear-like and Embedding modules) → `target_modules`
(names, regex or "all-linear") → `exclude_modules` → `layers_to_transform`. Mistakes fail
loudly, the same way for every selector: a `target_modules` or `exclude_modules` entry (or regex)
that matches no module, a `rank_pattern` / `alpha_pattern` key that matches no adapted module, a
`layers_to_transform` index with no such layer and a `layers_pattern` naming no layer list are
errors naming the entry, with hints for the architecture.
Methods that wrap layers call `wrap_targets` from their builder (see tuners/base.py).
"""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from .config import matches, pattern_matches
from .errors import InputError
from .state import replace_module
from .tuners.base import AdapterHolder
from .tuners.layers import LayerWrapper, is_linear_like, wrap

PRESETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": ["query", "key", "value", "dense"],
    "vit": ["query", "key", "value", "dense"],
    "whisper": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "t5": ["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"],
}
PRESET_ALIASES = {
    "mistral": "llama", "mixtral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
    "gemma2": "llama", "phi3": "llama", "olmo": "llama", "smollm3": "llama",
    "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert", "electra": "bert",
    "deit": "vit", "mt5": "t5",
}
LAYER_LIST_NAMES = ("layers", "layer", "h", "blocks", "block")


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, modules) of the model's transformer layers: the first ModuleList named like a layer list."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in LAYER_LIST_NAMES and len(module):
            return name, module
    raise InputError(f"{type(model).__name__}: no list of transformer layers found (looked for ModuleLists named "
                     f"{', '.join(LAYER_LIST_NAMES)})")


def preset_targets(model: nn.Module, presets: dict[str, list[str]] = PRESETS) -> list[str] | None:
    """The usual targets for the model's architecture (from `config.model_type`) in `presets`
    (default: LoRA's), if known; architectures in PRESET_ALIASES share their family's entry."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return presets.get(PRESET_ALIASES.get(model_type, model_type)) or presets.get(model_type)


def candidate_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module a LoRA adapter can wrap (unwrapped bases and existing wrappers), by name."""
    out, inside = {}, []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, AdapterHolder):
            inside.append(name + ".")
            if isinstance(module, LayerWrapper):
                out[name] = module
        elif is_linear_like(module) or isinstance(module, nn.Embedding):
            out[name] = module
    return out


def select_targets(model: nn.Module, config, presets: dict[str, list[str]] = PRESETS) -> list[str]:
    """Names of the modules `config` adapts, or an InputError that says what to write instead.

    `config` needs `target_modules`; `exclude_modules`, `modules_to_save`, `layers_to_transform` and
    `layers_pattern` are used when it has them. `presets`: the method's targets by architecture.
    """
    candidates = candidate_modules(model)
    spec = config.target_modules if config.target_modules is not None else preset_targets(model, presets)
    if spec is None:
        raise InputError(
            f"target_modules is not set and there is no preset for model type "
            f"{_model_type(model)!r}; {_hint(model, candidates)}"
        )
    saved = config.modules_to_save or []
    head = _output_head_name(model)
    if spec == "all-linear":
        chosen = [n for n, m in candidates.items() if _is_linear_candidate(m) and n != head]
    else:
        chosen = [n for n in candidates if matches(spec, n)]
    if isinstance(spec, list):
        unmatched = [t for t in spec if not any(n == t or n.endswith("." + t) for n in candidates)]
        if unmatched:
            raise InputError(
                f"target_modules entries matched no module: {', '.join(unmatched)}; {_hint(model, candidates)}"
            )
    exclude = getattr(config, "exclude_modules", None)
    _check_selector(model, candidates, "exclude_modules", exclude)
    chosen = [n for n in chosen if not matches(saved, n) and not matches(exclude, n)]
    layers = getattr(config, "layers_to_transform", None)
    if layers is not None:
        chosen = _in_layers(chosen, layers, config.layers_pattern)
    if not chosen:
        raise InputError(f"target_modules={spec!r} matched no module; {_hint(model, candidates)}")
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = getattr(config, field, None) or {}
        if all(isinstance(v, (int, float)) for v in patterns.values()):  # (AdaLoRA's rank_pattern holds masks)
            dead = [k for k in patterns if not any(pattern_matches(k, n) for n in chosen)]
            if dead:
                raise InputError(f"{field} keys matched no adapted module: {', '.join(dead)}; "
                                 f"adapted: {_short([n.rsplit('.', 1)[-1] for n in chosen])}")
    return chosen


def _check_selector(model: nn.Module, candidates: dict, field: str, spec) -> None:
    """A selector other than target_modules (e.g. exclude_modules) whose entries must each match a module."""
    if spec is None or spec == []:
        return
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(spec, str):
        if not any(matches(spec, n) for n in names):
            raise InputError(f"{field}={spec!r} matched no module; {_hint(model, candidates)}")
        return
    unmatched = [t for t in spec if not any(matches([t], n) for n in names)]
    if unmatched:
        raise InputError(f"{field} entries matched no module: {', '.join(unmatched)}; {_hint(model, candidates)}")


def _in_layers(chosen: list[str], layers: list[int], pattern) -> list[str]:
    """The modules of `chosen` inside the layers `layers`; an index with no such layer is an error."""
    index = {n: _layer_index(n, pattern) for n in chosen}
    found = sorted({i for i in index.values() if i is not None})
    if not found:
        named = f"layers_pattern={pattern!r}" if pattern else f"any of the layer lists {list(LAYER_LIST_NAMES)}"
        raise InputError(f"layers_to_transform: no targeted module lies under {named}; "
                         f"targeted: {_short(chosen)}")
    absent = [i for i in layers if i not in found]
    if absent:
        raise InputError(f"layers_to_transform: no layer {', '.join(map(str, absent))} among the targeted "
                         f"modules (layers {found[0]}-{found[-1]})")
    return [n for n in chosen if index[n] in layers]


def _short(names: list[str], n: int = 6) -> str:
    names = list(dict.fromkeys(names))
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def resolve_modules_to_save(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Module paths of `modules_to_save` entries (exact or dotted suffix; outermost hit), or an InputError."""
    found, unmatched = [], []
    all_names = [n for n, _ in model.named_modules() if n]
    for target in names:
        hits = [n for n in all_names if (n == target or n.endswith("." + target)) and not _nested_hit(n, found)]
        hits = [n for n in hits if not any(n.startswith(h + ".") for h in hits)]
        (found.extend(hits) if hits else unmatched.append(target))
    if unmatched:
        raise InputError(f"modules_to_save entries matched no module: {', '.join(unmatched)}")
    return found


def _nested_hit(name: str, found: list[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in found)


def wrap_targets(model: nn.Module, config, presets: dict[str, list[str]] = PRESETS) -> dict[str, LayerWrapper]:
    """Select `config`'s targets and put a layer wrapper on each (existing wrappers are reused): name -> wrapper."""
    out = {}
    for name in select_targets(model, config, presets):
        module = model.get_submodule(name)
        out[name] = module if isinstance(module, LayerWrapper) else replace_module(model, name, wrap(module))
    return out


def _layer_index(name: str, pattern) -> int | None:
    pats = [pattern] if isinstance(pattern, str) else (pattern or LAYER_LIST_NAMES)
    alt = "|".join(re.escape(p) for p in pats)
    m = re.search(rf"(?:^|\.)(?:{alt})\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def _is_linear_candidate(module: nn.Module) -> bool:
    base = module.base if isinstance(module, LayerWrapper) else module
    return is_linear_like(base)


def _output_head_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head or (isinstance(module, LayerWrapper) and module.base is head):
            return name
    return None


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def _hint(model: nn.Module, candidates: dict) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in candidates.items() if _is_linear_candidate(m)})
    preset = preset_targets(model)
    suggestion = f"suggested for {_model_type(model)}: {preset}" if preset else "or use 'all-linear'"
    return f"linear layers in this model: {leaves[:12]}{' ...' if len(leaves) > 12 else ''}; {suggestion}"
