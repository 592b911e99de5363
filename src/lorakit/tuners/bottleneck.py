"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021; the parallel adapter of He et al. 2022):
small two-layer networks inserted into each transformer layer. The `bottleneck` method of the registry.

    f(h) = s · W_up act(W_down h + b_down) + b_up          W_down (m, d), W_up (d, m); m = d / reduction_factor

    houlsby:   after the attention output projection and after the FFN:    h ← h + f(h)   (s = 1)
    pfeiffer:  after the FFN only:                                         h ← h + f(h)   (s = 1)
    parallel:  beside the FFN, on the FFN's input x:                   FFN(x) + f(x)   (s = 4 by default)

Where those are is found by architecture (`SITES`: Llama / Qwen / Mistral and their family, GPT-2,
BERT and its family); an unknown architecture is an error listing the modules of its first layer
(`attention_output` / `ffn` name them for any other model). Each site's module is wrapped by an
`AdapterSite` (an `AdapterHolder`, tuners/base.py) that runs the active adapter around it. W_up and
b_up start at zero, so a fresh adapter is the identity. A bottleneck adapter is nonlinear: it
cannot be merged into the base weights (merge raises), and `route()` does not split it by row.

peft has no bottleneck adapters, so the format is lorakit's own, in peft's layout:
`adapter_config.json` with `"peft_type": "LORAKIT_BOTTLENECK"` and this config's fields, and
`adapter_model.safetensors` with, per site, `base_model.model.<module path>.bottleneck_down.weight`
(m, d), `.bottleneck_down.bias` (m,), `.bottleneck_up.weight` (d, m), `.bottleneck_up.bias` (d,).
"""
from __future__ import annotations

import enum
import math
from typing import ClassVar, Literal, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..config import LayerIndex, PeftFormatConfig
from ..errors import InputError
from ..state import replace_module
from ..targets import PRESET_ALIASES, layer_list
from .base import AdapterHolder, Kind, Method
from .layers import master_dtype

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swish": F.silu, "tanh": torch.tanh}


class Mode(enum.Enum):
    AFTER = "after"  # h ← h + f(h) on the module's output
    BESIDE = "beside"  # y + f(x) on the module's first input
    BESIDE_RESIDUAL = "beside_residual"  # BERT's FFN output block LN(dense(h) + x): x ← x + f(x) before it


class Site(NamedTuple):
    """A module path inside each transformer layer, and how an adapter sits there."""

    path: str
    mode: Mode


SITES: dict[str, dict[str, Site]] = {
    "llama": {"attention": Site("self_attn.o_proj", Mode.AFTER), "ffn": Site("mlp", Mode.AFTER),
              "parallel": Site("mlp", Mode.BESIDE)},
    "gpt2": {"attention": Site("attn.c_proj", Mode.AFTER), "ffn": Site("mlp", Mode.AFTER),
             "parallel": Site("mlp", Mode.BESIDE)},
    "bert": {"attention": Site("attention.output.dense", Mode.AFTER), "ffn": Site("output.dense", Mode.AFTER),
             "parallel": Site("output", Mode.BESIDE_RESIDUAL)},
}
"""Architecture family (model_type, through targets.PRESET_ALIASES) → where each kind of site is."""

PLACEMENTS: dict[str, tuple[str, ...]] = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",),
                                          "parallel": ("parallel",)}
"""Placement → the sites it uses."""
DEFAULT_SCALING = {"houlsby": 1.0, "pfeiffer": 1.0, "parallel": 4.0}
"""Placement → s when `scaling` is not set (4 for the parallel adapter, as He et al. found best)."""


class BottleneckConfig(PeftFormatConfig):
    """Bottleneck adapters: where (placement), how wide, which non-linearity."""

    PEFT_TYPE: ClassVar[str] = "LORAKIT_BOTTLENECK"

    placement: Literal["houlsby", "pfeiffer", "parallel"] = Field(
        "pfeiffer", description="houlsby: after attention and after the FFN; pfeiffer: after the FFN; parallel: "
        "beside the FFN (scaled).")
    reduction_factor: Optional[float] = Field(
        None, gt=0, description="Bottleneck size = hidden size / reduction_factor (default 16 when bottleneck_size "
        "is not set either).")
    bottleneck_size: Optional[int] = Field(None, gt=0, description="Bottleneck width m; overrides reduction_factor.")
    non_linearity: Literal["relu", "gelu", "silu", "swish", "tanh"] = Field("relu", description="Activation.")
    scaling: Optional[float] = Field(None, description="s multiplying f(h); default 4.0 for parallel, else 1.0.")
    init_weights: bool = Field(True, description="True: W_up = 0 and biases 0 (the identity). False: random (tests).")
    layers_to_transform: Union[list[LayerIndex], LayerIndex, None] = Field(
        None, description="Only adapt these layer indices.")
    attention_output: Optional[str] = Field(
        None, description="Module path, inside each layer, of the attention output (overrides the architecture's).")
    ffn: Optional[str] = Field(None, description="Module path, inside each layer, of the FFN (overrides the "
                                                 "architecture's); parallel adapters take its first input.")
    modules_to_save: Optional[list[str]] = Field(None, description="Whole modules trained and saved with the adapter.")
    task_type: Optional[str] = Field(None, description="peft task type, e.g. CAUSAL_LM or SEQ_CLS.")
    base_model_name_or_path: Optional[str] = Field(None, description="Where the base model came from.")
    inference_mode: bool = Field(False, description="Written by peft-style loaders.")

    @model_validator(mode="after")
    def _one_width(self):
        if self.reduction_factor is not None and self.bottleneck_size is not None:
            raise ValueError("set reduction_factor or bottleneck_size, not both")
        return self

    def width(self, hidden: int) -> int:
        """The bottleneck width m for hidden size `hidden`."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, math.floor(hidden / (self.reduction_factor or 16)))

    @property
    def scale(self) -> float:
        return self.scaling if self.scaling is not None else DEFAULT_SCALING[self.placement]


class BottleneckAdapter(nn.Module):
    """f(h) = s · up(act(down(h))): (..., d) -> (..., d), run around a site's module in its `mode`."""

    def __init__(self, dim: int, size: int, activation: str, scaling: float, mode: Mode, init: bool = True,
                 dtype=None, device=None):
        super().__init__()
        self.bottleneck_down = nn.Linear(dim, size, dtype=dtype, device=device)
        self.bottleneck_up = nn.Linear(size, dim, dtype=dtype, device=device)
        self.act, self.scaling, self.mode = ACTIVATIONS[activation], scaling, mode
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.bottleneck_down.weight, a=math.sqrt(5))
            self.bottleneck_down.bias.zero_()
            if init:
                self.bottleneck_up.weight.zero_()
                self.bottleneck_up.bias.zero_()
            else:
                self.bottleneck_up.weight.normal_(0.0, 0.2)
                self.bottleneck_up.bias.normal_(0.0, 0.2)

    def update(self, h: torch.Tensor) -> torch.Tensor:
        """f(h) in h's dtype."""
        w = self.bottleneck_down.weight
        return (self.bottleneck_up(self.act(self.bottleneck_down(h.to(w.dtype)))) * self.scaling).to(h.dtype)

    def run(self, base: nn.Module, args: tuple, kwargs: dict):
        """The site's output with this adapter: `base(*args, **kwargs)` changed as `mode` says."""
        return RUNS[self.mode](self, base, args, kwargs)


def _after(adapter: BottleneckAdapter, base: nn.Module, args: tuple, kwargs: dict):
    out = base(*args, **kwargs)
    if isinstance(out, tuple):  # (hidden, extras...) from an attention block
        return (out[0] + adapter.update(out[0]), *out[1:])
    return out + adapter.update(out)


def _beside(adapter: BottleneckAdapter, base: nn.Module, args: tuple, kwargs: dict):
    x = args[0] if args else kwargs["hidden_states"]
    return base(*args, **kwargs) + adapter.update(x)


def _beside_residual(adapter: BottleneckAdapter, base: nn.Module, args: tuple, kwargs: dict):
    """BertOutput(h, x) = LN(dropout(dense(h)) + x): with x + f(x) it is LN(FFN + f(x) + x)."""
    h, x = (args + (None, None))[:2]
    h = kwargs.get("hidden_states", h)
    x = kwargs.get("input_tensor", x)
    return base(h, x + adapter.update(x))


RUNS = {Mode.AFTER: _after, Mode.BESIDE: _beside, Mode.BESIDE_RESIDUAL: _beside_residual}


class AdapterSite(AdapterHolder):
    """A layer's module (attention output, FFN) with bottleneck adapters around it; forward as the module's."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()

    def forward(self, *args, **kwargs):
        adapter = self.active
        if adapter is None:
            return self.base(*args, **kwargs)
        return adapter.run(self.base, args, kwargs)

    def merge(self, safe: bool = False) -> None:
        if self.active is not None:
            raise NotImplementedError(f"bottleneck adapter {self.active_name!r} is nonlinear: it cannot be merged "
                                      "into the base weights; keep it as an adapter (or use LoRA / IA³)")

    def unwrap(self, keep_trained: bool) -> nn.Module:
        return self.base

    def saved_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return dict(self.adapters[adapter_name].state_dict(keep_vars=True))


def sites(model: nn.Module, config: BottleneckConfig) -> dict[str, Site]:
    """Module path → site of every adapter `config` places in `model`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    table = dict(SITES.get(PRESET_ALIASES.get(model_type, model_type)) or SITES.get(model_type) or {})
    if config.attention_output:
        table["attention"] = Site(config.attention_output, Mode.AFTER)
    if config.ffn:
        table.update(ffn=Site(config.ffn, Mode.AFTER), parallel=Site(config.ffn, Mode.BESIDE))
    path, layers = layer_list(model)
    wanted = PLACEMENTS[config.placement]
    missing = [w for w in wanted if w not in table]
    if missing:
        children = sorted(n for n, _ in layers[0].named_modules() if n and n.count(".") < 2)
        raise InputError(f"bottleneck adapters: no {'/'.join(missing)} site known for model type {model_type!r} "
                         f"(known: {', '.join(sorted(SITES))}); set "
                         f"{'attention_output and ffn' if 'attention' in missing else 'ffn'} to module paths inside "
                         f"each layer, e.g. from {path}.0: {', '.join(children)}")
    absent = [i for i in config.layers_to_transform or [] if i >= len(layers)]
    if absent:
        raise InputError(f"layers_to_transform: no layer {', '.join(map(str, absent))} in {path} "
                         f"(layers 0-{len(layers) - 1})")
    out = {}
    for i in range(len(layers)):
        if config.layers_to_transform is None or i in config.layers_to_transform:
            for kind in wanted:
                site = table[kind]
                out[f"{path}.{i}.{site.path}"] = site
    return out


def build(model: nn.Module, config: BottleneckConfig, adapter_name: str) -> list[str]:
    """Wrap every site of `config.placement` in an AdapterSite holding a new adapter; returns the site paths."""
    hidden = model.config.hidden_size
    placed = sites(model, config)
    for name in placed:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise InputError(f"bottleneck adapters: {name} does not exist in this model") from None
        clash = [f"{name}.{n}".rstrip(".") for n, m in module.named_modules()
                 if isinstance(m, AdapterHolder) and not isinstance(m, AdapterSite)]
        if clash:
            raise InputError(f"bottleneck adapters: {clash[0]} already holds other adapters; a bottleneck site "
                             "cannot share modules with layer adapters")
    for name, site in placed.items():
        module = model.get_submodule(name)
        holder = module if isinstance(module, AdapterSite) else replace_module(model, name, AdapterSite(module))
        param = next(holder.base.parameters(), None)
        holder.add(adapter_name, BottleneckAdapter(
            hidden, config.width(hidden), config.non_linearity, config.scale, site.mode, config.init_weights,
            dtype=master_dtype(param.dtype) if param is not None and param.is_floating_point() else None,
            device=param.device if param is not None else None))
    return list(placed)


def _saved_config(config: BottleneckConfig, adapted: dict) -> dict:
    """The width actually used, so a loader does not depend on the default reduction factor."""
    size = next(iter(adapted.values())).bottleneck_down.out_features if adapted else config.bottleneck_size
    return {"bottleneck_size": size, "reduction_factor": None}


METHOD = Method(name="bottleneck", config=BottleneckConfig, peft_type="LORAKIT_BOTTLENECK", kind=Kind.LAYERS,
                build=build, summary=lambda c: f"{c.placement} adapters, "
                f"{f'width {c.bottleneck_size}' if c.bottleneck_size else f'reduction {c.reduction_factor or 16:g}'}",
                saved_config=_saved_config, load_overrides={"init_weights": True})

__all__ = ["BottleneckConfig", "BottleneckAdapter", "AdapterSite", "METHOD", "SITES", "PLACEMENTS"]
