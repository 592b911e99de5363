"""Held-out evaluation: loss and perplexity, exact match of greedy generations, accuracy."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from ..data.tokenize import encode_prompt, end_of_turn_id
from .losses import count_targets


@dataclass
class Generation:
    prompt: str
    reference: str
    prediction: str

    @property
    def correct(self) -> bool:
        return normalize_answer(self.prediction) == normalize_answer(self.reference)


@dataclass
class EvalResult:
    loss: float | None = None
    perplexity: float | None = None
    exact_match: float | None = None
    accuracy: float | None = None
    samples: list[Generation] = field(default_factory=list, repr=False)

    def metrics(self) -> dict:
        return {k: v for k, v in (("loss", self.loss), ("perplexity", self.perplexity),
                                  ("exact_match", self.exact_match), ("accuracy", self.accuracy)) if v is not None}


def normalize_answer(text: str) -> str:
    """Exact match ignores surrounding whitespace only."""
    return text.strip()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _on(device: torch.device, batch: dict) -> dict:
    """`batch` on `device` (the model's: batches are collated on the CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Iterable[dict], loss_sum: Callable) -> tuple[float, float]:
    """(mean loss per target, perplexity) over `batches`."""
    was_training = model.training
    model.eval()
    total, count, device = 0.0, 0, _device(model)
    for batch in batches:
        count += count_targets(batch)
        total += float(loss_sum(model, _on(device, batch)))
    model.train(was_training)
    loss = total / max(count, 1)
    return loss, math.exp(min(loss, 50.0))


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[dict]) -> float:
    was_training = model.training
    model.eval()
    right, seen, device = 0, 0, _device(model)
    for batch in batches:
        batch = _on(device, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        right += int((logits.argmax(-1) == batch["labels"]).sum())
        seen += batch["labels"].numel()
    model.train(was_training)
    return right / max(seen, 1)


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 48,
                     batch_size: int = 16) -> list[Generation]:
    """Greedy answers to each conversation's final user turn (left-padded batches)."""
    was_training = model.training
    model.eval()
    stop = [t for t in {tokenizer.eos_token_id, end_of_turn_id(tokenizer)} if t is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    encoded = [encode_prompt(tokenizer, conv) for conv in conversations]
    out: list[Generation] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt, _) in enumerate(chunk):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        device = next(model.parameters()).device
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stop, pad_token_id=pad)
        for row, (prompt, reference) in enumerate(chunk):
            answer = tokenizer.decode(gen[row, width:], skip_special_tokens=True)
            out.append(Generation(tokenizer.decode(prompt), reference, answer))
    model.train(was_training)
    return out


def exact_match(generations: list[Generation]) -> float:
    return sum(g.correct for g in generations) / max(len(generations), 1)


def evaluate_dataset(model: nn.Module, tokenizer, dataset, labels: list | None = None, max_length: int = 512,
                     max_tokens: int = 4096, max_new_tokens: int = 48, batch_size: int = 16,
                     max_samples: int | None = None, generate: bool = True) -> EvalResult:
    """Loss, perplexity and exact match (chat rows) or accuracy (classification rows) on a Dataset.

    `labels`: a classifier's label names (None for a causal LM); they map the rows' labels to class ids.
    """
    from ..data.batching import grouped_batches
    from ..data.formats import Dataset
    from ..data.io import DataError
    from ..data.tokenize import encode_classification, encode_dataset
    from .losses import causal_lm_loss_sum, classification_loss_sum

    rows = dataset.rows[:max_samples]
    if labels and dataset.kind != "classification":
        raise DataError(f"{dataset.source}: {dataset.kind} data cannot evaluate a classifier")
    if dataset.kind == "classification":
        if not labels:
            raise DataError(f"{dataset.source}: classification data needs a model with label names")
        index = {str(label): i for i, label in enumerate(labels)}  # labels.json / id2label may differ in type
        unknown = sorted({str(r["label"]) for r in rows} - set(index))
        if unknown:
            raise DataError(f"{dataset.source}: labels the model does not know: {', '.join(unknown[:5])}")
        label_map = {r["label"]: index[str(r["label"])] for r in rows}
        examples, _ = encode_classification(tokenizer, rows, max_length, label_map)
        loss_sum = classification_loss_sum
    else:
        examples, _ = encode_dataset(tokenizer, Dataset(dataset.source, dataset.format, dataset.kind, rows), max_length)
        loss_sum = causal_lm_loss_sum
    if not examples:
        raise DataError(f"{dataset.source}: no row to evaluate")
    loader = grouped_batches(examples, max(max_tokens, max(len(e) for e in examples)), tokenizer.pad_token_id, 0)
    conversations = rows if generate and dataset.kind == "chat" else None
    return score(model, lambda: loader, loss_sum, dataset.kind == "classification", tokenizer, conversations,
                 max_new_tokens, batch_size)


def score(model: nn.Module, batches: Callable[[], Iterable[dict]], loss_sum: Callable, classification: bool,
          tokenizer=None, conversations: list[list[dict]] | None = None, max_new_tokens: int = 48,
          batch_size: int = 16) -> EvalResult:
    """The one evaluation recipe (trainer and `lorakit eval`): loss and perplexity over `batches()`,
    then accuracy (a classifier) or exact match of greedy answers to `conversations` (if any)."""
    result = EvalResult()
    result.loss, result.perplexity = mean_loss(model, batches(), loss_sum)
    if classification:
        result.accuracy = accuracy(model, batches())
    elif conversations:
        result.samples = generate_answers(model, tokenizer, conversations, max_new_tokens, batch_size)
        result.exact_match = exact_match(result.samples)
    return result
