"""Choosing which modules get adapters, and putting the wrappers in place.

Selection, in order: candidates (Linear-like and Embedding modules) → `target_modules`
(names, regex or "all-linear") → `exclude_modules` → `layers_to_transform`. Mistakes fail
loudly: a target that matches nothing is an error naming it, with hints for the architecture.
"""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from .config import AdaLoraConfig, LoraConfig, VeraConfig, matches
from .tuners.lora import LoraAdapter, LoraWrapper, ModulesToSave, is_linear_like, wrap
from .tuners.pissa import pissa_init, pissa_niter
from .tuners import adalora, vera
from .tuners.dora import DoraMagnitude
from .errors import InputError

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


def preset_targets(model: nn.Module) -> list[str] | None:
    """The usual LoRA targets for the model's architecture (from `config.model_type`), if known."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return PRESETS.get(PRESET_ALIASES.get(model_type, model_type))


def candidate_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module a LoRA adapter can wrap (unwrapped bases and existing wrappers), by name."""
    out, inside = {}, []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, (LoraWrapper, ModulesToSave)):
            inside.append(name + ".")
            if isinstance(module, LoraWrapper):
                out[name] = module
        elif is_linear_like(module) or isinstance(module, nn.Embedding):
            out[name] = module
    return out


def select_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the modules `config` adapts, or an InputError that says what to write instead."""
    candidates = candidate_modules(model)
    spec = config.target_modules if config.target_modules is not None else preset_targets(model)
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
    chosen = [n for n in chosen if not matches(saved, n) and not matches(config.exclude_modules, n)]
    if config.layers_to_transform is not None:
        chosen = [n for n in chosen if _layer_index(n, config.layers_pattern) in config.layers_to_transform]
    if not chosen:
        raise InputError(f"target_modules={spec!r} matched no module; {_hint(model, candidates)}")
    if isinstance(spec, list):
        unmatched = [t for t in spec if not any(n == t or n.endswith("." + t) for n in candidates)]
        if unmatched:
            raise InputError(
                f"target_modules entries matched no module: {', '.join(unmatched)}; {_hint(model, candidates)}"
            )
    return chosen


def inject(model: nn.Module, config: "LoraConfig | VeraConfig | AdaLoraConfig",
           adapter_name: str = "default") -> list[str]:
    """Add an adapter (LoRA, DoRA, PiSSA, VeRA or AdaLoRA, chosen by the config type) named `adapter_name`
    to `model` in place and make it the active, trainable one.

    Returns the adapted module names. Base parameters are frozen; only this adapter's factors,
    its `modules_to_save` copies and the biases chosen by `config.bias` require grad.
    """
    configs = adapter_configs(model)
    if adapter_name in configs:
        raise ValueError(f"adapter {adapter_name!r} already exists; pick another name or delete it first")
    names = select_targets(model, config)
    saved_names = _resolve_modules_to_save(model, config.modules_to_save or [])
    for p in model.parameters():
        p.requires_grad_(False)
    wrappers = {}
    for name in names:
        module = model.get_submodule(name)
        wrappers[name] = module if isinstance(module, LoraWrapper) else _replace(model, name, wrap(module))
    ADAPTER_BUILDERS[type(config)](model, config, adapter_name, wrappers)
    for name in saved_names:
        module = model.get_submodule(name)
        holder = module if isinstance(module, ModulesToSave) else _replace(model, name, ModulesToSave(module))
        holder.add(adapter_name)
    configs[adapter_name] = config
    from .routing import set_adapter  # noqa: PLC0415  (routing imports this module)

    set_adapter(model, adapter_name)
    mark_trainable(model, adapter_name)
    return names


def _add_lora_adapters(model: nn.Module, config: LoraConfig, adapter_name: str, wrappers: dict) -> None:
    """LoRA (with its DoRA / PiSSA options) on every wrapper in `wrappers` (name -> wrapper)."""
    niter = pissa_niter(config.init_lora_weights)
    for name, wrapper in wrappers.items():
        weight = wrapper.base_weight_param()
        dtype = weight.dtype if weight is not None and weight.is_floating_point() else None
        wrapper.add(adapter_name, LoraAdapter(
            wrapper.in_features, wrapper.out_features, config.rank_for(name), config.alpha_for(name),
            config.lora_dropout, config.use_rslora, True if niter is not False else config.init_lora_weights,
            dtype=dtype,
        ))
        adapter = wrapper.adapters[adapter_name]
        if niter is not False:
            pissa_init(wrapper, adapter, niter)
        if config.use_dora:
            adapter.dora = DoraMagnitude.init_from(wrapper, adapter)


ADAPTER_BUILDERS = {LoraConfig: _add_lora_adapters, VeraConfig: vera.build_adapters,
                    AdaLoraConfig: adalora.build_adapters}
"""Config type → function(model, config, adapter_name, wrappers) that adds that method's adapters."""


def mark_trainable(model: nn.Module, adapter_name: str) -> None:
    """Freeze everything, then unfreeze `adapter_name`'s parameters (and the biases its config selects)."""
    config = adapter_configs(model)[adapter_name]
    for p in model.parameters():
        p.requires_grad_(False)
    for _, module in model.named_modules():
        if isinstance(module, (LoraWrapper, ModulesToSave)) and adapter_name in module.adapters:
            module.adapters[adapter_name].requires_grad_(True)
    for name, p in bias_parameters(model, config.bias).items():
        p.requires_grad_(True)


def bias_parameters(model: nn.Module, mode: str) -> dict[str, nn.Parameter]:
    """Biases that train and are saved under `bias` = 'all' (every bias) or 'lora_only' (wrapped layers')."""
    if mode == "none":
        return {}
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, ModulesToSave):
            continue
        bias = getattr(module, "bias", None)
        if not isinstance(bias, nn.Parameter) or _under_modules_to_save(model, name):
            continue
        parent = name.rsplit(".", 1)[0] if name.endswith(".base") else None
        is_lora = parent is not None and isinstance(model.get_submodule(parent), LoraWrapper)
        if mode == "all" or is_lora:
            out[f"{name}.bias"] = bias
    return out


def _under_modules_to_save(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts)):
        prefix = ".".join(parts[:i])
        if prefix and isinstance(model.get_submodule(prefix), ModulesToSave):
            return True
    return False


def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    """The configs of the adapters on `model`, by adapter name (kept on the model object)."""
    if "lorakit_configs" not in model.__dict__:
        model.__dict__["lorakit_configs"] = {}
    return model.__dict__["lorakit_configs"]


def _resolve_modules_to_save(model: nn.Module, names: Iterable[str]) -> list[str]:
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


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return new


def _layer_index(name: str, pattern) -> int | None:
    pats = [pattern] if isinstance(pattern, str) else (pattern or LAYER_LIST_NAMES)
    alt = "|".join(re.escape(p) for p in pats)
    m = re.search(rf"(?:^|\.)(?:{alt})\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def _is_linear_candidate(module: nn.Module) -> bool:
    base = module.base if isinstance(module, LoraWrapper) else module
    return is_linear_like(base)


def _output_head_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head or (isinstance(module, LoraWrapper) and module.base is head):
            return name
    return None


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def _hint(model: nn.Module, candidates: dict) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in candidates.items() if _is_linear_candidate(m)})
    preset = preset_targets(model)
    suggestion = f"suggested for {_model_type(model)}: {preset}" if preset else "or use 'all-linear'"
    return f"linear layers in this model: {leaves[:12]}{' ...' if len(leaves) > 12 else ''}; {suggestion}"


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def describe_trainable(model: nn.Module) -> str:
    """One line like peft's print_trainable_parameters."""
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / max(total, 1):.4f}"
