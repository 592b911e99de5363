"""Deterministic, resumable batches that waste little compute on padding.

Two strategies, both under a token budget ``max_tokens`` (rows × padded length ≤ budget):

length-grouped  Examples are shuffled, sorted by length inside windows of ``window`` examples
                (the whole dataset by default), cut greedily into batches, and the batches are
                shuffled. Rows are right-padded; ``labels`` are -100 on padding.
packed          Examples are placed best-fit into rows of at most ``max_length`` tokens; each
                sample's ``position_ids`` restart at 0 and attention never crosses samples.

Packing and transformers (5.x, read from ``masking_utils.py``): LlamaForCausalLM returns a 4D
``attention_mask`` unchanged ("already prepared") for the sdpa and eager paths, so
``mask="4d"`` builds an additive float block-diagonal causal mask ``(rows, 1, L, L)`` (0 where
allowed, dtype-min elsewhere; eager *adds* the mask, so it must be float, not bool). With
``mask="position_ids"`` no mask is passed and transformers detects packed sequences from
position ids that restart (``find_packed_sequence_indices``) — but only when
``attention_mask is None`` *and* there is no cache, so the model must be called with
``use_cache=False`` (the default config creates a DynamicCache, silently disabling the
detection); that batch dict therefore carries ``use_cache=False``.

The first label of every packed sample is set to -100: in a packed row it would otherwise be
predicted from the previous sample's last token, which the unpacked loss never does.

Resuming: the plan of epoch ``e`` depends only on ``(seed, e)``; ``state_dict()`` stores
``(epoch, index)`` where ``index`` counts batches already handed out, so a loader restored
from it yields exactly the remaining batches.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator, Literal, Sequence

import torch

from lorakit.data.tokenize import IGNORE
from ..errors import InputError

Plan = list[list[Any]]  # a batch: example indices (grouped) or rows of example indices (packed)


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def length_grouped_plan(lengths: Sequence[int], max_tokens: int, g: torch.Generator,
                        window: int | None = None, max_batch_size: int | None = None) -> Plan:
    """Batches of example indices with ``len(batch) * max(lengths in batch) <= max_tokens``."""
    if max(lengths) > max_tokens:
        raise InputError(f"an example has {max(lengths)} tokens, more than max_tokens={max_tokens}")
    perm = torch.randperm(len(lengths), generator=g).tolist()
    window = window or len(perm)
    batches: Plan = []
    for w in range(0, len(perm), window):
        chunk = sorted(perm[w:w + window], key=lambda i: -lengths[i])  # stable: ties keep random order
        batch: list[int] = []
        for i in chunk:
            longest = lengths[batch[0]] if batch else lengths[i]
            full = max_batch_size is not None and len(batch) >= max_batch_size
            if batch and ((len(batch) + 1) * longest > max_tokens or full):
                batches.append(batch)
                batch = []
            batch.append(i)
        if batch:
            batches.append(batch)
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]


def packed_plan(lengths: Sequence[int], max_length: int, max_tokens: int, g: torch.Generator) -> Plan:
    """Batches of rows; each row a list of example indices whose lengths sum to ``<= max_length``.

    Best-fit decreasing over a shuffled order; rows are shuffled, then grouped
    ``max_tokens // max_length`` per batch.
    """
    if max(lengths) > max_length:
        raise InputError(f"an example has {max(lengths)} tokens, more than max_length={max_length}")
    perm = torch.randperm(len(lengths), generator=g).tolist()
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(perm, key=lambda i: -lengths[i]):
        fits = [r for r in range(len(rows)) if room[r] >= lengths[i]]
        if fits:
            r = min(fits, key=lambda r: room[r])
            rows[r].append(i)
            room[r] -= lengths[i]
        else:
            rows.append([i])
            room.append(max_length - lengths[i])
    order = torch.randperm(len(rows), generator=g).tolist()
    rows = [rows[i] for i in order]
    per_batch = max(1, max_tokens // max_length)
    return [rows[b:b + per_batch] for b in range(0, len(rows), per_batch)]


class ResumableBatches:
    """Iterates the plan of each epoch from a saved cursor; the plan is a pure function of ``(seed, epoch)``.

    ``plan_fn(generator) -> Plan``. Iterating yields the rest of the current epoch and then
    moves the cursor to the next epoch.
    """

    def __init__(self, plan_fn: Callable[[torch.Generator], Plan], seed: int, fingerprint: str = ""):
        self.plan_fn, self.seed, self.fingerprint = plan_fn, seed, fingerprint
        self.epoch, self.index = 0, 0
        self._cache: tuple[int, Plan] | None = None

    def plan(self, epoch: int | None = None) -> Plan:
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.plan_fn(_generator(self.seed, epoch)))
        return self._cache[1]

    def __len__(self) -> int:
        return len(self.plan())

    def __iter__(self) -> Iterator[list[Any]]:
        plan = self.plan()
        while self.index < len(plan):
            self.index += 1  # count before yielding: a checkpoint taken now resumes after this batch
            yield plan[self.index - 1]
        self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["fingerprint"] != self.fingerprint:
            raise InputError("batch state was saved for a different dataset, seed or batching setup")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def collate_padded(examples: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: input_ids, attention_mask ``(B, L)``; labels ``(B, L)``
    (IGNORE on padding), or ``(B,)`` class indices for classification examples."""
    longest = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for r, e in enumerate(examples):
        ids[r, :len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[r, :len(e.input_ids)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if hasattr(examples[0], "label"):
        out["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    else:
        labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
        for r, e in enumerate(examples):
            labels[r, :len(e.labels)] = torch.tensor(e.labels)
        out["labels"] = labels
    return out


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(R, L)`` segment ids -> additive mask ``(R, 1, L, L)``: 0 where query and key share a segment
    and key <= query, ``finfo(dtype).min`` elsewhere."""
    L = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = (same & causal)[:, None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def collate_packed(examples: Sequence[Any], rows: Sequence[Sequence[int]], pad_id: int,
                   mask: Literal["4d", "position_ids"] = "4d", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Concatenate each row's examples: input_ids, labels, position_ids ``(R, L)`` and, with
    ``mask="4d"``, attention_mask ``(R, 1, L, L)``; with ``mask="position_ids"``, ``use_cache=False``.

    Row padding is its own segment (positions 0..), labelled IGNORE.
    """
    longest = max(sum(len(examples[i]) for i in row) for row in rows)
    R = len(rows)
    ids = torch.full((R, longest), pad_id, dtype=torch.long)
    labels = torch.full((R, longest), IGNORE, dtype=torch.long)
    pos = torch.zeros((R, longest), dtype=torch.long)
    seg = torch.zeros((R, longest), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row):
            e = examples[i]
            n = len(e.input_ids)
            ids[r, at:at + n] = torch.tensor(e.input_ids)
            labels[r, at + 1:at + n] = torch.tensor(e.labels[1:])
            pos[r, at:at + n] = torch.arange(n)
            seg[r, at:at + n] = s
            at += n
        pos[r, at:] = torch.arange(longest - at)
        seg[r, at:] = len(row)
    out: dict[str, Any] = {"input_ids": ids, "labels": labels, "position_ids": pos}
    if mask == "4d":
        out["attention_mask"] = block_causal_mask(seg, dtype)
    else:
        out["use_cache"] = False
    return out


def _fingerprint(lengths: Sequence[int], *params: Any) -> str:
    return hashlib.sha1(repr((list(lengths), params)).encode()).hexdigest()[:16]


class BatchLoader:
    """Yields collated tensor batches in the order of a ResumableBatches; resumable via its state."""

    def __init__(self, examples: Sequence[Any], sampler: ResumableBatches, collate: Callable[[Any], dict]):
        self.examples, self.sampler, self.collate = examples, sampler, collate

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.sampler:
            yield self.collate(batch)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def grouped_batches(examples: Sequence[Any], max_tokens: int, pad_id: int, seed: int = 0,
                    window: int | None = None, max_batch_size: int | None = None) -> BatchLoader:
    """Length-grouped, right-padded batches (see ``collate_padded``) under ``max_tokens``."""
    lengths = [len(e) for e in examples]
    sampler = ResumableBatches(
        lambda g: length_grouped_plan(lengths, max_tokens, g, window, max_batch_size), seed,
        _fingerprint(lengths, "grouped", max_tokens, window, max_batch_size))
    return BatchLoader(examples, sampler, lambda idx: collate_padded([examples[i] for i in idx], pad_id))


def packed_batches(examples: Sequence[Any], max_length: int, max_tokens: int, pad_id: int, seed: int = 0,
                   mask: Literal["4d", "position_ids"] = "4d", dtype: torch.dtype = torch.float32) -> BatchLoader:
    """Packed batches (see ``collate_packed``): ``max_tokens // max_length`` rows of ``<= max_length``."""
    lengths = [len(e) for e in examples]
    sampler = ResumableBatches(
        lambda g: packed_plan(lengths, max_length, max_tokens, g), seed,
        _fingerprint(lengths, "packed", max_length, max_tokens))
    return BatchLoader(examples, sampler, lambda rows: collate_packed(examples, rows, pad_id, mask, dtype))
