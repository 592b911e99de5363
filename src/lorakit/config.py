"""Adapter configs with peft's field names (they are also the on-disk format).

`LoraConfig` is a pydantic model: unknown fields raise in Python code, while
`LoraConfig.from_peft_dict` (used when reading `adapter_config.json`) warns and drops
fields written by newer peft versions instead of crashing.
"""
from __future__ import annotations

import warnings
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TargetSpec = Union[list[str], str, None]


class LoraConfig(BaseModel):
    """Where to put LoRA adapters and how they are shaped and initialised."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: int = Field(8, gt=0, description="Rank of the update B·A.")
    lora_alpha: float = Field(8, description="Scale numerator: scaling = lora_alpha / r (or / sqrt(r) with use_rslora).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: TargetSpec = Field(
        None,
        description="Module names (exact or dotted suffix), a regex (full match) or 'all-linear'. "
        "None: the preset for the model's architecture.",
    )
    exclude_modules: TargetSpec = Field(None, description="Names (exact or suffix) or a regex of modules never adapted.")
    layers_to_transform: Union[list[int], int, None] = Field(None, description="Only adapt these layer indices.")
    layers_pattern: Union[list[str], str, None] = Field(
        None, description="Name of the layer list (e.g. 'layers', 'h') used with layers_to_transform."
    )
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="Per-module rank overrides (name or regex).")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="Per-module alpha overrides (name or regex).")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train and are saved.")
    modules_to_save: list[str] | None = Field(
        None, description="Whole modules (e.g. a classification head) trained and saved with the adapter."
    )
    init_lora_weights: Union[bool, Literal["gaussian"]] = Field(
        True, description="True: Kaiming-uniform A, zero B (identity). 'gaussian': normal A. False: random B too (tests)."
    )
    use_rslora: bool = Field(False, description="scaling = lora_alpha / sqrt(r) (rank-stabilised LoRA).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (not available in this version).")
    fan_in_fan_out: bool = Field(False, description="Base weight stored (in, out), like GPT-2's Conv1D; detected automatically.")
    task_type: str | None = Field(None, description="peft task type, e.g. CAUSAL_LM or SEQ_CLS.")
    base_model_name_or_path: str | None = Field(None, description="Where the base model came from.")
    inference_mode: bool = Field(False, description="Written by peft; adapters load frozen unless is_trainable.")

    @field_validator("layers_to_transform")
    @classmethod
    def _layers_as_list(cls, v):
        return [v] if isinstance(v, int) else v

    @field_validator("modules_to_save")
    @classmethod
    def _dedupe(cls, v):
        return list(dict.fromkeys(v)) if v else v

    @model_validator(mode="after")
    def _no_dora_yet(self):
        if self.use_dora:
            raise ValueError("use_dora=True: DoRA is not implemented in this version of lorakit")
        return self

    def rank_for(self, module_name: str) -> int:
        return _pattern_value(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        return _pattern_value(self.alpha_pattern, module_name, self.lora_alpha)

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any], source: str = "adapter_config.json") -> "LoraConfig":
        """Build from a peft-written config: unknown keys warn (newer peft), wrong values raise."""
        known = set(cls.model_fields)
        ignored = set(PEFT_EXTRAS) | {"peft_type", "peft_version", "auto_mapping"}
        inert = {k: v for k, v in PEFT_INERT_DEFAULTS.items() if data.get(k) == v}
        unknown = sorted(k for k in data if k not in known | ignored | set(inert) and data[k] not in (None, False, {}, []))
        if unknown:
            warnings.warn(f"{source}: ignoring fields lorakit does not know: {', '.join(unknown)}", stacklevel=2)
        kept = {k: v for k, v in data.items() if k in known and v is not None}
        return cls(**kept)

    def to_peft_dict(self) -> dict[str, Any]:
        """The adapter_config.json contents peft expects for a LoRA adapter."""
        out = self.model_dump()
        out.update(PEFT_EXTRAS, peft_type="LORA", inference_mode=True)
        if isinstance(out["target_modules"], list):
            out["target_modules"] = sorted(set(out["target_modules"]))
        return out


PEFT_EXTRAS = {"lora_bias": False, "layer_replication": None, "loftq_config": {}, "megatron_config": None,
               "megatron_core": "megatron.core", "revision": None}
"""Fields peft writes for LoRA that lorakit does not use; written so peft reads our files as its own."""
PEFT_INERT_DEFAULTS = {"qalora_group_size": 16}
"""Options of other peft methods that peft writes with non-empty defaults; they change nothing at these values."""


def matches(spec: TargetSpec, name: str) -> bool:
    """True when module `name` is selected by a list of names (exact or dotted suffix) or a regex string."""
    import re

    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def _pattern_value(patterns: dict, name: str, default):
    import re

    for key, value in patterns.items():
        if name == key or name.endswith("." + key) or re.fullmatch(key, name) or re.fullmatch(rf"(.*\.)?{key}", name):
            return value
    return default
