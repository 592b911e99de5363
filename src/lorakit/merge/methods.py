"""Merge methods as pure tensor functions, and the table of whole-model methods by recipe name.

Shapes: `tensors` / `deltas` are stacked, (n, *shape); `weights` is (n,). Everything runs in
fp32 (fp64 if the inputs are) and the caller casts the result. Two families use these:

- whole-model merging (`METHODS`, mergekit's recipe names and semantics): linear, slerp,
  task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties;
- adapter arithmetic (`merge/combine.py`, peft's `add_weighted_adapter` semantics).

The families differ in small, documented ways that `combine_deltas`' options spell out: mergekit
elects TIES signs on the weighted deltas and divides by the summed weights of the agreeing
entries (`by_weights`), peft elects on the unweighted deltas and divides by their count
(`by_count`); mergekit's DARE rescales kept entries to the original L1 norm, peft's by 1/density;
mergekit's magnitude pruning keeps at least one entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

Prune = Callable[[torch.Tensor], torch.Tensor]
CHUNK = 1 << 21
"""Entries per column block in `combine_deltas`: its temporaries stay near n × 8 MB whatever the tensor."""


# ---- sparsification of one delta (in place: deltas are fresh copies, often hundreds of MB) ----------

def rescale_l1_(masked: torch.Tensor, before: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale `masked` in place so that its L1 norm becomes `before` (the norm of the unmasked delta);
    unchanged when either norm is ~0."""
    after = masked.abs().sum()
    if before >= eps and after >= eps:
        masked.mul_(before / after)
    return masked


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest of non-negative `values` (1 <= k <= numel), exactly.

    float32: two passes of 16-bit histograms over the values' bit patterns (for non-negative
    floats, integer order is float order), in blocks of `CHUNK`: no copy of the tensor, where
    `kthvalue` allocates three (its values and int64 indices) and `topk` sorts.
    """
    flat = values.reshape(-1)
    if flat.dtype != torch.float32:
        return flat.kthvalue(flat.numel() - k + 1).values
    bits = flat.view(torch.int32)
    prefix, above = 0, 0  # the bit pattern fixed so far; entries known to be larger
    for shift in (16, 0):
        counts = torch.zeros(1 << 16, dtype=torch.int64)
        for start in range(0, bits.numel(), CHUNK):
            part = bits[start: start + CHUNK]
            part = part >> 16 if shift else part[(part >> 16) == prefix] & 0xFFFF
            counts += torch.bincount(part, minlength=1 << 16)
        from_top = counts.flip(0).cumsum(0)
        index = int(torch.searchsorted(from_top, k - above))  # the bucket holding the k-th largest
        above += int(from_top[index - 1]) if index else 0
        prefix = (prefix << 16) | ((1 << 16) - 1 - index)
    return torch.tensor([prefix], dtype=torch.int32).view(torch.float32)[0]


def top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """bool mask of exactly `k` entries of non-negative `values` holding the k largest (entries equal
    to the threshold: the first ones; equal to 0: none, as zeros change nothing where they are kept)."""
    flat = values.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    threshold = kth_largest(flat, k)
    mask = flat > threshold
    missing = k - int(mask.sum())
    if missing > 0 and threshold > 0:
        mask[(flat == threshold).nonzero().squeeze(1)[:missing]] = True
    return mask.view_as(values)


def prune_magnitude(delta: torch.Tensor, density: float, keep_one: bool = False, rescale: bool = False) -> torch.Tensor:
    """In place: keep the `density` share of entries with the largest |value|, zero the rest (TIES' trim).

    k = int(density · numel), at least 1 with `keep_one` (mergekit). `rescale`: L1 rescaling (mergekit's option).
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return delta.zero_()
    before = delta.abs().sum() if rescale else None
    k = int(density * delta.numel())
    delta.mul_(top_k_mask(delta.abs(), max(1, k) if keep_one else k))
    return rescale_l1_(delta, before) if rescale else delta


def prune_random(delta: torch.Tensor, density: float, generator: Optional[torch.Generator] = None,
                 rescale: bool = False) -> torch.Tensor:
    """In place: DARE's drop, keeping each entry with probability `density`. The paper and peft then
    divide the survivors by density (the caller's job); mergekit rescales them to the delta's L1
    norm (`rescale`)."""
    if density >= 1:
        return delta
    before = delta.abs().sum() if rescale else None
    delta.mul_(torch.bernoulli(torch.full_like(delta, density), generator=generator))
    return rescale_l1_(delta, before) if rescale else delta


def prune_outliers(delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False) -> torch.Tensor:
    """In place: Model Breadcrumbs: drop the `gamma` share of largest |values| (outliers) and then the
    smallest, keeping `density` of the entries (fewer outliers are dropped when both cannot be met)."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    before = delta.abs().sum() if rescale else None
    magnitude = delta.abs()
    kept = top_k_mask(magnitude, n - bottom)
    kept &= ~top_k_mask(magnitude, n - bottom - keep)
    del magnitude
    delta.mul_(kept)
    return rescale_l1_(delta, before) if rescale else delta


# ---- combining deltas -------------------------------------------------------------------------

SIGN_VOTES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "total": lambda stacked: stacked.sum(dim=0),  # the sign of the sum (mergekit's 'sum')
    "frequency": lambda stacked: stacked.sign().sum(dim=0),  # the sign most entries have (mergekit's 'count')
}
"""TIES' majority sign methods: (n, *shape) → votes (*shape), positive for +."""


def sign_agreement(stacked: torch.Tensor, method: str = "total") -> torch.Tensor:
    """TIES' elect step: bool (n, *shape), True where an entry has the majority sign of its column
    (`method`: a key of SIGN_VOTES; ties go to +). Zero entries never agree."""
    votes = SIGN_VOTES[method](stacked)
    return torch.where(votes >= 0, stacked > 0, stacked < 0)


def combine_deltas(deltas: torch.Tensor, weights: torch.Tensor, *, prune: Optional[Prune] = None,
                   consensus: Optional[str] = None, elect_weighted: bool = True,
                   divide: Optional[Callable] = None, scale: float = 1.0) -> torch.Tensor:
    """Σ_i w_i · prune(δ_i), optionally keeping only sign-agreeing entries (TIES), (n, *shape) -> shape.

    prune: applied to each δ_i (in place). consensus: None, or a SIGN_VOTES key: keep the entries
    that agree with the elected sign. elect_weighted: the weighted deltas vote (mergekit) rather
    than the unweighted ones (peft). divide: `by_weights` (mergekit's normalize: Σ w_i over the
    kept entries), `by_count` (peft's disjoint merge: the number of kept entries) or None (a plain
    sum). `scale`: mergekit's lambda. `deltas` is overwritten (pass a fresh stack). Everything
    after pruning is elementwise and runs over blocks of `CHUNK` columns, so a whole-model merge
    allocates the result and small blocks, not copies of the stack.
    """
    if prune is not None:
        for i in range(len(deltas)):
            deltas[i] = prune(deltas[i])
    w = weights.to(deltas.dtype)
    w_col = w.view(-1, 1)
    flat = deltas.reshape(len(deltas), -1)
    mixed = torch.empty(flat.shape[1], dtype=deltas.dtype)
    for start in range(0, flat.shape[1], CHUNK):
        part = flat[:, start: start + CHUNK]
        agree = None
        if consensus is not None and not elect_weighted:
            agree = sign_agreement(part, consensus)
        weighted = part.mul_(w_col)
        if consensus is not None and agree is None:
            agree = sign_agreement(weighted, consensus)
        out = mixed[start: start + CHUNK]
        if agree is None:
            torch.sum(weighted, dim=0, out=out)
        else:
            torch.sum(weighted.mul_(agree), dim=0, out=out)
        if divide is not None:
            out.div_(divide(w, agree))
    mixed = mixed.view(deltas.shape[1:])
    return mixed.mul_(scale) if scale != 1 else mixed


def by_weights(w: torch.Tensor, agree: Optional[torch.Tensor]):
    """Σ w_i over the entries kept (all when `agree` is None); 1 where that sum is 0."""
    if agree is None:
        total = w.sum()
        return total if total.abs() >= 1e-8 else 1
    divisor = torch.zeros(agree.shape[1:], dtype=w.dtype)
    for wi, a in zip(w.tolist(), agree):
        divisor.add_(a, alpha=wi)
    return divisor.masked_fill_(divisor == 0, 1)


def by_count(w: torch.Tensor, agree: Optional[torch.Tensor]):
    """The number of entries kept (at least 1)."""
    return len(w) if agree is None else agree.sum(dim=0).clamp(min=1)


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


def _kept_by_magnitude(delta, density, gamma, rescale, generator):
    return prune_magnitude(delta, density, keep_one=True, rescale=rescale)


def _kept_at_random(delta, density, gamma, rescale, generator):
    return prune_random(delta, density, generator, rescale)


def _kept_without_outliers(delta, density, gamma, rescale, generator):
    return prune_outliers(delta, density, gamma, rescale)


def _task_method(prune: Optional[Callable], consensus: bool, rescale_default: bool, normalize_default: bool,
                 extra: tuple[Param, ...] = ()) -> Method:
    """mergekit's generalized task arithmetic: θ_base + λ · combine(prune(θ_i − θ_base))."""

    def run(base, others, params, generator):
        deltas = others.sub_(base)
        if prune is not None:
            for i in range(len(deltas)):
                gamma = params["gamma"][i] if "gamma" in params else None
                deltas[i] = prune(deltas[i], params["density"][i], gamma, params["rescale"], generator)
        mixed = combine_deltas(deltas, torch.tensor(params["weight"], dtype=base.dtype),
                               consensus="total" if consensus else None, elect_weighted=True,
                               divide=by_weights if params["normalize"] else None, scale=params["lambda"])
        return mixed.add_(base)

    shared = (Param("weight", float, True), Param("density", float, True, 1.0),
              Param("normalize", bool, False, normalize_default), Param("rescale", bool, False, rescale_default),
              Param("lambda", float, False, 1.0), Param("int8_mask", bool, False, False))
    return Method(run, shared + extra, needs_base=True)


METHODS: dict[str, Method] = {
    "linear": Method(_run_linear, (Param("weight", float, True), Param("normalize", bool, False, True)), needs_base=False),
    "slerp": Method(_run_slerp, (Param("t", float, False),), needs_base=True, max_models=1),
    "task_arithmetic": _task_method(None, consensus=False, rescale_default=False, normalize_default=False),
    "ties": _task_method(_kept_by_magnitude, consensus=True, rescale_default=False, normalize_default=True),
    "dare_linear": _task_method(_kept_at_random, consensus=False, rescale_default=True, normalize_default=False),
    "dare_ties": _task_method(_kept_at_random, consensus=True, rescale_default=True, normalize_default=False),
    "breadcrumbs": _task_method(_kept_without_outliers, consensus=False, rescale_default=False,
                                normalize_default=False, extra=(Param("gamma", float, True, 0.01),)),
    "breadcrumbs_ties": _task_method(_kept_without_outliers, consensus=True, rescale_default=False,
                                     normalize_default=False, extra=(Param("gamma", float, True, 0.01),)),
}
"""Recipe `merge_method` → implementation, with mergekit's parameters and defaults."""

__all__ = ["METHODS", "Method", "Param", "linear", "slerp", "combine_deltas", "sign_agreement", "SIGN_VOTES",
           "by_weights", "by_count", "prune_magnitude", "prune_random", "prune_outliers", "top_k_mask", "kth_largest"]
