"""Summed losses with their token (or example) counts, so gradient accumulation can normalise by
the target count of the whole accumulated batch, never by per-micro-batch means.

The causal-LM loss runs the decoder body once and applies the output head only at target
positions: prompt tokens are masked anyway, and the (tokens × vocab) logits for them are the
largest activation of a small model's step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def count_targets(batch: dict) -> int:
    """Tokens (causal LM: shifted labels != IGNORE) or examples (classification) that carry loss."""
    labels = batch["labels"]
    return int((labels[:, 1:] != IGNORE).sum()) if labels.dim() == 2 else labels.numel()


def causal_lm_loss_sum(model: nn.Module, batch: dict) -> torch.Tensor:
    """Σ cross-entropy over target tokens of `batch` (labels aligned with input_ids, shifted here)."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    labels = batch["labels"][:, 1:]
    body, head = body_and_head(model)
    if body is None:  # a model whose logits need more than the head (e.g. soft-capping): plain path
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    hidden = body(**inputs, use_cache=False).last_hidden_state[:, :-1]
    keep = labels != IGNORE
    logits = head(hidden[keep])
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum")


def classification_loss_sum(model: nn.Module, batch: dict) -> torch.Tensor:
    """Σ cross-entropy over the examples of `batch`."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")


def body_and_head(model: nn.Module):
    """(decoder body, output head) of a causal LM whose logits are head(body(...).last_hidden_state);
    (None, None) for one whose logits need more (soft-capping, logit scale) or that has no such split."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None, None
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or head is None or body is model:
        return None, None
    return body, head
