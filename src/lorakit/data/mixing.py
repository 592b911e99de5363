"""Multi-task mixing and replay on top of the length-grouped / packed batch plans (`batching.py`).

Mixing (`data.train` as a list of sources with weights): each epoch draws
``N = Σ rows of all sources`` training examples, ``round(N · w_i / Σ w)`` of them from source i
(largest-remainder rounding, so the counts add up to N). Inside a source, examples are taken in
a fresh seeded permutation, a source needing more than it holds is cycled (all of it, then
again in a new order), one needing fewer gets a random subset. The drawn examples are then cut
into batches by the run's strategy (length-grouped or packed), so the weights are exact shares
of each epoch's *rows* (not tokens) and hold over many batches, not inside every batch.

Replay (`data.replay: {file, ratio}`): every micro-batch is two parts planned by the same
strategy: the main part under a token budget of ``(1 - ratio) · max_tokens`` and a replay part
under ``ratio · max_tokens`` (each at least its longest example). Replay parts come from
consecutive seeded epochs of the replay pool, as many as it takes to give every main batch
one; grouped batching pairs the main parts and the replay parts in order of their longest
example (short with short), so joining them adds little padding. The replay share of each
micro-batch is thus ratio of its *token budget* (rows × padded length), up to one example of
rounding: the padded length of the joined batch is the longer of the two parts', which can take
a batch a little over ``max_tokens``. Packed batching has ``max(1, budget // max_length)`` rows
per part, so with few rows per batch the share is coarse (a replay row in every batch).

Everything is a pure function of ``(seed, epoch)``, so the loaders resume exactly (`ResumableBatches`).
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

import torch

from .batching import (BatchLoader, Plan, ResumableBatches, _fingerprint, collate_packed, collate_padded,
                       length_grouped_plan, packed_plan)

Batching = Literal["grouped", "packed"]


def source_counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Examples drawn per source in one epoch: shares of ``sum(sizes)`` by weight, largest remainder."""
    total, norm = sum(sizes), sum(weights)
    exact = [total * w / norm for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mix_indices(sizes: Sequence[int], weights: Sequence[float], g: torch.Generator) -> list[int]:
    """One epoch of the mix: indices into the sources concatenated in order (see the module docstring)."""
    chosen, start = [], 0
    for size, count in zip(sizes, source_counts(sizes, weights)):
        drawn: list[int] = []
        while len(drawn) < count:
            drawn += torch.randperm(size, generator=g).tolist()
        chosen += [start + i for i in drawn[:count]]
        start += size
    return chosen


def _remap(item: Any, to: Sequence[int]) -> Any:
    """Replace every index in a batch (a list of indices, or of rows of indices) by ``to[index]``."""
    return [_remap(x, to) for x in item] if isinstance(item, list) else to[item]


def _plan(batching: Batching, lengths: Sequence[int], budget: int, max_length: int, g: torch.Generator) -> Plan:
    if batching == "packed":
        return packed_plan(lengths, max_length, max(budget, max_length), g)
    return length_grouped_plan(lengths, max(budget, max(lengths)), g)


def _longest(batch: list, lengths: Sequence[int]) -> int:
    """The padded length a batch needs: its longest example (grouped) or row (packed)."""
    return max(sum(lengths[i] for i in x) if isinstance(x, list) else lengths[x] for x in batch)


def mixed_plan(lengths: Sequence[int], sizes: Sequence[int], weights: Sequence[float], replay: int, ratio: float,
               batching: Batching, max_tokens: int, max_length: int, g: torch.Generator) -> Plan:
    """One epoch's batches over ``lengths`` = the sources' examples in order, then ``replay`` replay examples.

    Indices below ``sum(sizes)`` are training examples, the others replay examples.
    """
    n_main = sum(sizes)
    chosen = mix_indices(sizes, weights, g) if len(sizes) > 1 else list(range(n_main))
    main_budget = int(max_tokens * (1 - ratio)) if replay else max_tokens
    plan = _remap(_plan(batching, [lengths[i] for i in chosen], main_budget, max_length, g), chosen)
    if not replay:
        return plan
    pool = list(range(n_main, n_main + replay))
    parts: Plan = []
    while len(parts) < len(plan):
        sub = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=g)))
        parts += _remap(_plan(batching, lengths[n_main:], int(max_tokens * ratio), max_length, sub), pool)
    parts = parts[: len(plan)]
    if batching == "grouped":  # short main parts get short replay parts: little extra padding
        by_main = sorted(range(len(plan)), key=lambda b: _longest(plan[b], lengths))
        by_replay = sorted(parts, key=lambda b: _longest(b, lengths))
        paired = dict(zip(by_main, by_replay))
        parts = [paired[b] for b in range(len(plan))]
    return [main + extra for main, extra in zip(plan, parts)]


def mixed_batches(sources: Sequence[Sequence[Any]], weights: Sequence[float], replay: Optional[Sequence[Any]],
                  ratio: float, batching: Batching, max_tokens: int, max_length: int, pad_id: int,
                  seed: int = 0) -> BatchLoader:
    """A `BatchLoader` over several training sources mixed by weight, with replay examples in every batch."""
    examples = [e for s in sources for e in s] + list(replay or [])
    lengths = [len(e) for e in examples]
    sizes, n_replay = [len(s) for s in sources], len(replay or [])
    sampler = ResumableBatches(
        lambda g: mixed_plan(lengths, sizes, weights, n_replay, ratio, batching, max_tokens, max_length, g), seed,
        _fingerprint(lengths, "mixed", sizes, list(weights), n_replay, ratio, batching, max_tokens, max_length))
    collate: Callable[[Any], dict]
    if batching == "packed":
        collate = lambda rows: collate_packed(examples, rows, pad_id)  # noqa: E731
    else:
        collate = lambda idx: collate_padded([examples[i] for i in idx], pad_id)  # noqa: E731
    return BatchLoader(examples, sampler, collate)
