"""Per-row routing: one adapter per batch row in one forward. (Switching, disabling and deleting
adapters live in `lorakit.state`; they are re-exported here.)

`route(model, names)` runs batch row i through adapter names[i] (None = the base model) in one
forward. Each wrapper keeps all its adapters' factors stacked (rank-padded with zeros, the scaling
folded into B, slot 0 all zeros for the base), built on the first `route` and reused until an
adapter changes (its tensors' version counters or storage). There is no Python loop over adapters;
a linear layer takes one of two ways, whatever the number of adapters:
- long rows (prefill): gather each row's factors, two batched matmuls;
- short rows (decode, one token per row): every adapter's update for every token in two plain
  matmuls, masked to each row's own adapter, which reads each adapter once instead of once per row.
Holders that split a batch by row themselves (`routes_rows`: the virtual tokens, each row its own
prompt or prefix, see `tuners/virtual_inputs.py`) are handed the row names for the block.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Optional, Sequence

import torch
from torch import nn

from . import methods
from .errors import InputError
from .state import (active_adapter, adapter_configs, check_name, delete_adapter, disable_adapters, holders,
                    list_adapters, set_adapter)
from .tuners.base import Kind, ModulesToSave
from .tuners.layers import LayerWrapper

__all__ = ["route", "routable", "set_adapter", "disable_adapters", "delete_adapter", "list_adapters", "active_adapter"]


@contextlib.contextmanager
def route(model: nn.Module, names_per_row: Sequence[Optional[str]]) -> Iterator[nn.Module]:
    """Run row i of every batch through adapter `names_per_row[i]` (None: the base) in one forward.

    Every forward of `model` in the block must have exactly one row per name; under
    `model.generate`, rows expanded by `num_return_sequences` / `num_beams` are followed (name i
    covers rows i·k ... i·k + k - 1). Inference only: adapter dropout is not applied and no gradient
    reaches the adapters. The stacked factors stay cached on the layers after the block (about 1.5
    more copies of the plain LoRA adapters, what a server wants); `delete_adapter` drops them.
    """
    if isinstance(names_per_row, (str, bytes)) or not isinstance(names_per_row, Sequence):
        raise InputError(f"route(): names_per_row must be a list with one adapter name (or None) per batch row, "
                         f"got {type(names_per_row).__name__}")
    if not names_per_row:
        raise InputError("route(): names_per_row is empty; give one adapter name (or None) per batch row")
    for name in names_per_row:
        if name is not None and not isinstance(name, str):
            raise InputError(f"route(): adapter names are strings or None, got {name!r}")
    for name in set(names_per_row):
        check_name(model, name)
    used = [n for n in dict.fromkeys(names_per_row) if n is not None]
    configs = adapter_configs(model)
    found = holders(model)
    by_row = [h for _, h in found if h.routes_rows]
    tokens = [n for n in used if methods.for_config(configs[n]).kind is Kind.VIRTUAL_TOKENS
              and not any(n in h.adapters for h in by_row)]
    if tokens:
        raise NotImplementedError(f"route() cannot mix virtual-token adapters by row ({tokens[0]!r}); use set_adapter")
    if any(h.merged for _, h in found):
        raise RuntimeError("cannot route rows while an adapter is merged; unmerge first")
    wrappers = [w for _, w in found if isinstance(w, LayerWrapper)]
    other = [n for n, h in found if not isinstance(h, (LayerWrapper, ModulesToSave)) and not h.routes_rows
             and any(u in h.adapters for u in used)]
    if other:
        raise NotImplementedError(f"route() mixes low-rank layer adapters only, not the adapters at {other[0]}; "
                                  "use set_adapter")
    unroutable = sorted({n for w in wrappers for n in used if n in w.adapters and w.adapters[n].low_rank_factors() is None})
    if unroutable:
        method = methods.for_config(configs[unroutable[0]]).name
        raise NotImplementedError(f"route() mixes plain LoRA adapters only; {unroutable[0]!r} ({method}"
                                  f"{', DoRA' if getattr(configs[unroutable[0]], 'use_dora', False) else ''}) "
                                  "cannot be split by row; use set_adapter")
    saved_to = [m for _, m in found if isinstance(m, ModulesToSave)]
    if any(n in m.copies for m in saved_to for n in used) and len(set(names_per_row)) > 1:
        raise NotImplementedError("route() cannot mix an adapter that has modules_to_save; use set_adapter")
    only = names_per_row[0] if len(set(names_per_row)) == 1 else None
    saved_active = [(m, m.active) for m in saved_to]
    for m in saved_to:  # rows of adapters without a copy of this module run the original
        m.set_active(only if only in m.copies else None)
    rows = {}  # per slot layout: wrappers holding the same adapters share one row → slot tensor
    for w in wrappers:
        if not any(n in w.adapters for n in used):
            w.__dict__["row_delta"] = _skip
            continue
        stacks = _stacks(w)
        if stacks.names not in rows:
            slot = {name: i + 1 for i, name in enumerate(stacks.names)}
            rows[stacks.names] = torch.tensor([slot.get(n, 0) for n in names_per_row], dtype=torch.long)
        w.__dict__["row_delta"] = _RowDelta(w, stacks, rows[stacks.names])
    for h in by_row:
        h.route_rows(names_per_row)
    rows_per_name = [1]  # set by generate(): how many rows each prompt becomes
    hook = model.register_forward_pre_hook(_batch_check(len(names_per_row), rows_per_name), with_kwargs=True)
    generate = model.__dict__.get("generate")
    if callable(getattr(model, "generate", None)):
        model.__dict__["generate"] = _expanding_generate(model, model.generate, rows_per_name)
    try:
        yield model
    finally:
        hook.remove()
        if generate is None:
            model.__dict__.pop("generate", None)
        else:
            model.__dict__["generate"] = generate
        for w in wrappers:
            w.__dict__["row_delta"] = None
        for m, active in saved_active:
            m.__dict__["active"] = active
        for h in by_row:
            h.route_rows(None)


def routable(model: nn.Module, adapter_name: Optional[str]) -> bool:
    """Whether rows of `adapter_name` (None: the base) can share a batch and its running cache with other
    adapters' rows: a plain LoRA adapter (not DoRA, VeRA, AdaLoRA, IA³ or bottleneck) with no
    modules_to_save copies. (`route` also mixes virtual-token adapters by row, but their rows start
    with different cache columns, which one running cache cannot keep: not routable here.)"""
    if adapter_name is None:
        return True
    for _, holder in holders(model):
        if adapter_name in holder.adapters and (not isinstance(holder, LayerWrapper)
                                                or holder.adapters[adapter_name].low_rank_factors() is None):
            return False
    return True


def _batch_check(n: int, rows_per_name: list[int]):
    """A forward pre-hook: the batch must hold one row per name (times generate's expansion)."""
    def check(module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("inputs_embeds")
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] not in (n, n * rows_per_name[0]):
            raise InputError(f"route(): {n} adapter name{'s' if n != 1 else ''} for a batch of {x.shape[0]} rows; "
                             "give one name (or None) per row")
    return check


def _expanding_generate(model: nn.Module, generate, rows_per_name: list[int]):
    """`model.generate` that tells the batch check how many rows each prompt becomes (beams or samples)."""
    def wrapped(*args, **kwargs):
        config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
        beams = kwargs.get("num_beams", getattr(config, "num_beams", None)) or 1
        samples = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", None)) or 1
        rows_per_name[0] = beams if beams > 1 else samples
        try:
            return generate(*args, **kwargs)
        finally:
            rows_per_name[0] = 1
    return wrapped


def _skip(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A layer that none of the batch's rows adapts returns the base output untouched."""
    return y


class _Stacks(NamedTuple):
    """A layer's plain LoRA adapters, stacked for routing (n adapters, slot 0 = the base)."""

    names: tuple[str, ...]  # adapter of slot i is names[i - 1]
    a: torch.Tensor  # (1 + n, in, r_max): Aᵀ per slot, zero-padded to the largest rank
    b: torch.Tensor  # (1 + n, r_max, out): scaling · Bᵀ per slot
    a_cat: torch.Tensor  # (in, n · r_max): the adapters' Aᵀ side by side (the "every adapter" path)
    b_cat: torch.Tensor  # (n · r_max, out): a view of b[1:]


def _stacks(wrapper: LayerWrapper) -> _Stacks:
    """The wrapper's plain LoRA adapters stacked (see `_Stacks`), cached on the wrapper.

    The cache key changes whenever an adapter is added, removed, replaced or modified in place
    (tensor version counters), so a stale stack is never used.
    """
    plain = [(n, f) for n, a in wrapper.adapters.items() for f in [a.low_rank_factors()] if f is not None]
    key = tuple((n, s, id(t), t.data_ptr(), t._version) for n, (a, b, s) in plain for t in (a, b))
    hit = wrapper.__dict__.get("route_stacks")
    if hit is not None and hit[0] == key:
        return hit[1]
    like = plain[0][1][0]
    r_max = max(a.shape[0] for _, (a, _, _) in plain)
    n_in, n_out = wrapper.in_features, wrapper.out_features
    a_stack = torch.zeros(len(plain) + 1, n_in, r_max, dtype=like.dtype, device=like.device)
    b_stack = torch.zeros(len(plain) + 1, r_max, n_out, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        for i, (_, (a, b, scaling)) in enumerate(plain, start=1):
            a_stack[i, :, : a.shape[0]] = a.T
            b_stack[i, : a.shape[0], :] = b.T * scaling
    a_cat = a_stack[1:].permute(1, 0, 2).reshape(n_in, -1).contiguous()
    stacks = _Stacks(tuple(n for n, _ in plain), a_stack, b_stack, a_cat, b_stack[1:].reshape(-1, n_out))
    wrapper.__dict__["route_stacks"] = (key, stacks)
    return stacks


DENSE_MAX = 16
"""Up to this many (tokens per row × adapters on the layer), a linear layer computes every adapter's
update for every token and keeps each row's own (a mask), instead of gathering per-row factors:
at decode time (one token per row) that reads each adapter once, where the gather copies one
adapter per row. Longer rows (prefill) use the gather and batched matmul."""


class _RowDelta:
    """Per-row adapter update for one wrapper: `(x, y) -> y + delta`, x (b, ..., in), y (b, ..., out)."""

    def __init__(self, wrapper: LayerWrapper, stacks: _Stacks, rows: torch.Tensor):
        self.stacks = stacks
        self.embedding = wrapper.embedding
        self.n_in = wrapper.in_features
        self.rows = rows.to(stacks.a.device)
        self.a_flat = stacks.a.view(-1, stacks.a.shape[-1])  # embeddings: row (slot * n_in + id) is A[:, id]
        self.masks: dict[int, torch.Tensor] = {}

    def _mask(self, rows: torch.Tensor) -> torch.Tensor:
        """(b, n · r_max): 1 on the columns of each row's adapter in `a_cat`, 0 elsewhere (all 0: the base)."""
        mask = self.masks.get(rows.numel())
        if mask is None:
            n, r = self.stacks.a.shape[0] - 1, self.stacks.a.shape[-1]
            slot_of_column = torch.arange(1, n + 1, device=rows.device).repeat_interleave(r)
            mask = (slot_of_column[None, :] == rows[:, None]).to(self.stacks.a.dtype)
            self.masks[rows.numel()] = mask
        return mask

    def _rows_for(self, batch: int) -> torch.Tensor:
        n = self.rows.numel()
        if batch == n:
            return self.rows
        if batch % n:
            raise InputError(f"route(): batch of {batch} rows does not fit the {n} names given")
        return self.rows.repeat_interleave(batch // n)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = self._rows_for(x.shape[0])
        st, b = self.stacks, x.shape[0]
        if self.embedding:
            idx = rows.view(-1, *([1] * (x.dim() - 1))) * self.n_in + x
            h = self.a_flat.index_select(0, idx.reshape(-1)).view(b, -1, self.a_flat.shape[-1])
            b_rows = st.b.index_select(0, rows)
        elif (x.numel() // (b * self.n_in)) * (st.a.shape[0] - 1) <= DENSE_MAX:
            h = (x.reshape(-1, self.n_in).to(st.a_cat.dtype) @ st.a_cat).view(b, -1, st.a_cat.shape[1])
            h = (h * self._mask(rows)[:, None, :]).view(-1, st.a_cat.shape[1])
            if y.dtype == h.dtype:
                return torch.addmm(y.reshape(-1, y.shape[-1]), h, st.b_cat).view(y.shape)
            return y + (h @ st.b_cat).view(y.shape).to(y.dtype)
        else:
            # index_select on the contiguous stacks: a plain row copy, much cheaper than advanced indexing.
            h = torch.bmm(x.reshape(b, -1, x.shape[-1]).to(st.a.dtype), st.a.index_select(0, rows))
            b_rows = st.b.index_select(0, rows)
        if y.dtype == h.dtype:  # the add fused into the second matmul
            return torch.baddbmm(y.reshape(b, -1, y.shape[-1]), h, b_rows).view(y.shape)
        return y + torch.bmm(h, b_rows).view(y.shape).to(y.dtype)
