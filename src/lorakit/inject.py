"""`inject`: add an adapter of any registered method to a model, in place.

The method is found from the config's type in the registry (`lorakit.methods`); its builder puts
the adapter in place (layer methods select their targets with `lorakit.targets`). What is common to
every method happens here: the name check, `modules_to_save` copies, the model-level record, making
the new adapter active and the only thing that trains.
"""
from __future__ import annotations

from torch import nn

from . import methods
from .errors import InputError
from .state import adapter_configs, bias_parameters, holders, mark_trainable, replace_module, set_adapter
from .targets import candidate_modules, preset_targets, resolve_modules_to_save, select_targets
from .tuners.base import ModulesToSave

__all__ = ["inject", "trainable_parameters", "describe_trainable", "preset_targets", "select_targets",
           "candidate_modules", "adapter_configs", "mark_trainable", "bias_parameters"]


def inject(model: nn.Module, config, adapter_name: str = "default") -> list[str]:
    """Add an adapter of the method `config` describes (LoraConfig, VeraConfig, AdaLoraConfig, IA3Config,
    BottleneckConfig, ...: see `lorakit.methods.METHODS`) named `adapter_name` to `model` in place and
    make it the active, trainable one.

    Returns the adapted module names. Base parameters are frozen; only this adapter's parameters,
    its `modules_to_save` copies and the biases chosen by `config.bias` require grad.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"inject: model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        method = methods.for_config(config)
    except TypeError as e:
        raise InputError(f"inject: config: {e}") from None
    configs = adapter_configs(model)
    if adapter_name in configs:
        raise InputError(f"adapter {adapter_name!r} already exists; pick another name or delete it first")
    saved_names = resolve_modules_to_save(model, config.modules_to_save or [])
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        names = method.build(model, config, adapter_name)
    except BaseException:
        _drop_empty_holders(model)
        for p in trainable:  # a failed inject leaves the model as it was
            p.requires_grad_(True)
        raise
    for name in saved_names:
        module = model.get_submodule(name)
        holder = module if isinstance(module, ModulesToSave) else replace_module(model, name, ModulesToSave(module))
        holder.add(adapter_name)
    configs[adapter_name] = config
    set_adapter(model, adapter_name)
    mark_trainable(model, adapter_name)
    return names


def _drop_empty_holders(model: nn.Module) -> None:
    """After a failed build: wrappers it left without any adapter give their module back."""
    for name, holder in holders(model):
        if len(holder.adapters) == 0:
            replace_module(model, name, holder.unwrap(keep_trained=False))


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
