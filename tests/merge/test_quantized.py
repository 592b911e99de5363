"""Merging out of a quantized base: dequant(W) + ΔW in full precision, with the base's keys."""
import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import lorakit
from helpers import logits, randomize_lora_b, tiny_llama, tiny_llama_dir
from lorakit.io import BASE_QUANTIZATION_NAME, read_base_quantization
from lorakit.merge import merge_adapter_to_dir, merge_dequantized, requantization_error
from lorakit.models import load_causal_lm
from lorakit.quant import QUANTIZED_LINEARS, QUANTIZED_TYPES, NF4Linear, quantize
from lorakit.tuners.lora import LoraWrapper

CFG = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])


def quantized_adapted(method="nf4"):
    model = tiny_llama()
    keys = list(model.state_dict())
    quantize(model, method=method)
    lorakit.inject(model, CFG)
    randomize_lora_b(model)
    return model, keys


@pytest.mark.parametrize("method", sorted(QUANTIZED_LINEARS))
def test_merge_and_unload_gives_linear_with_dequantized_weight_plus_delta(method, input_ids):
    model, _ = quantized_adapted(method)
    expected_weights = {}
    for name, m in model.named_modules():
        if isinstance(m, LoraWrapper):
            expected_weights[name] = m.base.dequantize() + m.active.delta_weight()
    expected = logits(model, input_ids)
    plain = lorakit.merge_and_unload(model)
    for name, weight in expected_weights.items():
        layer = plain.get_submodule(name)
        assert type(layer) is nn.Linear and not layer.weight.requires_grad
        torch.testing.assert_close(layer.weight, weight, atol=1e-6, rtol=0)
    assert isinstance(plain.model.layers[0].self_attn.k_proj, QUANTIZED_TYPES)  # no adapter: stays quantized
    torch.testing.assert_close(logits(plain, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_merge_dequantized_restores_the_base_keys(input_ids):
    model, keys = quantized_adapted()
    expected = logits(model, input_ids)
    plain, norms = merge_dequantized(model)
    assert list(plain.state_dict()) == keys
    assert not any(isinstance(m, QUANTIZED_TYPES) for m in plain.modules())
    assert len(norms) == 6 and all(v > 0 for v in norms.values())
    torch.testing.assert_close(logits(plain, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_in_place_merge_into_quantized_base_requantizes(input_ids):
    model, _ = quantized_adapted()
    adapted = logits(model, input_ids)
    lorakit.merge(model)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q.base, NF4Linear) and q.merged == "default"
    rel = (logits(model, input_ids) - adapted).norm() / adapted.norm()
    assert 0 < rel < 0.2  # lossy: the merged weight is rounded to NF4 again


def test_requantization_error_is_zero_for_an_nf4_grid_weight_and_grows_with_delta():
    torch.manual_seed(0)
    base = NF4Linear.from_weight(torch.randn(32, 64) * 0.05).dequantize()
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(base)
    # Only the double-quantized scales re-round (~1e-4); plain NF4 rounding is ~1e-1.
    assert requantization_error(model, "nf4", ["0"])["rel_error"] < 1e-3
    delta = torch.randn(32, 64) * 1e-3
    with torch.no_grad():
        model[0].weight.add_(delta)
    stats = requantization_error(model, "nf4", ["0"], {"0": float(delta.norm())})
    assert 0 < stats["rel_error"] < 0.15 and stats["max_layer_rel_error"] == pytest.approx(stats["rel_error"])
    assert stats["error_vs_delta"] > 0.3


@pytest.fixture
def qlora_adapter(tmp_path, smol_tokenizer):
    """A tiny NF4 base dir, and a QLoRA adapter (random B) saved from it."""
    base_dir = tmp_path / "base"
    tiny_llama_dir(base_dir, tokenizer=smol_tokenizer)
    model, _ = load_causal_lm(str(base_dir), quantization="nf4")
    lorakit.inject(model, CFG.model_copy(update={"base_model_name_or_path": str(base_dir)}))
    randomize_lora_b(model)
    lorakit.save_adapter(model, tmp_path / "adapter")
    return model, base_dir, tmp_path / "adapter"


def test_qlora_adapter_records_its_quantized_base(qlora_adapter):
    model, _, adapter = qlora_adapter
    spec = read_base_quantization(adapter)
    assert spec == {"method": "nf4", "double_quant": True, "blocksize": 64, "compute_dtype": "float32"}
    assert "nf4" not in (adapter / "adapter_config.json").read_text()
    plain = lorakit.unload(model)  # a full-precision save into the same directory drops the stale file
    lorakit.quant.dequantize(plain)
    lorakit.inject(plain, CFG)
    lorakit.save_adapter(plain, adapter)
    assert read_base_quantization(adapter) is None


def test_merge_adapter_to_dir_loads_in_transformers(qlora_adapter, tmp_path):
    model, base_dir, adapter = qlora_adapter
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    expected = logits(model, ids)
    stats = merge_adapter_to_dir(adapter, tmp_path / "merged", requantize="nf4")
    assert stats["base_quantization"] == "nf4" and stats["merged_layers"] == 6 and stats["dtype"] == "float32"
    assert 0 < stats["rel_error"] < 0.2 and stats["error_vs_delta"] > 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base_keys = AutoModelForCausalLM.from_pretrained(base_dir).state_dict().keys()
    assert list(merged.state_dict()) == list(base_keys)
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "llama"


def test_merge_adapter_to_dir_full_precision_base(tmp_path, smol_tokenizer, input_ids):
    base_dir = tmp_path / "base"
    tiny_llama_dir(base_dir, tokenizer=smol_tokenizer)
    model, _ = load_causal_lm(str(base_dir))
    lorakit.inject(model, CFG)
    randomize_lora_b(model)
    lorakit.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    assert not (tmp_path / "adapter" / BASE_QUANTIZATION_NAME).exists()
    expected = logits(model, input_ids)
    stats = merge_adapter_to_dir(tmp_path / "adapter", tmp_path / "merged")
    assert stats["base_quantization"] is None and "rel_error" not in stats
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, input_ids), expected, atol=1e-5, rtol=1e-5)


def test_merge_adapter_to_dir_rejects_bad_input(qlora_adapter, tmp_path):
    _, _, adapter = qlora_adapter
    with pytest.raises(ValueError, match="unknown quantization method"):
        merge_adapter_to_dir(adapter, tmp_path / "x", requantize="fp4")
    with pytest.raises(ValueError, match="dtype"):
        merge_adapter_to_dir(adapter, tmp_path / "x", dtype="int4")
    assert not (tmp_path / "x").exists()
