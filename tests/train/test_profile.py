"""The per-category step profile: every op lands in one category and the categories add up to the step."""
import pytest
import torch

import lorakit
from helpers import tiny_llama
from lorakit.train.losses import IGNORE, causal_lm_loss_sum
from lorakit.train.profile import CATEGORIES, classify, profile_steps


@pytest.mark.parametrize("name, shapes, want", [
    ("aten::mm", [[40, 64], [64, 64]], "base matmuls"),
    ("aten::addmm", [[40, 64], [40, 3], [3, 64]], "LoRA matmuls"),
    ("aten::mm", [[40, 64], [64, 128]], "LM head + loss"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", [[2, 4, 10, 16]], "attention"),
    ("aten::_log_softmax", [[40, 128]], "LM head + loss"),
    ("aten::mul", [[40, 64], [40, 64]], "norms/act/RoPE"),
    ("aten::_foreach_mul_", [], "optimizer"),
    ("autograd::engine::evaluate_function: MmBackward0", [], None),
])
def test_classify_by_name_and_shapes(name, shapes, want):
    assert classify(name, shapes, ranks={3}, vocab=128) == want


def test_profile_of_a_lora_step_adds_up_to_the_step():
    model = tiny_llama(hidden_size=64, intermediate_size=96)
    lorakit.inject(model, lorakit.LoraConfig(r=3, target_modules="all-linear", exclude_modules=["lm_head"]))

    def batches():
        g = torch.Generator().manual_seed(0)
        while True:
            ids = torch.randint(0, 128, (2, 20), generator=g)
            labels = ids.clone()
            labels[:, :6] = IGNORE
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    p = profile_steps(model, causal_lm_loss_sum, batches(), optimizer, steps=1, grad_accum=2)
    assert set(p.seconds) == set(CATEGORIES)
    assert sum(p.seconds.values()) == pytest.approx(p.wall_s, rel=1e-6)
    for cat in ("base matmuls", "LoRA matmuls", "attention", "LM head + loss", "norms/act/RoPE", "optimizer"):
        assert p.seconds[cat] > 0, cat
    assert p.unprofiled_s > 0
    assert "LoRA matmuls" in p.table()
