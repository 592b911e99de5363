"""LoRA+ parameter groups: B faster than A, embedding A at its own lr, decay on matrices only."""
import pytest

import lorakit
from helpers import tiny_bert, tiny_llama
from lorakit.train.optim import build_optimizer, param_groups
from lorakit.tuners.lora import LoraEmbedding, lora_wrappers


def _group_of(opt, p):
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def test_loraplus_group_membership_and_rates():
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], use_dora=True))
    opt = lorakit.loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1)
    for _, w in lora_wrappers(model):
        a = w.adapters["default"]
        assert _group_of(opt, a.lora_B)["lr"] == pytest.approx(16e-3)
        assert _group_of(opt, a.lora_B)["weight_decay"] == 0.1
        expected_a = 1e-6 if isinstance(w, LoraEmbedding) else 1e-3
        assert _group_of(opt, a.lora_A)["lr"] == pytest.approx(expected_a)
        assert _group_of(opt, a.dora.magnitude)["lr"] == pytest.approx(1e-3)
        assert _group_of(opt, a.dora.magnitude)["weight_decay"] == 0.0
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_groups = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(trainable)


def test_modules_to_save_and_biases_at_base_lr_without_decay_on_biases():
    model = tiny_bert()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["query"], modules_to_save=["classifier"],
                                             bias="lora_only"))
    opt = build_optimizer(model, lr=2e-4, weight_decay=0.05, loraplus_lr_ratio=8)
    head = model.classifier.copies["default"]
    assert _group_of(opt, head.weight)["lr"] == 2e-4 and _group_of(opt, head.weight)["weight_decay"] == 0.05
    assert _group_of(opt, head.bias)["lr"] == 2e-4 and _group_of(opt, head.bias)["weight_decay"] == 0.0


def test_without_ratio_everything_at_lr():
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]))
    assert {g["lr"] for g in param_groups(model, lr=1e-3)} == {1e-3}


def test_b_moves_faster_than_a(input_ids):
    def b_over_a_step(ratio):
        model = tiny_llama()
        lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.train()
        opt = build_optimizer(model, lr=1e-3, loraplus_lr_ratio=ratio)
        before = {id(p): p.detach().clone() for p in model.parameters() if p.requires_grad}
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        opt.step()
        moved = {id(p): (p.detach() - before[id(p)]).abs().mean().item() for p in model.parameters() if p.requires_grad}
        adapters = [w.adapters["default"] for _, w in lora_wrappers(model)]
        return (sum(moved[id(a.lora_B)] for a in adapters) / sum(moved[id(a.lora_A)] for a in adapters))

    assert b_over_a_step(16) > 10 * b_over_a_step(None)
