"""IA³ (Liu et al. 2022, "Few-shot PEFT is better and cheaper than in-context learning"): learned
vectors that rescale activations. The `ia3` method of the registry (`METHOD`); peft's format.

    keys, values (and other non-feed-forward targets):   y = base(x) ⊙ l        l (out,)
    feed-forward modules (the input of the FFN's down projection):   y = base(x ⊙ l)    l (in,)

A fresh adapter has l = 1 (the identity). Merging folds l into the weight, W' = diag(l) W (and the
bias b' = l ⊙ b) or W' = W diag(l) for feed-forward modules; unmerging divides again (as peft,
with 1e-8 added to l). On disk (peft's layout): `base_model.model.<path>.ia3_l`, shaped (out, 1),
or (1, in) for feed-forward modules; `feedforward_modules` in adapter_config.json says which.
"""
from __future__ import annotations

from typing import ClassVar, Optional

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config import PeftFormatConfig, TargetSpec, matches
from ..errors import InputError
from ..targets import preset_targets, wrap_targets
from .base import Kind, LayerAdapter, Method

IA3_TARGETS: dict[str, list[str]] = {
    "llama": ["k_proj", "v_proj", "down_proj"],
    "gpt2": ["c_attn", "mlp.c_proj"],
    "bert": ["key", "value", "output.dense"],
    "t5": ["k", "v", "wo"],
}
"""Default targets by architecture (the paper's keys, values and FFN; peft's choices)."""
IA3_FEEDFORWARD: dict[str, list[str]] = {"llama": ["down_proj"], "gpt2": ["mlp.c_proj"], "bert": ["output.dense"],
                                         "t5": ["wo"]}
"""Default feed-forward modules (scaled on the input) by architecture."""


class IA3Config(PeftFormatConfig):
    """Where to put IA³ vectors (peft's field names)."""

    PEFT_TYPE: ClassVar[str] = "IA3"
    PEFT_EXTRAS: ClassVar[dict] = {"revision": None}

    target_modules: TargetSpec = Field(
        None, description="Names (exact or dotted suffix), a regex (full match) or 'all-linear'. None: the "
        "architecture's keys, values and feed-forward output projection.")
    exclude_modules: TargetSpec = Field(None, description="Names (exact or suffix) or a regex of modules never adapted.")
    feedforward_modules: TargetSpec = Field(
        None, description="Targets scaled on their input (the FFN's down projection); the rest on their output. "
        "None: the architecture's default.")
    fan_in_fan_out: bool = Field(False, description="Detected automatically (GPT-2 Conv1D).")
    modules_to_save: Optional[list[str]] = Field(None, description="Whole modules trained and saved with the adapter.")
    init_ia3_weights: bool = Field(True, description="True: l = 1 (the identity). False: random l (tests).")
    task_type: Optional[str] = Field(None, description="peft task type, e.g. CAUSAL_LM or SEQ_CLS.")
    base_model_name_or_path: Optional[str] = Field(None, description="Where the base model came from.")
    inference_mode: bool = Field(False, description="Written by peft.")

    @model_validator(mode="after")
    def _feedforward_within_targets(self):
        ff, targets = self.feedforward_modules, self.target_modules
        if isinstance(ff, list) and isinstance(targets, list) and not set(ff) <= set(targets):
            raise ValueError(f"feedforward_modules {sorted(set(ff) - set(targets))} are not in target_modules")
        return self


class IA3Adapter(LayerAdapter):
    """One layer's IA³ vector `ia3_l`: (out, 1) rescaling the output, or (1, in) the input (feed-forward)."""

    def __init__(self, in_features: int, out_features: int, feedforward: bool, init: bool = True,
                 dtype=None, device=None):
        super().__init__()
        self.scales_input = feedforward
        shape = (1, in_features) if feedforward else (out_features, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, dtype=dtype, device=device))
        if not init:
            with torch.no_grad():
                self.ia3_l.normal_(1.0, 0.3)

    @property
    def dtype(self) -> torch.dtype:
        return self.ia3_l.dtype

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """Feed-forward: (..., in) -> x ⊙ l, in x's dtype."""
        return (x.to(self.ia3_l.dtype) * self.ia3_l.view(-1)).to(x.dtype)

    def forward(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.scales_input:
            return y  # y = base(x ⊙ l) already
        return (y * self.ia3_l.view(-1)).to(y.dtype)

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        """l shaped to multiply an (out, in) weight."""
        return self.ia3_l.float().view(1, -1) if self.scales_input else self.ia3_l.float().view(-1, 1)

    def merged_weight(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        return w * self._scale(w)

    def unmerged_weight(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        return w / (self._scale(w) + 1e-8)

    def merged_bias(self, b: torch.Tensor) -> torch.Tensor:
        return b if self.scales_input else b * self.ia3_l.float().view(-1)

    def unmerged_bias(self, b: torch.Tensor) -> torch.Tensor:
        return b if self.scales_input else b / (self.ia3_l.float().view(-1) + 1e-8)

    def saved_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {"ia3_l": self.ia3_l}


def is_feedforward(config: IA3Config, name: str, model: nn.Module) -> bool:
    """Whether target `name` is scaled on its input: `feedforward_modules` (or the architecture's default)."""
    spec = config.feedforward_modules
    if spec is None:
        spec = preset_targets(model, IA3_FEEDFORWARD) or []
    return matches(spec, name)


def build(model: nn.Module, config: IA3Config, adapter_name: str) -> list[str]:
    """An IA3Adapter on every target (Linear-like layers only); returns the targets."""
    wrappers = wrap_targets(model, config, IA3_TARGETS)
    bad = [n for n, w in wrappers.items() if w.embedding]
    if bad:
        raise InputError(f"IA³ adapts Linear-like layers only, not embeddings: {', '.join(bad)}")
    spec = config.feedforward_modules
    entries = [spec] if isinstance(spec, str) else (spec or [])
    unmatched = [e for e in entries if not any(matches(e if isinstance(spec, str) else [e], n) for n in wrappers)]
    if unmatched:
        raise InputError(f"feedforward_modules entries matched none of the targets: {', '.join(unmatched)}; "
                         f"targets: {', '.join(sorted({n.rsplit('.', 1)[-1] for n in wrappers}))}")
    for name, w in wrappers.items():
        w.add(adapter_name, IA3Adapter(w.in_features, w.out_features, is_feedforward(config, name, model),
                                       config.init_ia3_weights, dtype=w.adapter_dtype()))
    return list(wrappers)


def _saved_config(config: IA3Config, adapted: dict) -> dict:
    """Targets and feed-forward modules as exact module paths: peft then picks the same layers and
    the same side (it matches feed-forward names by plain suffix and wants them among the targets)."""
    return {"target_modules": sorted(adapted),
            "feedforward_modules": sorted(n for n, a in adapted.items() if a.scales_input)}


def _summary(config: IA3Config) -> str:
    targets = "the preset targets" if config.target_modules is None else repr(config.target_modules)
    return f"vectors on {targets}"


METHOD = Method(name="ia3", config=IA3Config, peft_type="IA3", kind=Kind.LAYERS, build=build, summary=_summary,
                saved_config=_saved_config, load_overrides={"init_ia3_weights": True})

__all__ = ["IA3Config", "IA3Adapter", "METHOD", "IA3_TARGETS", "IA3_FEEDFORWARD"]
