"""The running batch's key/value cache: left-padded rows that can join, leave and be trimmed.

Every attention layer keeps keys and values in one buffer of shape (rows, kv_heads, capacity,
head_dim), filled up to `length` columns; a decode step writes one column in place instead of
concatenating a new tensor (what `DynamicCache` does: a full copy of the cache per layer and token).
Capacity grows by doubling, so appends are amortised O(1).

Rows are left-padded to a common length: a row's real tokens end at the last column, its padding
(masked out by the attention mask) is on the left. The engine changes the set of rows between steps
with `select_rows` (finished requests leave), `drop_left` (padding no row needs any more) and
`concat` (a prefilled group joins; the shorter side is padded on the left).
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from ..errors import InputError

_ROUND = 64  # capacity is a multiple of this many columns


class GrowingLayer(DynamicLayer):
    """One layer's keys and values: buffers (rows, heads, capacity, head_dim), the first `length` columns used."""

    def __init__(self):
        super().__init__()
        self.length = 0
        self.k_buf: Optional[torch.Tensor] = None
        self.v_buf: Optional[torch.Tensor] = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def set(self, keys: torch.Tensor, values: torch.Tensor, spare: int = 0) -> None:
        """Replace the contents by `keys`/`values` (rows, heads, length, head_dim), with room for `spare` more."""
        self.length = keys.shape[-2]
        self.k_buf = _allocate(keys, self.length + spare)
        self.v_buf = _allocate(values, self.length + spare)
        self.k_buf[:, :, : self.length] = keys
        self.v_buf[:, :, : self.length] = values
        self.is_initialized, self.device = True, keys.device
        self._views()

    def _views(self) -> None:
        self.keys = self.k_buf[:, :, : self.length]
        self.values = self.v_buf[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append (rows, heads, q, head_dim) and return all keys and values so far (views of the buffers)."""
        n = key_states.shape[-2]
        if self.k_buf is None:
            self.set(key_states, value_states, spare=n)
            return self.keys, self.values
        if self.length + n > self.k_buf.shape[-2]:
            self.set(self.keys, self.values, spare=max(self.length, n))
        self.k_buf[:, :, self.length: self.length + n] = key_states
        self.v_buf[:, :, self.length: self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def _allocate(like: torch.Tensor, columns: int) -> torch.Tensor:
    capacity = -(-max(columns, 1) // _ROUND) * _ROUND
    return like.new_empty(like.shape[0], like.shape[1], capacity, like.shape[3])


class BatchCache(DynamicCache):
    """A `DynamicCache` made of `GrowingLayer`s, plus the row operations the engine needs."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices, in that order); spare capacity is kept."""
        for layer in self.layers:
            layer.k_buf, layer.v_buf = layer.k_buf.index_select(0, rows), layer.v_buf.index_select(0, rows)
            layer._views()

    def drop_left(self, columns: int) -> None:
        """Remove the first `columns` columns (padding that every row has)."""
        if columns <= 0:
            return
        for layer in self.layers:
            layer.set(layer.keys[:, :, columns:], layer.values[:, :, columns:],
                      spare=layer.k_buf.shape[-2] - layer.length)

    def concat(self, other: "BatchCache", spare: int = 0) -> None:
        """Append `other`'s rows after ours; the shorter side is padded on the left to the longer length."""
        if not self.layers:
            for layer in other.layers:
                fresh = GrowingLayer()
                fresh.set(layer.keys, layer.values, spare)
                self.layers.append(fresh)
            return
        if len(self.layers) != len(other.layers):
            raise RuntimeError(f"cannot join caches of {len(self.layers)} and {len(other.layers)} layers")
        length = max(self.length, other.length)
        for mine, theirs in zip(self.layers, other.layers):
            keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
            values = torch.cat([_pad_left(mine.values, length), _pad_left(theirs.values, length)])
            mine.set(keys, values, spare)


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - t.shape[-2]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], missing, t.shape[3]), t], dim=-2)


def check_supported(model) -> None:
    """The engine keeps a full-attention cache per layer; sliding-window or recurrent layers need another."""
    text = model.config.get_text_config(decoder=True)
    types = set(getattr(text, "layer_types", None) or ["full_attention"])
    sliding = getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)
    if types != {"full_attention"} or sliding:
        raise InputError(f"lorakit serve: {type(model).__name__} uses layer types {sorted(types)}"
                         f"{' with a sliding window' if sliding else ''}; only full-attention decoders are served")
