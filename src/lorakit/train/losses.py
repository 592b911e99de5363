"""Summed losses with their token (or example) counts, so gradient accumulation can normalise by
the target count of the whole accumulated batch, never by per-micro-batch means.

The causal-LM loss runs the decoder body once and applies the output head only at target
positions: prompt tokens are masked anyway, and the (tokens × vocab) logits for them are the
largest activation of a small model's step. A plain `nn.Linear` head goes further through
`linear_cross_entropy_sum`: the logits are formed a chunk of rows at a time and the gradient is
computed in the same pass, so the (targets × vocab) logits, their log-softmax and its gradient
are never held whole.
"""
from __future__ import annotations

from typing import Optional

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
    if type(head) is nn.Linear:
        return linear_cross_entropy_sum(hidden[keep], head.weight, head.bias, labels[keep])
    logits = head(hidden[keep])
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum")


#: Logit elements formed at once by `linear_cross_entropy_sum` (fp32: 32 MiB): a few hundred rows
#: of a 50k vocabulary, enough for full-speed matmuls.
CHUNK_ELEMENTS = 1 << 23


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             labels: torch.Tensor, chunk_rows: Optional[int] = None) -> torch.Tensor:
    """Σ_i cross-entropy(hidden_i · weightᵀ + bias, labels_i), a 0-dim fp32 tensor.

    hidden (n, d), weight (V, d), bias (V,) or None, labels (n,) all valid class ids. Equal to
    `F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, reduction="sum")`, with
    the logits formed `chunk_rows` rows at a time (default: CHUNK_ELEMENTS // V) and, when a
    gradient is needed, the gradients of hidden / weight / bias computed in the same pass
    (softmax − one-hot, times weight / hidden), so backward only scales them.
    """
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        return _LinearCrossEntropy.apply(hidden, weight, bias, labels, rows)
    return _chunked_ce(hidden, weight, bias, labels, rows, (False, False, False))[0]


def _chunked_ce(hidden, weight, bias, labels, rows: int, needs: tuple[bool, bool, bool]):
    """(loss sum, grad hidden, grad weight, grad bias) of `linear_cross_entropy_sum`; grads None unless needed."""
    need_h, need_w, need_b = needs
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
    for start in range(0, hidden.shape[0], rows):
        h, y = hidden[start:start + rows], labels[start:start + rows]
        logits = F.linear(h, weight, bias).float()
        lse = torch.logsumexp(logits, dim=-1)
        total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
        if not (need_h or need_w or need_b):
            continue
        p = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
        p[torch.arange(len(y), device=p.device), y] -= 1
        if need_b:
            grad_b += p.sum(0)
        p = p.to(hidden.dtype)
        if need_h:
            torch.mm(p, weight, out=grad_h[start:start + rows])
        if need_w:
            grad_w.addmm_(p.t().float(), h.float())
    return total, grad_h, grad_w, grad_b


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd for `linear_cross_entropy_sum`: the forward keeps the gradients, backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows):
        needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        total, grad_h, grad_w, grad_b = _chunked_ce(hidden, weight, bias, labels, rows, needs)
        ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                     None if grad_b is None else grad_b.to(bias.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grads = tuple(None if g is None else g * grad_out.to(g.dtype) for g in ctx.grads)
        ctx.grads = None
        return (*grads, None, None)


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
