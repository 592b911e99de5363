"""AdaLoRA (Zhang et al. 2023): SVD-form adapters whose rank budget is moved, while training, to where it matters.

    ΔW = P (Λ ⊙ Q) · scaling,   scaling = lora_alpha / (ranknum + 1e-5)
    P = lora_B (out, r),  Λ = lora_E (r, 1),  Q = lora_A (r, in),  ranknum = init_r (also after pruning)

Triplet i of a layer is (P[:, i], Λ[i], Q[i]). A fresh adapter has Λ = 0 (the identity) and P, Q ~ N(0, 0.02).
Training, with `hooks = training_hooks(model)` (the trainer gets them from `METHOD.hooks`;
see `lorakit.tuners.base.TrainingHooks` for where the calls go):

    importance of every factor entry w:  I = |w · ∂L/∂w|
    smoothed:                            Ī ← β1 Ī + (1 − β1) I,   uncertainty Ū ← β2 Ū + (1 − β2) |I − Ī|
    triplet score:                       s(Λ_i) + mean_j s(Q_ij) + mean_k s(P_ki),   s = Ī · Ū
    budget b(t): Σ init_r for t ≤ tinit, then b_T + (b_0 − b_T)(1 − (t − tinit)/(T − tfinal − tinit))³,
                 b_T = target_r × layers from T − tfinal on (T = total_step)
    every deltaT steps the b(t) best triplets over all layers are kept and the rest masked (Λ_i = 0)
    loss += orth_reg_weight · mean over the factors of ‖PᵀP − I‖_F and ‖QQᵀ − I‖_F

A mask lives on each adapter (`mask`, applied in the forward as well), so a masked triplet stays off
whatever the optimizer does between allocations. On disk (peft's layout) masked triplets are dropped:
`base_model.model.<path>.lora_A` (r', in), `.lora_E` (r', 1), `.lora_B` (out, r'), and the config's
`rank_pattern["<path>.lora_E"]` lists which of the init_r triplets were kept; ranknum is not saved.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AdaLoraConfig
from ..errors import InputError
from ..state import active_adapter, adapter_configs, named_adapters
from ..targets import wrap_targets
from .base import Kind, LayerAdapter, Method, TrainingHooks

STATE_FILE = "adalora_state.safetensors"
"""The allocator's state inside a training checkpoint (smoothed scores and masks), for exact resumes."""
FACTORS = ("lora_A", "lora_E", "lora_B")


class AdaLoraAdapter(LayerAdapter):
    """One layer's SVD-form update, a `LayerAdapter` (tuners/base.py) in the layer wrappers."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, ranknum: Optional[int] = None,
                 dropout: float = 0.0, init: bool = True, slots: Optional[list[bool]] = None, dtype=None, device=None):
        super().__init__()
        self.r = r
        self.ranknum = float(r if ranknum is None else ranknum)
        self.alpha = alpha if alpha > 0 else self.ranknum
        self.scaling = self.alpha / (self.ranknum + 1e-5)
        # Which of the layer's init_r triplets these r rows are (a pruned adapter read from disk holds fewer).
        self.slots = [True] * r if slots is None else [bool(s) for s in slots]
        if sum(self.slots) != r:
            raise ValueError(f"rank pattern keeps {sum(self.slots)} triplets, adapter has r={r}")
        kw = dict(dtype=dtype, device=device)
        self.lora_A = nn.Parameter(torch.randn(r, in_features, **kw))
        self.lora_E = nn.Parameter(torch.randn(r, 1, **kw))
        self.lora_B = nn.Parameter(torch.randn(out_features, r, **kw))
        if init:
            with torch.no_grad():
                self.lora_E.zero_()
                self.lora_A.normal_(0.0, 0.02)
                self.lora_B.normal_(0.0, 0.02)
        self.register_buffer("mask", torch.ones(r, dtype=torch.bool, device=device), persistent=False)
        # mask · scaling: multiplies Λ in the forward, so masking costs no extra kernel.
        self.register_buffer("gate", torch.full((r,), self.scaling, **kw), persistent=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def dtype(self) -> torch.dtype:
        return self.lora_A.dtype

    def coefficients(self) -> torch.Tensor:
        """Λ ⊙ mask · scaling, shape (r,)."""
        return self.lora_E.view(-1) * self.gate

    def delta_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """ΔW = P diag(Λ ⊙ mask) Q · scaling, shape (out, in), in `dtype` (default: the factors' dtype)."""
        a, b, c = self.lora_A, self.lora_B, self.coefficients()
        if dtype is not None:
            a, b, c = a.to(dtype), b.to(dtype), c.to(dtype)
        return (b * c) @ a

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out): P (Λ ⊙ mask · scaling ⊙ Q dropout(x))."""
        return F.linear(F.linear(self.dropout(x), self.lora_A) * self.coefficients(), self.lora_B)

    def forward(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.update(x.to(self.dtype)).to(y.dtype)

    @torch.no_grad()
    def set_mask(self, keep: torch.Tensor) -> None:
        """Keep the triplets where `keep` (r,) is True; the others are switched off and their Λ set to 0."""
        self.mask.copy_(keep)
        self.gate.copy_(keep.to(self.gate.dtype) * self.scaling)
        self.zero_masked()

    @torch.no_grad()
    def zero_masked(self) -> None:
        """Λ = 0 for the masked triplets (the optimizer may have moved them; peft's files expect 0)."""
        self.lora_E.masked_fill_(~self.mask.view(-1, 1), 0.0)

    def kept_mask(self) -> list[bool]:
        """Which of the layer's init_r triplets are kept: peft's rank_pattern entry for this layer."""
        live = iter(self.mask.tolist())
        return [bool(slot and next(live)) for slot in self.slots]

    def saved_tensors(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        """peft's per-layer names; masked triplets are dropped (copies then, else the live parameters)."""
        if bool(self.mask.all()):
            return {"lora_A": self.lora_A, "lora_E": self.lora_E, "lora_B": self.lora_B}
        keep = self.mask
        return {"lora_A": self.lora_A[keep], "lora_E": self.lora_E[keep], "lora_B": self.lora_B[:, keep]}

    def orthogonality(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(‖QQᵀ − I‖_F, ‖PᵀP − I‖_F): how far Q's rows and P's columns are from orthonormal."""
        a, b = self.lora_A, self.lora_B
        eye = torch.eye(self.r, dtype=a.dtype, device=a.device)
        return torch.linalg.matrix_norm(a @ a.T - eye), torch.linalg.matrix_norm(b.T @ b - eye)


def build(model: nn.Module, config: AdaLoraConfig, adapter_name: str) -> list[str]:
    """An AdaLoraAdapter on every target; a config with a rank_pattern (read from disk) gives pruned sizes."""
    wrappers = wrap_targets(model, config)
    bad = [n for n, w in wrappers.items() if w.embedding]
    if bad:
        raise TypeError(f"AdaLoRA adapts Linear-like layers only, not embeddings: {bad}")
    patterns = {key.rsplit(".lora_E", 1)[0]: mask for key, mask in (config.rank_pattern or {}).items()}
    for name, w in wrappers.items():
        slots = patterns.get(name, [True] * config.init_r)
        if len(slots) != config.init_r:
            raise ValueError(f"rank_pattern[{name}.lora_E] has {len(slots)} entries, expected init_r={config.init_r}")
        w.add(adapter_name, AdaLoraAdapter(w.in_features, w.out_features, sum(slots), config.lora_alpha,
                                           config.init_r, config.lora_dropout, config.init_lora_weights, slots,
                                           dtype=w.adapter_dtype()))
    return list(wrappers)


def find_adapters(model: nn.Module, adapter_name: Optional[str] = None) -> dict[str, AdaLoraAdapter]:
    """Module name → AdaLoRA adapter (named `adapter_name`, or any name), found by type."""
    return {n: a for n, a in named_adapters(model, adapter_name) if isinstance(a, AdaLoraAdapter)}


class RankAllocator:
    """Smoothed importance of every triplet and the budget schedule; masks the least important triplets.

    Keyed by module name; `step(adapters, t)` is called once per optimizer step, while the grads exist.
    """

    def __init__(self, config, total_step: int, adapters: dict[str, AdaLoraAdapter]):
        self.beta1, self.beta2 = config.beta1, config.beta2
        self.tinit, self.deltaT, self.total_step = config.tinit, config.deltaT, total_step
        self.final_step = total_step - config.tfinal
        if self.tinit >= self.final_step:
            raise InputError(f"AdaLoRA schedule has no pruning phase: tinit={config.tinit} >= total_step - tfinal "
                             f"= {total_step} - {config.tfinal}; lower tinit/tfinal or train longer")
        self.init_budget = sum(a.r for a in adapters.values())
        self.target_budget = config.target_r * len(adapters)
        if self.target_budget > self.init_budget:
            raise InputError(f"target_r={config.target_r} × {len(adapters)} layers exceeds the initial budget "
                             f"({self.init_budget} triplets)")
        self.ipt: dict[str, torch.Tensor] = {}  # "<module>.<factor>" -> Ī, fp32, shaped like the factor
        self.unc: dict[str, torch.Tensor] = {}  # "<module>.<factor>" -> Ū

    def budget(self, step: int) -> tuple[int, bool]:
        """(triplets allowed at `step`, whether to reallocate at `step`)."""
        if step <= self.tinit:
            return self.init_budget, False
        if step > self.final_step:
            return self.target_budget, True
        left = 1 - (step - self.tinit) / (self.final_step - self.tinit)
        return int((self.init_budget - self.target_budget) * left ** 3 + self.target_budget), step % self.deltaT == 0

    @torch.no_grad()
    def update_importance(self, adapters: dict[str, AdaLoraAdapter]) -> None:
        """Fold this step's |w · grad| into the smoothed sensitivity and uncertainty of every factor entry."""
        for name, adapter in adapters.items():
            for factor in FACTORS:
                p, key = getattr(adapter, factor), f"{name}.{factor}"
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                ipt = (p.float() * grad.float()).abs()
                avg = self.ipt.setdefault(key, torch.zeros_like(ipt))
                avg.lerp_(ipt, 1 - self.beta1)
                self.unc.setdefault(key, torch.zeros_like(ipt)).lerp_((ipt - avg).abs(), 1 - self.beta2)

    def triplet_scores(self, adapters: dict[str, AdaLoraAdapter]) -> dict[str, torch.Tensor]:
        """Module name → (r,) score of each triplet: Λ's score plus the mean scores of its Q row and P column."""
        def score(name: str, factor: str) -> torch.Tensor:
            key = f"{name}.{factor}"
            if key not in self.ipt:
                return torch.zeros_like(getattr(adapters[name], factor), dtype=torch.float)
            return self.ipt[key] * self.unc[key]

        return {n: score(n, "lora_E").view(-1) + score(n, "lora_A").mean(1) + score(n, "lora_B").mean(0)
                for n in adapters}

    @torch.no_grad()
    def allocate(self, adapters: dict[str, AdaLoraAdapter], budget: int) -> None:
        """Keep exactly the `budget` best-scoring triplets over all layers; mask the rest."""
        scores = self.triplet_scores(adapters)
        device = next(iter(scores.values())).device
        flat = torch.cat([s.to(device) for s in scores.values()])
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(max(0, min(budget, flat.numel()))).indices] = True
        for (name, adapter), part in zip(adapters.items(), keep.split([s.numel() for s in scores.values()])):
            adapter.set_mask(part.to(adapter.mask.device))

    def step(self, adapters: dict[str, AdaLoraAdapter], step: int) -> None:
        """One optimizer step's work: importance, then (on schedule) a new allocation; masked Λ stay 0."""
        if step <= self.final_step:
            self.update_importance(adapters)
        if step < self.final_step:
            budget, due = self.budget(step)
            if due:
                self.allocate(adapters, budget)
        elif step == self.final_step:  # the final allocation; the scores are not needed afterwards
            self.allocate(adapters, self.target_budget)
            self.ipt.clear()
            self.unc.clear()
        for adapter in adapters.values():
            adapter.zero_masked()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"ipt.{k}": v for k, v in self.ipt.items()}, **{f"unc.{k}": v for k, v in self.unc.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.ipt = {k[4:]: v for k, v in state.items() if k.startswith("ipt.")}
        self.unc = {k[4:]: v for k, v in state.items() if k.startswith("unc.")}


class AdaLoraHooks(TrainingHooks):
    """What a training loop adds for an AdaLoRA adapter: the orthogonality penalty in the loss, the
    rank allocator after each optimizer step (before zero_grad: it reads the grads), its state in
    checkpoints."""

    def __init__(self, adapter_name: str, config, total_step: int, adapters: dict[str, AdaLoraAdapter]):
        self.adapter_name, self.orth_reg_weight = adapter_name, config.orth_reg_weight
        self.allocator = RankAllocator(config, total_step, adapters)

    def adapters(self, model: nn.Module) -> dict[str, AdaLoraAdapter]:
        return find_adapters(model, self.adapter_name)

    def regularizer(self, model: nn.Module) -> torch.Tensor:
        """orth_reg_weight × the mean of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F over every factor (a scalar with grad)."""
        terms = [t for a in self.adapters(model).values() for t in a.orthogonality()]
        return self.orth_reg_weight * torch.stack([t.to(terms[0].device) for t in terms]).mean()

    def after_step(self, model: nn.Module, step: int) -> None:
        """Update the importance scores from the current grads and reallocate the budget when due."""
        self.allocator.step(self.adapters(model), step)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        masks = {f"mask.{n}": a.mask for n, a in self.adapters(model).items()}
        return {k: v.detach().cpu().contiguous() for k, v in {**self.allocator.state_dict(), **masks}.items()}

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        for name, adapter in self.adapters(model).items():
            adapter.set_mask(state[f"mask.{name}"].to(adapter.mask.device))
        device = next(iter(self.adapters(model).values())).lora_A.device
        self.allocator.load_state_dict({k: v.to(device) for k, v in state.items() if not k.startswith("mask.")})

    def save(self, model: nn.Module, directory: str | Path) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(model), str(Path(directory) / STATE_FILE))

    def load(self, model: nn.Module, directory: str | Path) -> None:
        from safetensors.torch import load_file

        self.load_state_dict(model, load_file(str(Path(directory) / STATE_FILE)))


def training_hooks(model: nn.Module, adapter_name: Optional[str] = None,
                   total_step: Optional[int] = None) -> AdaLoraHooks:
    """Hooks that train the AdaLoRA adapter `adapter_name` (default: the active one) of `model`.

    The schedule length is the adapter config's `total_step`, or `total_step` here when the config
    leaves it unset (it is then written into the config, so saved adapters carry it).
    """
    configs = adapter_configs(model)
    name = adapter_name or active_adapter(model)
    adapters = find_adapters(model, name)
    if name is None or not adapters:
        raise ValueError(f"no AdaLoRA adapter named {name!r} on this model (adapters: {list(configs)})")
    config = configs[name]
    if config.total_step is None:
        if total_step is None:
            raise InputError("AdaLoRA needs total_step (the schedule length): set it in AdaLoraConfig or pass it")
        config = configs[name] = config.model_copy(update={"total_step": total_step})
    return AdaLoraHooks(name, config, config.total_step, adapters)


def _saved_config(config: AdaLoraConfig, adapted: dict) -> dict:
    """peft's rank_pattern: the kept-triplet masks, once pruned; peft refuses files without total_step."""
    if config.total_step is None:
        warnings.warn("AdaLoRA adapter saved without total_step: peft refuses to load it; set "
                      "AdaLoraConfig.total_step (training_hooks and the trainer fill it in)", stacklevel=4)
    masks = {f"{n}.lora_E": a.kept_mask() for n, a in adapted.items()}
    return {"rank_pattern": masks if any(not all(m) for m in masks.values()) else config.rank_pattern}


METHOD = Method(name="adalora", config=AdaLoraConfig, peft_type="ADALORA", kind=Kind.LAYERS, build=build,
                summary=lambda c: f"init_r={c.init_r} → target_r={c.target_r} on "
                                  f"{'the preset targets' if c.target_modules is None else repr(c.target_modules)}",
                hooks=lambda model, name, total: training_hooks(model, name, total),
                saved_config=_saved_config, load_overrides={"init_lora_weights": True})
