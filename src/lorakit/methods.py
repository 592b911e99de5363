"""The method registry: every PEFT method lorakit knows, by name. The one place that defines a method.

    METHODS["lora"].config        -> LoraConfig          (also: the trainer's `lora:` section)
    for_config(cfg).build(model, cfg, "default")          (what `lorakit.inject` does)
    for_peft_type("IA3").config   -> IA3Config            (what `load_adapter` reads)

Each entry is a frozen `lorakit.tuners.base.Method` record defined next to its method's code;
the adapter protocol and the recipe for adding a method are in `lorakit/tuners/base.py`.
`inject`, `io`, the trainer's config schema and loop, `merge`, `route` and the CLI read this
dict; none of them names a method.
"""
from __future__ import annotations

from .tuners import adalora, bottleneck, ia3, lora, vera, virtual_tokens
from .tuners.base import Kind, Method

METHODS: dict[str, Method] = {m.name: m for m in (lora.METHOD, adalora.METHOD, vera.METHOD, ia3.METHOD,
                                                     bottleneck.METHOD, *virtual_tokens.METHODS)}
"""Method name (the trainer's `method:` value and config section) → its record, in `--help` order."""

__all__ = ["METHODS", "Method", "Kind", "for_config", "for_peft_type"]


def for_config(config) -> Method:
    """The method whose config class `config` is an instance of."""
    for method in METHODS.values():
        if type(config) is method.config:
            return method
    raise TypeError(f"{type(config).__name__} is not the config of a registered method "
                    f"(expected one of: {', '.join(m.config.__name__ for m in METHODS.values())})")


def for_peft_type(peft_type: str) -> Method | None:
    """The method that reads adapter files of this `peft_type`, or None."""
    return next((m for m in METHODS.values() if m.peft_type == peft_type), None)
