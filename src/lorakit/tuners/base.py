"""The adapter protocol every PEFT method follows, and the registry record that defines a method.

A method lives in one file under `tuners/` and is one `Method` entry in `lorakit.methods.METHODS`.
Nothing outside that file names it: `inject`, `io`, the trainer's config schema, its loop hooks,
the CLI, `merge`, `route`, `set_adapter` and `disable_adapters` all go through the protocol below.

Two kinds of objects
--------------------
**Holders** (`AdapterHolder`) sit in the model in place of (or around) one of its modules and keep
any number of *named* adapters, at most one of them active. They are what `set_adapter`,
`disable_adapters`, `delete_adapter`, `merge`, `unmerge` and `unload` talk to, found by type
(`lorakit.state.holders`). Holders that exist:
- `tuners.layers.LayerWrapper` (`AdaptedLinear`, `AdaptedEmbedding`): one Linear-like layer or
  embedding; LoRA, DoRA, VeRA, AdaLoRA and IA³ adapters live in them. `forward` sees the layer
  input and the base output;
- `ModulesToSave` (below): a whole module trained per adapter (a classification head);
- `tuners.bottleneck.AdapterSite`: bottleneck adapters around an attention output / FFN;
- a virtual-token method's holder (around the input embedding or the model's forward).

A holder's contract: `adapters` (an nn.ModuleDict, name -> that adapter's module here); a forward
that behaves exactly as the wrapped module when `self.active` is None (`disable_adapters` sets it
to None directly, `set_active(name)` to `adapters[name]`); `unwrap(keep_trained)` (the plain module
to put back: `delete_adapter` of the last adapter, `unload`, `merge_and_unload`; a holder that was
added to the model rather than wrapped around a module removes its hooks there and returns None, and
is then deleted); `saved_tensors(name)`
(suffix -> live tensor, saved as `base_model.model.<holder path>.<suffix>`; return {} and use
`Method.model_tensors` for keys that are not per module, e.g. peft's top-level `prompt_embeddings`);
`merge` / `unmerge` (the base class refuses to merge an active adapter, with its name).
Everything an adapter trains must be a parameter of `adapters[name]`: `mark_trainable` unfreezes
exactly that, and checkpoints save every parameter that requires grad.

**Layer adapters** (`LayerAdapter`) are the per-layer, per-name parameters inside a
`LayerWrapper`. Their contract, with x the layer input (..., in) and y = base(x) (..., out):
- `forward(layer, x, y) -> (..., out)`: the adapted output. An additive method returns
  y + its update; a scaling method (IA³ on keys/values) returns y ⊙ l.
- `scales_input` / `input(x)`: a method that rescales the *input* (IA³ on the feed-forward input)
  sets `scales_input = True`; the wrapper then computes y = base(adapter.input(x)).
- `embed(layer, ids, y)`: the same for embeddings (only methods that adapt embeddings).
- `delta_weight(dtype=None) -> (out, in)`: ΔW, where the method is an additive low-rank update
  (LoRA, VeRA, AdaLoRA); the one definition of it.
- `merged_weight(layer, w) -> w'` / `unmerged_weight(layer, w') -> w` on the (out, in) fp32 base
  weight, and `merged_bias` / `unmerged_bias`; defaults: w ± delta_weight(), bias unchanged.
- `saved_tensors(layer) -> {suffix: tensor}`: peft's per-layer key suffixes (io adds the module
  path); `loadable_extras(layer)`: tensors peft writes that may be present and are then copied.
- `low_rank_factors() -> (A (r, in), B (out, r), scaling) | None`: the adapter as a plain low-rank
  update ΔW = scaling · B A, where it is one (plain LoRA); what `route()` stacks per row and adapter
  arithmetic combines. None: it is not (DoRA, VeRA, AdaLoRA, IA³), and those refuse it.
- `optimizer_roles(layer) -> {role: [params]}`: parameters with their own learning rate (LoRA+'s B).
- `dtype`: the dtype the adapter computes in (inputs are cast to it).

Adding a method (the recipe)
----------------------------
1. A config class (a `lorakit.config.PeftFormatConfig`: pydantic, peft's field names, `PEFT_TYPE`).
2. `tuners/<method>.py` with its adapter (a `LayerAdapter` for methods that wrap layers; its own
   `AdapterHolder` for anything else) and a `build(model, config, adapter_name) -> list[str]` that
   puts the adapter in place (layer methods: `lorakit.targets.wrap_targets` selects and wraps) and
   returns the adapted module paths.
3. A `Method(...)` record in that file, and its name in `lorakit.methods.METHODS`. That entry is the
   trainer's `method:` value and its config section (`<name>:` in the YAML), the `peft_type` that
   `load_adapter` reads, what `lorakit inspect` prints.
4. Optional: `hooks` (a `TrainingHooks` factory: loss terms, per-step work, checkpoint state, save
   options), `model_tensors` (on-disk tensors not kept in a layer, e.g. VeRA's shared projection,
   a prompt's embeddings), `saved_config` (config fields derived from the trained adapter),
   `load_overrides` (config fields set when loading weights instead of initialising them),
   `check_run` (a trainer-config check that runs before any model loads).
A virtual-token method (`kind=Kind.VIRTUAL_TOKENS`) brings its own holder; `merge` refuses it with a
clear error, and so does `route` unless its holder sets `routes_rows` (`route_rows(names)`: row i
gets names[i]'s adapter until called with None; `tuners/virtual_tokens.py` does). Everything else
(save/load, set_adapter, disable_adapters, delete, trainable marking) works through the holder
protocol. Their `modules_to_save` copies are saved as `base_model.<path>` (peft's layout for
prompt-learning methods, which have no inner model wrapper).
"""
from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from ..errors import UnsupportedOperation


class Kind(enum.Enum):
    """How a method changes the model."""

    LAYERS = "wraps layers"  # adapters inside existing modules (LoRA family, IA³, bottleneck)
    VIRTUAL_TOKENS = "adds virtual tokens"  # learned tokens before the input (prompt, prefix, P-tuning)


class TrainingHooks:
    """What a method adds to the training loop; every hook is optional (the defaults do nothing).

    The loop, per optimizer step (see `lorakit.train.loop`):

        hooks.start(model, output_dir, save_adapter)         # once, before the first step (also on resume)
        loss = task_loss + hooks.regularizer(model) / micro  # when it returns a tensor
        loss.backward(); optimizer.step()
        hooks.after_step(model, step)                        # step = 1, 2, ...; grads still present
        optimizer.zero_grad()
    and `save(model, dir)` / `load(model, dir)` with every checkpoint; `save_options(output_dir)`
    gives extra keyword arguments for `save_adapter` of the shipped adapter; `metrics()` values join
    each train row of metrics.jsonl (e.g. a loss term's last value). `HookChain` runs several.
    """

    def start(self, model: nn.Module, output_dir: Path, save_adapter: Callable[[Path], object]) -> None:
        """`save_adapter(directory)` writes the adapter as it is now (e.g. PiSSA's initial factors)."""

    def regularizer(self, model: nn.Module) -> Optional[torch.Tensor]:
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        pass

    def save(self, model: nn.Module, directory: Path) -> None:
        pass

    def load(self, model: nn.Module, directory: Path) -> None:
        pass

    def save_options(self, output_dir: Path) -> dict:
        return {}

    def metrics(self) -> dict:
        return {}


NO_HOOKS = TrainingHooks()


class HookChain(TrainingHooks):
    """Several hooks as one: each hook in order; the regularizers are summed, options and metrics merged."""

    def __init__(self, hooks: list[TrainingHooks]):
        self.hooks = hooks

    def start(self, model: nn.Module, output_dir: Path, save_adapter: Callable[[Path], object]) -> None:
        for h in self.hooks:
            h.start(model, output_dir, save_adapter)

    def regularizer(self, model: nn.Module) -> Optional[torch.Tensor]:
        terms = [t for t in (h.regularizer(model) for h in self.hooks) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def after_step(self, model: nn.Module, step: int) -> None:
        for h in self.hooks:
            h.after_step(model, step)

    def save(self, model: nn.Module, directory: Path) -> None:
        for h in self.hooks:
            h.save(model, directory)

    def load(self, model: nn.Module, directory: Path) -> None:
        for h in self.hooks:
            h.load(model, directory)

    def save_options(self, output_dir: Path) -> dict:
        return {k: v for h in self.hooks for k, v in h.save_options(output_dir).items()}

    def metrics(self) -> dict:
        return {k: v for h in self.hooks for k, v in h.metrics().items()}


@dataclass(frozen=True)
class Method:
    """One PEFT method: everything the rest of lorakit needs to know about it."""

    name: str
    """The trainer's `method:` value and the name of its config section."""
    config: type
    """Its config class (a `PeftFormatConfig`)."""
    peft_type: str
    """`peft_type` in adapter_config.json (peft's name where peft has the method)."""
    kind: Kind
    build: Callable[[nn.Module, Any, str], list[str]]
    """Adds adapter `name` to the model in place; returns the adapted module paths."""
    summary: Callable[[Any], str]
    """A few words for `lorakit inspect`, e.g. "r=16 on ['q_proj', 'v_proj']"."""
    hooks: Optional[Callable[[nn.Module, str, int], Optional[TrainingHooks]]] = None
    """(model, adapter_name, total_steps) -> hooks for the training loop, or None."""
    model_tensors: Optional[Callable[[nn.Module, str], dict]] = None
    """(model, adapter_name) -> {on-disk key: live tensor} saved besides the per-layer tensors."""
    saved_config: Optional[Callable[[Any, dict], dict]] = None
    """(config, {module path: adapter}) -> config fields to write, derived from the live adapter."""
    load_overrides: Mapping[str, Any] = field(default_factory=dict)
    """Config fields set when loading weights from disk (so nothing is initialised for nothing)."""
    check_run: Optional[Callable[[Any, Any], None]] = None
    """(method config, whole RunConfig) -> raises ValueError for a run the trainer cannot do (checked before the
    model loads)."""


class AdapterHolder(nn.Module):
    """A module that keeps named adapters (`self.adapters`), at most one active (`self.active`).

    Subclasses provide `adapters` (an nn.ModuleDict, set in their __init__) and decide what `active`
    means in forward. `active` and `merged` are plain attributes: a forward reads them without lookups.
    """

    adapters: nn.ModuleDict
    routes_rows = False
    """True: `route_rows(names)` gives batch row i adapter names[i] (see `lorakit.route`)."""

    def __init__(self):
        super().__init__()
        self.__dict__["active"] = None
        self.merged: Union[str, tuple[str, ...], None] = None

    @property
    def active_name(self) -> Union[str, tuple[str, ...], None]:
        """The active adapter's name; a tuple of names for several applied together (`stack`)."""
        names = getattr(self.active, "names", None)
        if names is not None:
            return names
        return next((n for n, a in self.adapters.items() if a is self.active), None)

    def set_active(self, name: Union[str, tuple[str, ...], None]) -> None:
        """Make adapter `name` active (None: none); a tuple of names applies them together (`stack`)."""
        if self.merged is not None and name != self.merged:
            raise RuntimeError(f"adapter {self.merged!r} is merged into the base; unmerge before switching")
        self.__dict__["active"] = self.adapter_for(name)

    def adapter_for(self, name: Union[str, tuple[str, ...], None]):
        """The adapter module of `name`, or the `stack` of a tuple of names (None for None)."""
        if name is None:
            return None
        if isinstance(name, tuple):
            return self.stack(name)
        return self.adapters[name]

    def stack(self, names: tuple[str, ...]):
        """Several adapters applied together; holders that cannot (any but the layer wrappers) refuse."""
        raise UnsupportedOperation(f"{type(self).__name__} applies one adapter at a time, not {list(names)} together "
                                   "(stacking adapters works for plain LoRA layers; not with modules_to_save)")

    def add(self, name: str, adapter: nn.Module) -> None:
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists on this module")
        self.adapters[name] = adapter

    def delete(self, name: str) -> None:
        merged = self.merged if isinstance(self.merged, tuple) else (self.merged,)
        if name in merged:
            raise RuntimeError(f"adapter {name!r} is merged; unmerge before deleting it")
        active = self.active_name if isinstance(self.active_name, tuple) else (self.active_name,)
        if name in active:
            self.set_active(None)
        del self.adapters[name]

    def merge(self, safe: bool = False) -> None:
        """Fold the active adapter into the base weights (holders that cannot: raise when one is active)."""
        if self.active is not None:
            raise NotImplementedError(f"adapter {self.active_name!r} ({type(self).__name__}) cannot be merged "
                                      "into the base weights")

    def unmerge(self) -> None:
        pass

    def unwrap(self, keep_trained: bool) -> Optional[nn.Module]:
        """The plain module to put back when the adapters are removed (`keep_trained`: after a merge);
        None for a holder added to the model (it is deleted)."""
        raise NotImplementedError

    def saved_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Suffix (after this holder's module path) -> live tensor, for everything `adapter_name` saves here."""
        return {}

    def loadable_extras(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Suffix -> live tensor that a file may hold besides `saved_tensors` (copied when present)."""
        return {}


class LayerAdapter(nn.Module):
    """Base of the adapters inside a `LayerWrapper` (the protocol is in this module's docstring)."""

    scales_input = False

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def merged_weight(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """The merged (out, in) fp32 weight for base weight `w` (out, in) fp32."""
        return w + self.delta_weight(torch.float32)

    def unmerged_weight(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """The inverse of `merged_weight`."""
        return w - self.delta_weight(torch.float32)

    def merged_bias(self, b: torch.Tensor) -> torch.Tensor:
        return b

    def unmerged_bias(self, b: torch.Tensor) -> torch.Tensor:
        return b

    def saved_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loadable_extras(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def low_rank_factors(self) -> Optional[tuple[torch.Tensor, torch.Tensor, float]]:
        return None

    def optimizer_roles(self, layer: nn.Module) -> dict[str, list[nn.Parameter]]:
        return {}


class ModulesToSave(AdapterHolder):
    """A whole module trained per adapter (e.g. a classification head); the original stays intact."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original
        self.copies = nn.ModuleDict()

    @property
    def adapters(self) -> nn.ModuleDict:
        return self.copies

    def add(self, name: str, adapter: Optional[nn.Module] = None) -> None:
        super().add(name, copy.deepcopy(self.original) if adapter is None else adapter)

    def merge(self, safe: bool = False) -> None:
        pass  # the active copy simply replaces the original when unloading

    def unwrap(self, keep_trained: bool) -> nn.Module:
        return self.active if keep_trained and self.active is not None else self.original

    def saved_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        return dict(self.adapters[adapter_name].state_dict(keep_vars=True))

    def forward(self, *args, **kwargs):
        return (self.active or self.original)(*args, **kwargs)
