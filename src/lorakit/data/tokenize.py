"""Tokenise normalised rows into training examples with assistant-only loss masks.

Chat rows are rendered with the tokenizer's own chat template (``apply_chat_template``). When
the tokenizer has none, this fallback (ChatML) template is used::

    <|im_start|>{role}\\n{content}{EOT}\\n          for each message
    <|im_start|>assistant\\n                      generation prompt

where ``EOT`` is ``<|im_end|>`` if the tokenizer knows that token, else its ``eos_token``.

Loss mask. Assistant spans are found by rendering prefixes of the conversation, not by
searching strings: for every assistant message ``i``, the tokens of
``render(messages[:i], add_generation_prompt=True)`` must be a prefix of
``render(messages[:i+1])``; the tokens in between are the reply. They are targets up to and
including the last end-of-turn token in that span (``end_of_turn_ids``) (what follows it, e.g. a newline, is not a
target). Everything else (system, user, role headers) gets label ``IGNORE = -100``. A template
that is not prefix-stable this way raises ValueError rather than guessing.

Plain text rows: every token is a target, and ``eos`` is appended.
"""
from __future__ import annotations

import weakref

from dataclasses import dataclass, field
from typing import Any, Iterable

from lorakit.data.formats import Dataset
from lorakit.data.io import DataError
from ..errors import InputError

IGNORE = -100
FALLBACK_EOT = "<|im_end|>"


@dataclass(frozen=True)
class Example:
    """One causal-LM example: ``input_ids`` and ``labels`` of equal length (labels IGNORE where no loss)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class ClassificationExample:
    """One sequence-classification example: token ids and a class index."""

    input_ids: list[int]
    label: int

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodeStats:
    """What encoding did to a dataset: rows in, rows kept, truncated, dropped, token counts."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    target_tokens: int = 0
    longest: int = 0  # tokens of the longest row before truncation
    lengths: list[int] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        return (f"{self.kept}/{self.rows} rows kept, {self.truncated} truncated (longest {self.longest} tokens), "
                f"{self.dropped_no_target} dropped (no target tokens left), "
                f"{self.tokens} tokens ({self.target_tokens} targets)")

    def plus(self, other: "EncodeStats") -> "EncodeStats":
        """The stats of two datasets encoded one after the other (e.g. the sources of a training mix)."""
        return EncodeStats(self.rows + other.rows, self.kept + other.kept, self.truncated + other.truncated,
                           self.dropped_no_target + other.dropped_no_target, self.tokens + other.tokens,
                           self.target_tokens + other.target_tokens, max(self.longest, other.longest),
                           self.lengths + other.lengths)

    def metrics(self) -> dict:
        """The counts for metrics.jsonl."""
        return {"rows": self.rows, "kept": self.kept, "truncated": self.truncated, "longest": self.longest,
                "dropped_no_target": self.dropped_no_target, "tokens": self.tokens,
                "target_tokens": self.target_tokens}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def end_of_turn_token(tokenizer: Any) -> str:
    """The token that ends a turn: ``<|im_end|>`` when in the vocabulary, else ``eos_token``."""
    if _marker_ids(tokenizer).get(FALLBACK_EOT) is not None or tokenizer.eos_token is None:
        return FALLBACK_EOT
    return tokenizer.eos_token


END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
_MARKER_IDS: "weakref.WeakKeyDictionary[Any, dict[str, int | None]]" = weakref.WeakKeyDictionary()


def _marker_ids(tokenizer: Any) -> dict[str, int | None]:
    """Ids of the end-of-turn markers in the vocabulary (None if absent), looked up once per
    tokenizer: `get_vocab()` builds a 49k-entry dict on every call."""
    ids = _MARKER_IDS.get(tokenizer)
    if ids is None:
        vocab = tokenizer.get_vocab()
        ids = _MARKER_IDS[tokenizer] = {t: vocab.get(t) for t in END_OF_TURN_TOKENS}
    return ids


def end_of_turn_id(tokenizer: Any) -> int | None:
    """Token id of the end-of-turn marker (the fallback's EOT, else the tokenizer's eos)."""
    if has_chat_template(tokenizer):
        return tokenizer.eos_token_id
    token = end_of_turn_token(tokenizer)
    return _marker_ids(tokenizer).get(token) if token in END_OF_TURN_TOKENS else tokenizer.eos_token_id


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Ids that may end an assistant turn: ``end_of_turn_id`` plus known chat-template markers
    (``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``, ``<end_of_turn>``) present in the vocabulary."""
    ids = {i for i in _marker_ids(tokenizer).values() if i is not None}
    return ids | ({end_of_turn_id(tokenizer)} - {None})


def render_fallback(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The module-docstring ChatML template as a string."""
    eot = end_of_turn_token(tokenizer)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}{eot}\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def render_ids(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of ``messages`` under the chat template (or the fallback), no extra special tokens."""
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    else:
        text = render_fallback(tokenizer, messages, add_generation_prompt)
    return _ids(tokenizer, text)


def _assistant_spans(tokenizer: Any, messages: list[dict], full: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` token ranges of each assistant reply (+ its end-of-turn token) in ``full``."""
    eot = end_of_turn_ids(tokenizer)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render_ids(tokenizer, messages[: i + 1])
        if full[: len(before)] != before or full[: len(upto)] != upto:
            raise InputError(f"chat template is not prefix-stable at message {i}; cannot locate the assistant reply")
        span = upto[len(before):]
        ends = [k + 1 for k, t in enumerate(span) if t in eot]
        end = ends[-1] if ends else len(span)
        spans.append((len(before), len(before) + end))
    return spans


def encode_conversation(tokenizer: Any, messages: list[dict], max_length: int) -> tuple[list[int], list[int], bool]:
    """Tokenise a conversation; labels are the ids on assistant replies (+ end-of-turn), IGNORE elsewhere.

    Returns ``(input_ids, labels, truncated)``, both lists of length ``min(len, max_length)``;
    truncation keeps the start (right side cut).
    """
    ids, labels = _conversation_ids(tokenizer, messages)
    return ids[:max_length], labels[:max_length], len(ids) > max_length


def _conversation_ids(tokenizer: Any, messages: list[dict]) -> tuple[list[int], list[int]]:
    ids = render_ids(tokenizer, messages)
    labels = [IGNORE] * len(ids)
    for start, end in _assistant_spans(tokenizer, messages, ids):
        labels[start:end] = ids[start:end]
    return ids, labels


def encode_text(tokenizer: Any, text: str, max_length: int) -> tuple[list[int], list[int], bool]:
    """Language-modelling row: every token (and an appended ``eos``) is a target."""
    ids = _text_ids(tokenizer, text)
    return ids[:max_length], ids[:max_length], len(ids) > max_length


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids


def encode_prompt(tokenizer: Any, messages: list[dict]) -> tuple[list[int], str]:
    """For generation/eval: ``(prompt_ids, reference)`` = conversation minus its final assistant
    reply, with the generation prompt added, and that reply's text (for exact match)."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("encode_prompt needs a conversation that ends with an assistant reply")
    return render_ids(tokenizer, messages[:-1], add_generation_prompt=True), messages[-1]["content"]


def encode_dataset(tokenizer: Any, dataset: Dataset, max_length: int) -> tuple[list[Example], EncodeStats]:
    """Encode a chat or text Dataset; rows left with no target token after truncation are dropped."""
    if dataset.kind == "classification":
        raise ValueError("use encode_classification for a classification dataset")
    stats = EncodeStats()
    examples = []
    for row in dataset.rows:
        stats.rows += 1
        if dataset.kind == "chat":
            ids, labels = _conversation_ids(tokenizer, row)
        else:
            ids = _text_ids(tokenizer, row["text"])
            labels = list(ids)
        stats.longest = max(stats.longest, len(ids))
        stats.truncated += len(ids) > max_length
        ids, labels = ids[:max_length], labels[:max_length]
        n_target = sum(lab != IGNORE for lab in labels[1:])  # the first token is never predicted
        if n_target == 0:
            stats.dropped_no_target += 1
            continue
        stats.kept += 1
        stats.tokens += len(ids)
        stats.target_tokens += n_target
        stats.lengths.append(len(ids))
        examples.append(Example(ids, labels))
    return examples, stats


def build_label_map(labels: Iterable[str | int]) -> dict[str | int, int]:
    """Map each distinct label to an index, in sorted order (stable across runs and file orders)."""
    distinct = set(labels)
    if len({type(x) for x in distinct}) > 1:
        raise DataError("labels mix strings and integers; use one type")
    return {label: i for i, label in enumerate(sorted(distinct))}


def encode_classification(tokenizer: Any, rows: list[dict], max_length: int,
                          label2id: dict[str | int, int]) -> tuple[list[ClassificationExample], EncodeStats]:
    """Tokenise ``{"text", "label"}`` rows (special tokens added, truncated to ``max_length``)."""
    stats = EncodeStats()
    examples = []
    for i, row in enumerate(rows):
        if row["label"] not in label2id:
            raise DataError(f"row {i}: label {row['label']!r} is not in the label map {sorted(label2id)}")
        ids = list(tokenizer(row["text"], add_special_tokens=True)["input_ids"])
        stats.rows += 1
        stats.longest = max(stats.longest, len(ids))
        stats.truncated += len(ids) > max_length
        ids = ids[:max_length]
        stats.kept += 1
        stats.tokens += len(ids)
        stats.lengths.append(len(ids))
        examples.append(ClassificationExample(ids, label2id[row["label"]]))
    return examples, stats
