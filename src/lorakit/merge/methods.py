"""Merge methods as pure tensor functions, and the table of whole-model methods by recipe name.

Shapes: `tensors` / `deltas` are stacked, (n, *shape); `weights` is (n,). Everything runs in
fp32 (fp64 if the inputs are) and the caller casts the result. Two families use these:

- whole-model merging (`METHODS`, mergekit's recipe names and semantics): linear, slerp,
  task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties;
- adapter arithmetic (`merge/combine.py`, peft's `add_weighted_adapter` semantics).

The families differ in small, documented ways that `combine_deltas`' options spell out: mergekit
elects TIES signs on the weighted deltas and divides by the summed weights of the agreeing
entries, peft elects on the unweighted deltas and divides by their count; mergekit's DARE
rescales kept entries to the original L1 norm, peft's by 1/density; mergekit's magnitude pruning
keeps at least one entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch

Prune = Callable[[torch.Tensor], torch.Tensor]


def work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---- sparsification of one delta --------------------------------------------------------------

def rescale_l1(original: torch.Tensor, masked: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """`masked` scaled so that its L1 norm equals `original`'s (unchanged when either is ~0)."""
    before, after = original.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def prune_magnitude(delta: torch.Tensor, density: float, keep_one: bool = False, rescale: bool = False) -> torch.Tensor:
    """Keep the `density` share of entries with the largest |value|, zero the rest (TIES' trim step).

    k = int(density · numel), at least 1 with `keep_one` (mergekit). `rescale`: L1 rescaling (mergekit's option).
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = int(density * delta.numel())
    k = max(1, k) if keep_one else k
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[torch.topk(delta.abs().reshape(-1), k=k, largest=True).indices] = 1
    masked = delta * mask.view_as(delta)
    return rescale_l1(delta, masked) if rescale else masked


def prune_random(delta: torch.Tensor, density: float, rescale: Literal["density", "l1", None],
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DARE's drop: keep each entry with probability `density`, then rescale the survivors by
    1/density (the paper, peft) or to the original L1 norm (mergekit); `None`: no rescaling."""
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full_like(delta, density), generator=generator)
    masked = delta * mask
    if rescale == "density":
        return masked / density
    return rescale_l1(delta, masked) if rescale == "l1" else masked


def prune_outliers(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False) -> torch.Tensor:
    """Model Breadcrumbs: drop the `gamma` share of largest |values| (outliers) and then the smallest,
    keeping `density` of the entries (fewer outliers are dropped when both cannot be met)."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    order = torch.sort(delta.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[bottom: bottom + keep]] = 1
    masked = delta * mask.view_as(delta)
    return rescale_l1(delta, masked) if rescale else masked


# ---- combining deltas -------------------------------------------------------------------------

def sign_agreement(stacked: torch.Tensor, method: Literal["total", "frequency"] = "total") -> torch.Tensor:
    """TIES' elect step: bool (n, *shape), True where an entry has the majority sign of its column.

    'total': the sign of the sum (mergekit's 'sum'); 'frequency': the sign held by more entries
    (mergekit's 'count'); ties go to +. Zero entries never agree.
    """
    votes = stacked.sum(dim=0) if method == "total" else stacked.sign().sum(dim=0)
    return torch.where(votes >= 0, stacked > 0, stacked < 0)


def combine_deltas(deltas: torch.Tensor, weights: torch.Tensor, *, prune: Optional[Prune] = None,
                   consensus: Optional[Literal["total", "frequency"]] = None, elect_on: str = "weighted",
                   divide: Optional[Literal["weights", "count"]] = None, scale: float = 1.0) -> torch.Tensor:
    """Σ_i w_i · prune(δ_i), optionally keeping only sign-agreeing entries (TIES), (n, *shape) -> shape.

    elect_on: 'weighted' (mergekit) or 'unweighted' (peft) deltas vote on the sign.
    divide: 'weights' — by Σ w_i over the kept entries (mergekit's normalize), 'count' — by the
    number of kept entries (peft's disjoint merge), None — a plain sum. `scale`: mergekit's lambda.
    `deltas` is overwritten (pass a fresh stack): whole-model merges run this on tensors of
    hundreds of MB, so nothing of that size is allocated beyond a few temporaries.
    """
    if prune is not None:
        for i in range(len(deltas)):
            deltas[i] = prune(deltas[i])
    w = weights.to(deltas.dtype)
    agree = sign_agreement(deltas, consensus) if consensus is not None and elect_on == "unweighted" else None
    weighted = deltas.mul_(w.view(-1, *([1] * (deltas.dim() - 1))))
    if consensus is not None and agree is None:
        agree = sign_agreement(weighted, consensus)
    if agree is None:
        mixed = weighted.sum(dim=0)
        if divide == "weights":
            total = w.sum()
            mixed = mixed / (total if total.abs() >= 1e-8 else 1)
        elif divide == "count":
            mixed = mixed / len(w)
    else:
        mixed = weighted.mul_(agree).sum(dim=0)
        if divide == "weights":
            divisor = sum(wi * a for wi, a in zip(w.tolist(), agree))
            mixed = mixed / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        elif divide == "count":
            mixed = mixed / agree.sum(dim=0).clamp(min=1)
    return mixed * scale if scale != 1 else mixed


# ---- whole tensors ------------------------------------------------------------------------------

def linear(tensors: torch.Tensor, weights: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Weighted average Σ w_i θ_i / Σ w_i (model soups); a weighted sum without `normalize`."""
    out = torch.zeros_like(tensors[0])
    for t, w in zip(tensors, weights.tolist()):
        out.add_(t, alpha=w)
    return out / weights.sum() if normalize else out


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation between two whole tensors (t=0: v0, t=1: v1).

    The angle comes from the normalised flattened tensors; the result interpolates the tensors
    themselves: sin((1−t)θ)/sin θ · v0 + sin(tθ)/sin θ · v1. Nearly (anti)parallel tensors
    (|cos θ| > dot_threshold) are interpolated linearly.
    """
    a, b = v0.reshape(-1), v1.reshape(-1)
    na, nb = a.norm(), b.norm()
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        return (1 - t) * v0 + t * v1
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / sin_theta) * v0 + (torch.sin(t * theta) / sin_theta) * v1


# ---- the recipe methods -------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """A recipe parameter: `per_model` ones may be set under `models[i].parameters` (and globally)."""

    name: str
    kind: type  # float or bool
    per_model: bool
    default: object = None  # None: required


@dataclass(frozen=True)
class Method:
    """A whole-model merge method.

    `run(base, others, params, generator)`: base (*shape) or None, others (n, *shape) stacked (and
    overwritten), params {name: value} with per-model values as lists aligned with `others`.
    """

    run: Callable[..., torch.Tensor]
    params: tuple[Param, ...]
    needs_base: bool
    max_models: Optional[int] = None  # non-base models
    param_names: frozenset = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))


def _run_linear(base, others, params, generator):
    return linear(others, torch.tensor(params["weight"], dtype=others.dtype), params["normalize"])


def _run_slerp(base, others, params, generator):
    return slerp(params["t"], base, others[0])


def _task_method(prune: Optional[str], consensus: bool, rescale_default: bool, normalize_default: bool,
                 extra: tuple[Param, ...] = ()) -> Method:
    """mergekit's generalized task arithmetic: θ_base + λ · combine(prune(θ_i − θ_base))."""

    def run(base, others, params, generator):
        deltas = others.sub_(base)
        rescale = params["rescale"]
        for i in range(len(deltas)):
            density = params["density"][i]
            if prune == "magnitude":
                deltas[i] = prune_magnitude(deltas[i], density, keep_one=True, rescale=rescale)
            elif prune == "random":
                deltas[i] = prune_random(deltas[i], density, "l1" if rescale else None, generator)
            elif prune == "outliers":
                deltas[i] = prune_outliers(deltas[i], density, params["gamma"][i], rescale)
        mixed = combine_deltas(deltas, torch.tensor(params["weight"], dtype=base.dtype),
                               consensus="total" if consensus else None, elect_on="weighted",
                               divide="weights" if params["normalize"] else None, scale=params["lambda"])
        return mixed.add_(base)

    shared = (Param("weight", float, True), Param("density", float, True, 1.0),
              Param("normalize", bool, False, normalize_default), Param("rescale", bool, False, rescale_default),
              Param("lambda", float, False, 1.0), Param("int8_mask", bool, False, False))
    return Method(run, shared + extra, needs_base=True)


METHODS: dict[str, Method] = {
    "linear": Method(_run_linear, (Param("weight", float, True), Param("normalize", bool, False, True)), needs_base=False),
    "slerp": Method(_run_slerp, (Param("t", float, False),), needs_base=True, max_models=1),
    "task_arithmetic": _task_method(None, consensus=False, rescale_default=False, normalize_default=False),
    "ties": _task_method("magnitude", consensus=True, rescale_default=False, normalize_default=True),
    "dare_linear": _task_method("random", consensus=False, rescale_default=True, normalize_default=False),
    "dare_ties": _task_method("random", consensus=True, rescale_default=True, normalize_default=False),
    "breadcrumbs": _task_method("outliers", consensus=False, rescale_default=False, normalize_default=False,
                                extra=(Param("gamma", float, True, 0.01),)),
    "breadcrumbs_ties": _task_method("outliers", consensus=True, rescale_default=False, normalize_default=False,
                                     extra=(Param("gamma", float, True, 0.01),)),
}
"""Recipe `merge_method` → implementation, with mergekit's parameters and defaults."""

__all__ = ["METHODS", "Method", "Param", "linear", "slerp", "combine_deltas", "sign_agreement",
           "prune_magnitude", "prune_random", "prune_outliers", "rescale_l1"]
