"""How virtual tokens enter a backbone's forward: its keyword arguments, rewritten in place.

For one source (the active adapter's n tokens):

embeddings (prompt tuning, P-tuning), when the cache holds nothing yet (training, prefill):
    inputs_embeds   (b, L, d) -> (b, n + L, d): the n tokens first
    attention_mask  (b, L)    -> (b, n + L): ones for the virtual tokens
    position_ids    (b, L)    -> (b, n + L): 0..n-1, then the given positions + n
    token_type_ids  (b, L)    -> (b, n + L): zeros first
    outputs         the first n positions are dropped (`strip`), so logits line up with input_ids
                    (peft returns n extra leading positions instead)
  and on later decoding steps (the tokens are in the cache): mask gets n leading ones, positions + n.
prefix (prefix tuning, P-tuning v2), every call:
    cache           empty or absent: a DynamicCache whose every layer starts with the prefix keys and
                    values, (b, kv_heads, n, head_dim) each
    attention_mask  (b, S) -> (b, n + S) (built as all ones when absent: encoders size their mask
                    from it)
    position_ids    + n when given (absent: the model counts from the cache length, n on)

These are peft's semantics (same logits for the real tokens) with positions kept per row, so a
left-padded row gives what the unpadded row gives, and `model.generate` works through the
transformers 5 cache: generation's own position ids and masks count real tokens only and are
shifted here. A decoding caller whose mask already spans the whole cache (it widened its mask by
the columns the prefill added, as `lorakit.serve`'s engine does, so it can trim and join cache
rows) gets its mask as it is; positions are shifted either way. Only 2D attention masks are
accepted (packed rows with 4D masks are refused).

Per row (`route()`: row i has its own source or none): the prefixes, padded on the left to the
longest (P), lead the cache; each row's embedding tokens (E_i, the longest E) join its text in a
sequence of E + L, padding slots masked out: [padding, tokens_i, text_i] when generating (every
row must end with its text), else [tokens_i, text_i, padding] (encoders pool position 0). Row i's
virtual embeddings sit at positions P_i..P_i+E_i-1 and its text at its positions + P_i + E_i, so
each row computes what it computes alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import InputError


@dataclass(frozen=True)
class ModelSpec:
    """What virtual tokens need to know about a model, read from its config and backbone."""

    hidden: int
    num_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    max_positions: Optional[int]  # learned or rotary position table size, if the config says
    cache_arg: Optional[str]  # the backbone's cache argument ("cache", or "past_key_values" before it)


def add_embeddings(source: nn.Module, kw: dict, spec: ModelSpec, backbone: nn.Module) -> int:
    """Prompt tuning / P-tuning for every row; returns how many leading output positions to drop
    (0 on decoding steps, whose cache already holds the tokens)."""
    n = source.embedding.num_embeddings
    cached = _cached_length(kw, spec)
    if cached > 0:
        if not _covers_cache(kw, cached):
            _extend_mask(kw, n)
        _shift_positions(kw, n, prepend=False)
        return 0
    embeds = _input_embeddings(kw, backbone)
    tokens = source().to(embeds.dtype)
    kw["inputs_embeds"] = torch.cat([tokens.expand(embeds.shape[0], -1, -1), embeds], dim=1)
    _extend_mask(kw, n)
    _shift_positions(kw, n, prepend=True)
    types = kw.get("token_type_ids")
    if types is not None:
        kw["token_type_ids"] = torch.cat([types.new_zeros(types.shape[0], n), types], dim=1)
    return n


def add_prefix(source: nn.Module, kw: dict, spec: ModelSpec, backbone: nn.Module) -> None:
    """Prefix tuning for every row: each layer's cache starts with the prefix keys and values."""
    n = source.embedding.num_embeddings
    batch, length = _batch_and_length(kw)
    cache = _cache(kw, spec, backbone)
    cached = cache.get_seq_length()
    if cached == 0:
        dtype = backbone.get_input_embeddings().weight.dtype
        kv = _per_layer(source().to(dtype), spec)  # (layers, 2, kv_heads, n, head_dim)
        for layer in range(spec.num_layers):
            cache.update(kv[layer, 0].expand(batch, -1, -1, -1), kv[layer, 1].expand(batch, -1, -1, -1), layer)
    if kw.get("attention_mask") is None:
        kw["attention_mask"] = torch.ones(batch, cache.get_seq_length() + length, dtype=torch.long,
                                          device=_device(kw))
    elif not (cached and _covers_cache(kw, cached)):
        _extend_mask(kw, n)
    _shift_positions(kw, n, prepend=False)


def add_per_row(sources: Sequence[Optional[nn.Module]], kw: dict, spec: ModelSpec, backbone: nn.Module):
    """Row i gets `sources[i]`'s tokens (None: none), see the module docstring. Returns what to drop
    from the outputs: a count of leading positions, or (b, L) indices of each row's real tokens."""
    batch, length = _batch_and_length(kw)
    if len(sources) != batch:
        if batch % len(sources):
            raise ValueError(f"route(): batch of {batch} rows does not fit the {len(sources)} names given")
        sources = [s for s in sources for _ in range(batch // len(sources))]  # (num_return_sequences)
    device = _device(kw)
    sizes = {kind: torch.tensor([s.embedding.num_embeddings if s is not None and s.kind == kind else 0
                                 for s in sources], device=device) for kind in ("prefix", "embeddings")}
    p, e = (int(sizes[k].max()) for k in ("prefix", "embeddings"))
    offsets = sizes["prefix"] + sizes["embeddings"]
    generating = kw.get(_cache_key(kw, spec)) is not None  # (a plain forward passes no cache)
    cached = _cached_length(kw, spec)
    text_mask = kw.get("attention_mask")
    if text_mask is not None and text_mask.dim() != 2:
        _extend_mask(kw, 0)  # (raises: 2D masks only)
    if text_mask is None:
        text_mask = torch.ones(batch, (cached - p - e if cached else 0) + length, dtype=torch.long, device=device)
    positions = kw.get("position_ids")
    if positions is None:
        first = cached - p - e if cached else 0
        positions = torch.arange(first, first + length, device=device).expand(batch, length)
    positions = positions + offsets[:, None]
    lead = _right_aligned(sizes["prefix"], p)
    if cached:  # decoding: the embedding tokens are in the cache too, right-aligned
        lead = torch.cat([lead, _right_aligned(sizes["embeddings"], e)], dim=1)
    strip = 0
    if p and cached == 0:
        cache = _cache(kw, spec, backbone)
        dtype = backbone.get_input_embeddings().weight.dtype
        kv = torch.zeros(spec.num_layers, 2, batch, spec.kv_heads, p, spec.head_dim, dtype=dtype, device=device)
        for i, s in enumerate(sources):
            if s is not None and s.kind == "prefix":
                kv[:, :, i, :, p - s.embedding.num_embeddings:] = _per_layer(s().to(dtype), spec)
        for layer in range(spec.num_layers):
            cache.update(kv[layer, 0], kv[layer, 1], layer)
    if e and cached == 0:
        strip = _insert_per_row(sources, sizes, kw, backbone, text_mask, positions, right_aligned=generating)
        text_mask, positions = kw.pop("attention_mask"), kw.pop("position_ids")
    if not (cached and _covers_cache(kw, cached)):
        text_mask = torch.cat([lead.to(text_mask.dtype), text_mask], dim=1)
    kw["attention_mask"] = text_mask
    kw["position_ids"] = positions
    return strip


def _insert_per_row(sources, sizes: dict, kw: dict, backbone: nn.Module, text_mask: torch.Tensor,
                    positions: torch.Tensor, right_aligned: bool):
    """Each row's embedding tokens joined to its text in a (b, E + L) sequence; sets inputs_embeds,
    attention_mask, position_ids (and token_type_ids) in `kw`; returns what `strip_outputs` drops.

    Right-aligned (generation: the text must end every row): [padding, tokens_i, text_i]. Otherwise
    [tokens_i, text_i, padding], so position 0 is what it is alone (encoders pool it)."""
    embeds = _input_embeddings(kw, backbone)
    batch, length, dim = embeds.shape
    n = sizes["embeddings"]
    e = int(n.max())
    start = (e - n) if right_aligned else torch.zeros_like(n)
    slots = torch.arange(e + length, device=embeds.device)
    virtual = (slots >= start[:, None]) & (slots < (start + n)[:, None])  # (b, E + L)
    text_index = (start + n)[:, None] + torch.arange(length, device=embeds.device)  # (b, L)
    seq = embeds.new_zeros(batch, e + length, dim).scatter(1, text_index[..., None].expand(-1, -1, dim), embeds)
    for i, s in enumerate(sources):
        if s is not None and s.kind == "embeddings":
            seq[i, int(start[i]):int(start[i] + n[i])] = s().to(embeds.dtype)
    kw["inputs_embeds"] = seq
    kw["attention_mask"] = virtual.to(text_mask.dtype).scatter(1, text_index, text_mask)
    first = (sizes["prefix"][:, None] + slots - start[:, None]).where(virtual, 0).to(positions.dtype)
    kw["position_ids"] = first.scatter(1, text_index, positions)
    types = kw.get("token_type_ids")
    if types is not None:
        kw["token_type_ids"] = types.new_zeros(batch, e + length).scatter(1, text_index, types)
    return e if right_aligned else text_index


def strip_outputs(output, n):
    """Keep a backbone's outputs for the real tokens only: drop the first n positions (an int), or
    keep the (b, L) positions `n` of each row (per-row layouts)."""
    def keep(h: torch.Tensor, dim: int = 1) -> torch.Tensor:
        if isinstance(n, int):
            return h[:, n:] if dim == 1 else h[..., n:, :]
        index = n.view(n.shape[0], *([1] * (dim - 1)), n.shape[1], 1).expand(*h.shape[:dim], -1, h.shape[-1])
        return h.gather(dim, index)

    if isinstance(output, tuple):
        return (keep(output[0]),) + output[1:]
    output["last_hidden_state"] = keep(output.last_hidden_state)
    if output.get("hidden_states") is not None:
        output["hidden_states"] = tuple(keep(h) for h in output.hidden_states)
    if output.get("attentions") is not None:
        output["attentions"] = tuple(keep(a, dim=2) for a in output.attentions)
    return output


def _per_layer(prefix: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(n, layers · 2 · kv_heads · head_dim) -> (layers, 2 (key, value), kv_heads, n, head_dim)."""
    n = prefix.shape[0]
    return prefix.view(n, spec.num_layers, 2, spec.kv_heads, spec.head_dim).permute(1, 2, 3, 0, 4)


def _right_aligned(sizes: torch.Tensor, width: int) -> torch.Tensor:
    """(b, width): 1 on the last sizes[i] slots of row i."""
    return torch.arange(width, device=sizes.device) >= width - sizes[:, None]


def _cache_key(kw: dict, spec: ModelSpec) -> str:
    return "cache" if "cache" in kw else "past_key_values" if "past_key_values" in kw else spec.cache_arg


def _cache(kw: dict, spec: ModelSpec, backbone: nn.Module):
    """The call's cache object, a new DynamicCache when it has none."""
    from transformers import DynamicCache

    key = _cache_key(kw, spec)
    if kw.get(key) is None:
        kw[key] = DynamicCache(config=backbone.config)
    _cached_length(kw, spec)  # (checks the type)
    return kw[key]


def _cached_length(kw: dict, spec: ModelSpec) -> int:
    cache = kw.get(_cache_key(kw, spec)) if spec.cache_arg else None
    if cache is None:
        return 0
    if not hasattr(cache, "get_seq_length"):
        raise InputError("virtual tokens need a transformers Cache object (e.g. DynamicCache), not legacy tuples")
    return cache.get_seq_length()


def _batch_and_length(kw: dict) -> tuple[int, int]:
    x = kw.get("inputs_embeds")
    x = kw.get("input_ids") if x is None else x
    if x is None:
        raise InputError("virtual tokens: the model was called without input_ids or inputs_embeds")
    return x.shape[0], x.shape[1]


def _device(kw: dict) -> torch.device:
    x = kw.get("inputs_embeds")
    return (kw["input_ids"] if x is None else x).device


def _input_embeddings(kw: dict, backbone: nn.Module) -> torch.Tensor:
    """The call's input embeddings (looked up from input_ids if it passed those), taken out of `kw`."""
    embeds, ids = kw.pop("inputs_embeds", None), kw.pop("input_ids", None)
    if embeds is not None:
        return embeds
    if ids is None:
        raise InputError("virtual tokens: the model was called without input_ids or inputs_embeds")
    return backbone.get_input_embeddings()(ids)


def _covers_cache(kw: dict, cached: int) -> bool:
    """Whether the call's mask already spans every cached column and the new ones (a caller that keeps
    its own mask over its cache, virtual tokens included, like `lorakit.serve`'s engine)."""
    mask = kw.get("attention_mask")
    return mask is not None and mask.dim() == 2 and mask.shape[1] == cached + _batch_and_length(kw)[1]


def _extend_mask(kw: dict, n: int) -> None:
    mask = kw.get("attention_mask")
    if mask is None:
        return
    if mask.dim() != 2:
        raise InputError(f"virtual tokens need a 2D attention mask (batch, length), got {mask.dim()}D "
                         "(packed rows are not supported with prompt or prefix tuning; use grouped batches)")
    kw["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)


def _shift_positions(kw: dict, n: int, prepend: bool) -> None:
    pos = kw.get("position_ids")
    if pos is None:
        return
    if pos.dim() != 2:
        raise InputError(f"virtual tokens need position_ids of shape (batch, length), got {tuple(pos.shape)}")
    shifted = pos + n
    if prepend:
        first = torch.arange(n, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], n)
        shifted = torch.cat([first, shifted], dim=1)
    kw["position_ids"] = shifted
