"""Summed losses and target counts: the pieces that make gradient accumulation exact."""
import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_bert, tiny_llama
from lorakit.train.losses import (IGNORE, causal_lm_loss_sum, classification_loss_sum, count_targets,
                                  linear_cross_entropy_sum)


def _batch():
    torch.manual_seed(3)
    ids = torch.randint(0, 128, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    labels = ids.clone()
    labels[:, :3] = IGNORE  # prompt
    labels[mask == 0] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_count_targets_counts_shifted_labels_or_examples():
    batch = _batch()
    assert count_targets(batch) == int((batch["labels"][:, 1:] != IGNORE).sum()) == 3 * 6 - 3
    assert count_targets({"labels": torch.tensor([0, 2, 1, 1])}) == 4


def test_causal_lm_loss_sum_is_hf_mean_loss_times_targets():
    model, batch = tiny_llama(), _batch()
    with torch.no_grad():
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        ours = causal_lm_loss_sum(model, batch)
    assert float(ours) == pytest.approx(float(hf) * count_targets(batch), rel=1e-5)


def test_head_only_at_targets_matches_full_logits_path():
    """The fast path (body once, head at target positions) equals cross-entropy over all logits."""
    model, batch = tiny_llama(), _batch()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    full = F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")
    fast = causal_lm_loss_sum(model, batch)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    g_full = torch.autograd.grad(full, model.model.layers[0].self_attn.q_proj.weight)[0]
    g_fast = torch.autograd.grad(fast, model.model.layers[0].self_attn.q_proj.weight)[0]
    torch.testing.assert_close(g_fast, g_full, rtol=1e-4, atol=1e-7)


def test_sum_over_split_batches_equals_sum_over_the_whole():
    model, batch = tiny_llama(), _batch()
    halves = [{k: v[rows] for k, v in batch.items()} for rows in (slice(0, 1), slice(1, 3))]
    with torch.no_grad():
        whole = causal_lm_loss_sum(model, batch)
        parts = sum(causal_lm_loss_sum(model, h) for h in halves)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    assert sum(count_targets(h) for h in halves) == count_targets(batch)


def test_classification_loss_sum():
    model = tiny_bert(num_labels=3)
    ids = torch.randint(0, 128, (4, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 2, 1, 1])}
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        assert float(classification_loss_sum(model, batch)) == pytest.approx(
            float(F.cross_entropy(logits, batch["labels"], reduction="sum")), rel=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 4, 7, None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_cross_entropy_sum_matches_logits_then_cross_entropy(chunk_rows, with_bias):
    """Loss and the gradients of hidden, weight and bias equal the unfused F.linear + F.cross_entropy,
    whatever the chunking (1 row, uneven chunks, all at once)."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    bias = torch.randn(50, generator=g, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 50, (7,), generator=g)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    ref = F.cross_entropy(F.linear(hidden, weight, bias), labels, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.5, leaves)
    ours = linear_cross_entropy_sum(hidden, weight, bias, labels, chunk_rows=chunk_rows)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(ours * 0.5, leaves), ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_sum_frozen_weight_and_no_grad():
    """A frozen head (LoRA training) gets no gradient and only hidden's flows; under no_grad it is a plain loss."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 8, generator=g, requires_grad=True)
    weight, labels = torch.randn(30, 8, generator=g), torch.randint(0, 30, (5,), generator=g)
    ours = linear_cross_entropy_sum(hidden, weight, None, labels, chunk_rows=2)
    ref = F.cross_entropy(F.linear(hidden, weight), labels, reduction="sum")
    torch.testing.assert_close(torch.autograd.grad(ours, hidden)[0], torch.autograd.grad(ref, hidden)[0])
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy_sum(hidden, weight, None, labels), ref.detach())


def test_lora_loss_gradients_equal_the_full_logits_path():
    """With a LoRA adapter (random B) and a frozen head, the adapter's gradients through the fused
    head + loss equal those of cross-entropy over the model's full logits."""
    import lorakit
    from helpers import randomize_lora_b

    model, batch = tiny_llama(), _batch()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules="all-linear", exclude_modules=["lm_head"]))
    randomize_lora_b(model)
    params = [p for p in model.parameters() if p.requires_grad]
    assert not model.lm_head.weight.requires_grad
    logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1]
    full = F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")
    want = torch.autograd.grad(full, params)
    fast = causal_lm_loss_sum(model, batch)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    for got, w in zip(torch.autograd.grad(fast, params), want):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-6)
