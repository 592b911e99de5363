"""PiSSA: principal-factor init keeps outputs, and converts to a plain LoRA for the original base."""
import copy
import json

import pytest
import torch

import lorakit
from helpers import MODEL_FACTORIES, peft_from_pretrained, tiny_llama
from helpers import logits, train_steps
from lorakit.tuners.lora import lora_wrappers

peft = pytest.importorskip("peft")


def _train(model, ids, steps=3, lr=1e-2):
    losses = train_steps(model, ids, steps=steps, lr=lr)
    model.eval()
    return losses


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fresh_pissa_adapter_keeps_outputs(arch, init, input_ids):
    model = MODEL_FACTORIES[arch]()
    expected = logits(model, input_ids)
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=init))
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)
    with lorakit.disable_adapters(model):  # the base now holds the residual
        assert not torch.allclose(logits(model, input_ids), expected, atol=1e-3)


def test_pissa_factors_are_top_singular_directions():
    model = tiny_llama()
    w = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights="pissa"))
    layer = model.model.layers[0].self_attn.q_proj
    a = layer.adapters["default"]
    u, s, vh = torch.linalg.svd(w)
    torch.testing.assert_close(a.delta_weight(), (u[:, :4] * s[:4]) @ vh[:4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.base.weight + a.delta_weight(), w, atol=1e-5, rtol=1e-5)


def test_pissa_with_niter_is_close_to_exact():
    torch.manual_seed(0)
    model = tiny_llama()
    u0, _, vh0 = torch.linalg.svd(torch.randn(32, 64), full_matrices=False)
    w = (u0 * 2.0 ** -torch.arange(32.0)) @ vh0  # decaying spectrum, as trained weights have
    model.model.layers[0].mlp.down_proj.weight.data.copy_(w)
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["down_proj"], init_lora_weights="pissa_niter_8"))
    a = model.model.layers[0].mlp.down_proj.adapters["default"]
    u, s, vh = torch.linalg.svd(w)
    torch.testing.assert_close(a.delta_weight(), (u[:, :4] * s[:4]) @ vh[:4], atol=1e-4, rtol=1e-3)


def test_bad_init_name_is_rejected():
    with pytest.raises(ValueError, match="pissa_niter"):
        lorakit.LoraConfig(init_lora_weights="pisa")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_converted_adapter_applies_to_original_base_in_lorakit_and_peft(arch, tmp_path, input_ids):
    original = MODEL_FACTORIES[arch]()
    model = copy.deepcopy(original)
    cfg = dict(llama=dict(target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"v_proj": 2}, use_rslora=True),
               gpt2=dict(target_modules=["c_attn", "c_fc"], alpha_pattern={"c_fc": 3.0}))[arch]
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa", **cfg))
    lorakit.save_adapter(model, tmp_path / "init")
    losses = _train(model, input_ids)
    assert losses[-1] < losses[0]
    expected = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path / "lora", convert_pissa_to_lora=tmp_path / "init")
    saved = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True

    ours = copy.deepcopy(original)
    lorakit.load_adapter(ours, tmp_path / "lora")
    torch.testing.assert_close(logits(ours, input_ids), expected, atol=1e-5, rtol=1e-5)
    theirs = peft_from_pretrained(copy.deepcopy(original), tmp_path / "lora")
    torch.testing.assert_close(logits(theirs, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_unconverted_adapter_round_trips_on_the_residual_base(tmp_path, input_ids):
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa_niter_2"))
    _train(model, input_ids, steps=2)
    expected = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path)
    residual = lorakit.unload(model)
    lorakit.load_adapter(residual, tmp_path)
    torch.testing.assert_close(logits(residual, input_ids), expected, atol=1e-6, rtol=1e-6)


def test_merge_and_unload_gives_trained_full_weights(input_ids):
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "o_proj"], init_lora_weights="pissa"))
    _train(model, input_ids, steps=2)
    expected = logits(model, input_ids)
    assert len(lora_wrappers(model)) == 4
    merged = lorakit.merge_and_unload(model)
    torch.testing.assert_close(logits(merged, input_ids), expected, atol=1e-5, rtol=1e-5)
