"""Adapters written by lorakit load in the real peft with equal logits, and the reverse."""
import warnings

import pytest
import torch

import lorakit
from helpers import MODEL_FACTORIES, peft_from_pretrained
from helpers import logits, randomize_lora_b

peft = pytest.importorskip("peft")

CASES = {
    "llama": dict(target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True, rank_pattern={"v_proj": 2}),
    "gpt2": dict(target_modules=["c_attn", "c_fc"], rank_pattern={"c_fc": 6}, alpha_pattern={"c_attn": 3.0}),
    "bert": dict(target_modules=["query", "value"], modules_to_save=["classifier"], use_rslora=True,
                 rank_pattern={"value": 2}, task_type="SEQ_CLS"),
}


def _peft_model(arch, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(MODEL_FACTORIES[arch](), peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **cfg))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_lorakit_adapter_loads_in_peft(arch, tmp_path, input_ids):
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, **CASES[arch]))
    randomize_lora_b(model)
    if arch == "bert":
        with torch.no_grad():
            model.classifier.copies["default"].weight.mul_(-2)
    lorakit.save_adapter(model, tmp_path)
    theirs = peft_from_pretrained(MODEL_FACTORIES[arch](), tmp_path)
    torch.testing.assert_close(logits(theirs, input_ids), logits(model, input_ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_peft_adapter_loads_in_lorakit(arch, tmp_path, input_ids):
    theirs = _peft_model(arch, **CASES[arch]).eval()
    theirs.save_pretrained(tmp_path)
    ours = MODEL_FACTORIES[arch]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lorakit.load_adapter(ours, tmp_path)
    torch.testing.assert_close(logits(ours, input_ids), logits(theirs, input_ids), atol=1e-5, rtol=1e-5)


def test_peft_embedding_adapter_loads_in_lorakit(tmp_path, input_ids):
    theirs = _peft_model("llama", target_modules=["embed_tokens", "q_proj"]).eval()
    theirs.save_pretrained(tmp_path)  # also writes the embedding's base weight
    ours = MODEL_FACTORIES["llama"]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lorakit.load_adapter(ours, tmp_path)
    torch.testing.assert_close(logits(ours, input_ids), logits(theirs, input_ids), atol=1e-5, rtol=1e-5)


def test_lorakit_bias_all_adapter_loads_in_peft(tmp_path, input_ids):
    model = MODEL_FACTORIES["gpt2"]()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["c_attn"], bias="all"))
    randomize_lora_b(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.3)
    lorakit.save_adapter(model, tmp_path)
    theirs = peft_from_pretrained(MODEL_FACTORIES["gpt2"](), tmp_path)
    torch.testing.assert_close(logits(theirs, input_ids), logits(model, input_ids), atol=1e-5, rtol=1e-5)
