"""Model-level adapter state: the adapters' configs, the active adapter, switching, disabling, deleting,
which parameters train, and module replacement.

A leaf module: it imports only the tuners' base classes, so `inject`, `routing`, `io`, `merge` and the
tuners themselves can all use it without importing each other. Everything here works for every
method, through the holder protocol of `tuners/base.py` (holders are found by type).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence, Union

from torch import nn

from .config import Bias
from .errors import UnknownAdapterError
from .tuners.base import AdapterHolder, ModulesToSave
from .tuners.layers import LayerWrapper


def adapter_configs(model: nn.Module) -> dict[str, Any]:
    """The configs of the adapters on `model`, by adapter name, in the order they were added (kept on the model)."""
    if "lorakit_configs" not in model.__dict__:
        model.__dict__["lorakit_configs"] = {}
    return model.__dict__["lorakit_configs"]


def holders(model: nn.Module) -> list[tuple[str, AdapterHolder]]:
    """(module path, holder) for every adapter holder in `model`, outermost first."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterHolder)]


def named_adapters(model: nn.Module, adapter_name: Optional[str] = None) -> list[tuple[str, nn.Module]]:
    """(holder's module path, adapter module) for adapter `adapter_name` (None: every name) in every holder."""
    return [(n, a) for n, h in holders(model) for k, a in h.adapters.items() if adapter_name in (None, k)]


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters on `model`, in the order they were added."""
    return list(adapter_configs(model))


def active_adapter(model: nn.Module) -> Union[str, tuple[str, ...], None]:
    """The active adapter's name (a tuple of names when several are applied together)."""
    return model.__dict__.get("lorakit_active")


def check_name(model: nn.Module, name: Optional[str]) -> None:
    if name is not None and name not in adapter_configs(model):
        raise UnknownAdapterError(f"no adapter named {name!r}; adapters on this model: {list_adapters(model)}")


def set_adapter(model: nn.Module, adapter_name: Union[str, Sequence[str]]) -> None:
    """Make `adapter_name` the active adapter on every module that has it (others run as the base).

    A list of names applies those adapters together, each where it is (plain LoRA only: a layer
    computes base(x) + Σ of the updates of the named adapters it holds): how earlier adapters of
    progressive LoRA stay applied under the one being trained, and how `lorakit generate --adapter A
    --adapter B` stacks them."""
    names = (adapter_name,) if isinstance(adapter_name, str) else tuple(dict.fromkeys(adapter_name))
    if not names:
        raise UnknownAdapterError(f"set_adapter: no adapter named; adapters on this model: {list_adapters(model)}")
    for name in names:
        check_name(model, name)
    chosen = [(holder, here[0] if len(here) == 1 else here or None) for _, holder in holders(model)
              for here in [tuple(n for n in names if n in holder.adapters)]]
    for holder, key in chosen:  # every holder checked before any switches: a refusal leaves the model as it was
        holder.adapter_for(key)
    for holder, key in chosen:
        holder.set_active(key)
    model.__dict__["lorakit_active"] = names[0] if len(names) == 1 else names


def forget(model: nn.Module) -> None:
    """Drop the model-level records (after every holder was removed)."""
    adapter_configs(model).clear()
    model.__dict__.pop("lorakit_active", None)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model behaves as its base (no adapter, original modules_to_save)."""
    found = holders(model)
    merged = [n for n, h in found if h.merged]
    if merged:
        raise RuntimeError(f"cannot disable adapters while merged (e.g. {merged[0]}); unmerge first")
    saved = [(h, h.active) for _, h in found]
    for _, h in found:
        h.__dict__["active"] = None
    try:
        yield model
    finally:
        for h, active in saved:
            h.__dict__["active"] = active


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter everywhere; modules left with no adapter get their plain module back."""
    check_name(model, adapter_name)
    for name, holder in holders(model):
        if adapter_name not in holder.adapters:
            continue
        holder.delete(adapter_name)
        holder.__dict__.pop("route_stacks", None)  # (routing's cached factor stacks)
        if len(holder.adapters) == 0:
            replace_module(model, name, holder.unwrap(keep_trained=False))
    del adapter_configs(model)[adapter_name]
    active = active_adapter(model)
    if isinstance(active, tuple) and adapter_name in active:
        rest = [n for n in active if n != adapter_name]
        model.__dict__["lorakit_active"] = None
        set_adapter(model, rest)
    elif active == adapter_name:
        remaining = list_adapters(model)
        model.__dict__["lorakit_active"] = None
        if remaining:
            set_adapter(model, remaining[0])


def replace_module(model: nn.Module, name: str, new: Optional[nn.Module]) -> Optional[nn.Module]:
    """Put `new` at module path `name` (None: remove the module there; the model itself cannot be
    replaced); returns `new`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if new is None:
        delattr(parent, child)
    else:
        setattr(parent, child, new)
    return new


def mark_trainable(model: nn.Module, adapter_name: str) -> None:
    """Freeze everything, then unfreeze `adapter_name`'s parameters (and the biases its config selects)."""
    config = adapter_configs(model)[adapter_name]
    for p in model.parameters():
        p.requires_grad_(False)
    for _, holder in holders(model):
        if adapter_name in holder.adapters:
            holder.adapters[adapter_name].requires_grad_(True)
    for p in bias_parameters(model, config.bias_mode).values():
        p.requires_grad_(True)


def bias_parameters(model: nn.Module, mode: Bias) -> dict[str, nn.Parameter]:
    """Biases that train and are saved: every bias (Bias.ALL) or the adapted layers' (Bias.ADAPTED).

    Keys are module paths + ".bias" as they are in `model` (a wrapped layer's is "<path>.base.bias").
    """
    if mode is Bias.NONE:
        return {}
    out, skip = {}, []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        if isinstance(module, ModulesToSave):
            skip.append(name + ".")
            continue
        bias = getattr(module, "bias", None)
        if not isinstance(bias, nn.Parameter):
            continue
        parent = name.rsplit(".", 1)[0] if name.endswith(".base") else None
        adapted = parent is not None and isinstance(model.get_submodule(parent), LayerWrapper)
        if mode is Bias.ALL or adapted:
            out[f"{name}.bias"] = bias
    return out
