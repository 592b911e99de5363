import pytest
import torch

import lorakit
from helpers import MODEL_FACTORIES
from helpers import logits, randomize_lora_b

CFG = {
    "llama": dict(target_modules="all-linear"),
    "gpt2": dict(target_modules=["c_attn", "c_proj", "c_fc"]),
    "bert": dict(target_modules=["query", "value"], modules_to_save=["classifier"]),
}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_merge_and_unload_keeps_outputs_and_keys(arch, input_ids):
    model = MODEL_FACTORIES[arch]()
    keys = list(model.state_dict().keys())
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, **CFG[arch]))
    randomize_lora_b(model)
    if arch == "bert":
        with torch.no_grad():
            model.classifier.copies["default"].weight.mul_(2)
    expected = logits(model, input_ids)
    plain = lorakit.merge_and_unload(model)
    assert list(plain.state_dict().keys()) == keys
    torch.testing.assert_close(logits(plain, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_merge_unmerge_round_trip_model_level(llama, input_ids):
    base = logits(llama, input_ids)
    lorakit.inject(llama, lorakit.LoraConfig(target_modules="all-linear"))
    randomize_lora_b(llama)
    adapted = logits(llama, input_ids)
    lorakit.merge(llama)
    lorakit.merge(llama)
    torch.testing.assert_close(logits(llama, input_ids), adapted, atol=1e-5, rtol=1e-5)
    lorakit.unmerge(llama)
    torch.testing.assert_close(logits(llama, input_ids), adapted, atol=1e-5, rtol=1e-5)
    with lorakit.disable_adapters(llama):
        torch.testing.assert_close(logits(llama, input_ids), base, atol=1e-5, rtol=1e-5)


def test_unload_returns_base_without_merging(llama, input_ids):
    base = logits(llama, input_ids)
    keys = list(llama.state_dict().keys())
    lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj"]))
    randomize_lora_b(llama)
    plain = lorakit.unload(llama)
    assert list(plain.state_dict().keys()) == keys
    torch.testing.assert_close(logits(plain, input_ids), base)


def test_merge_named_adapter(llama, input_ids):
    lorakit.inject(llama, lorakit.LoraConfig(target_modules=["q_proj"]), "a")
    lorakit.inject(llama, lorakit.LoraConfig(target_modules=["v_proj"]), "b")
    randomize_lora_b(llama)
    lorakit.set_adapter(llama, "a")
    expected = logits(llama, input_ids)
    lorakit.set_adapter(llama, "b")
    plain = lorakit.merge_and_unload(llama, "a")
    torch.testing.assert_close(logits(plain, input_ids), expected, atol=1e-5, rtol=1e-5)
