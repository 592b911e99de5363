import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from helpers import MODEL_FACTORIES, tiny_bert, tiny_llama
from helpers import logits, randomize_lora_b
from lorakit.errors import InputError
from lorakit.io import AdapterFormatError, check_adapter_dir, is_adapter_dir


def _trained(arch="llama", **cfg):
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, **cfg))
    randomize_lora_b(model)
    return model


def test_save_load_round_trip(tmp_path, input_ids):
    model = _trained(target_modules=["q_proj", "v_proj", "embed_tokens"], rank_pattern={"v_proj": 2})
    expected = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path)
    fresh = tiny_llama()
    lorakit.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, input_ids), expected)
    assert not any(p.requires_grad for p in fresh.parameters())


def test_saved_layout_is_peft_layout(tmp_path):
    lorakit.save_adapter(_trained(target_modules=["q_proj", "embed_tokens"]), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["embed_tokens", "q_proj"] and config["task_type"] == "CAUSAL_LM"
    shapes = {k: tuple(v.shape) for k, v in load_file(tmp_path / "adapter_model.safetensors").items()}
    assert shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == (4, 32)
    assert shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] == (32, 4)
    assert shapes["base_model.model.model.embed_tokens.lora_embedding_A"] == (4, 128)
    assert shapes["base_model.model.model.embed_tokens.lora_embedding_B"] == (32, 4)


def test_layer_subset_saved_as_full_names(tmp_path):
    lorakit.save_adapter(_trained(target_modules=["q_proj"], layers_to_transform=[1]), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["model.layers.1.self_attn.q_proj"]


def test_modules_to_save_and_bias_round_trip(tmp_path, input_ids):
    model = _trained("bert", target_modules=["query", "value"], modules_to_save=["classifier"], bias="lora_only")
    with torch.no_grad():
        model.classifier.copies["default"].weight.mul_(3)
        model.bert.encoder.layer[0].attention.self.query.base.bias.add_(1)
    expected = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert "base_model.model.classifier.weight" in keys
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.bias" in keys
    fresh = tiny_bert()
    lorakit.load_adapter(fresh, tmp_path, is_trainable=True)
    torch.testing.assert_close(logits(fresh, input_ids), expected)
    assert any(p.requires_grad for p in fresh.parameters())


def test_wrong_keys_raise_one_error_and_leave_model_untouched(tmp_path, input_ids):
    lorakit.save_adapter(_trained(target_modules=["q_proj", "v_proj"]), tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    tensors = load_file(file)
    tensors.pop("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
    tensors["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] = torch.zeros(32, 5)
    tensors["base_model.model.surprise.weight"] = torch.zeros(1)
    save_file(tensors, file)
    fresh = tiny_llama()
    base = logits(fresh, input_ids)
    with pytest.raises(AdapterFormatError) as e:
        lorakit.load_adapter(fresh, tmp_path)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "unexpected keys (1)" in msg and "wrong shapes (1)" in msg
    assert lorakit.list_adapters(fresh) == []
    torch.testing.assert_close(logits(fresh, input_ids), base)


def test_check_adapter_dir_raises_the_callers_error_with_its_where(tmp_path):
    class CallerError(InputError):
        pass

    with pytest.raises(CallerError, match=r"^--opt x: not an adapter directory \(no adapter_config.json\)$"):
        check_adapter_dir(tmp_path, "--opt x", CallerError)
    with pytest.raises(AdapterFormatError, match="not an adapter directory"):
        check_adapter_dir(tmp_path / "missing", "where")
    assert not is_adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    assert is_adapter_dir(tmp_path) and check_adapter_dir(tmp_path, "where") == tmp_path


def test_truncated_file_names_the_file(tmp_path):
    lorakit.save_adapter(_trained(target_modules=["q_proj"]), tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:50])
    with pytest.raises(AdapterFormatError, match="adapter_model.safetensors: truncated"):
        lorakit.load_adapter(tiny_llama(), tmp_path)


def test_legacy_bin_needs_explicit_flag(tmp_path, input_ids):
    model = _trained(target_modules=["q_proj"])
    lorakit.save_adapter(model, tmp_path)
    st = tmp_path / "adapter_model.safetensors"
    torch.save(load_file(st), tmp_path / "adapter_model.bin")
    st.unlink()
    with pytest.raises(AdapterFormatError, match="allow_pickle=True"):
        lorakit.load_adapter(tiny_llama(), tmp_path)
    fresh = tiny_llama()
    lorakit.load_adapter(fresh, tmp_path, allow_pickle=True)
    torch.testing.assert_close(logits(fresh, input_ids), logits(model, input_ids))


def test_unknown_config_keys_warn_bad_values_raise(tmp_path):
    lorakit.save_adapter(_trained(target_modules=["q_proj"]), tmp_path)
    cfg_file = tmp_path / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["shiny_new_peft_option"] = 3
    cfg_file.write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="shiny_new_peft_option"):
        lorakit.load_adapter(tiny_llama(), tmp_path)
    cfg["r"] = -1
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(AdapterFormatError, match="adapter_config.json: r:"):
        lorakit.load_adapter(tiny_llama(), tmp_path)
    cfg_file.write_text("{not json")
    with pytest.raises(AdapterFormatError, match="adapter_config.json:1: invalid JSON"):
        lorakit.load_adapter(tiny_llama(), tmp_path)


def test_two_saved_adapters_load_under_names(tmp_path, input_ids):
    a, b = _trained(target_modules=["q_proj"]), _trained(target_modules=["v_proj"])
    randomize_lora_b(b, seed=5)
    lorakit.save_adapter(a, tmp_path / "a")
    lorakit.save_adapter(b, tmp_path / "b")
    model = tiny_llama()
    lorakit.load_adapter(model, tmp_path / "a", adapter_name="a")
    lorakit.load_adapter(model, tmp_path / "b", adapter_name="b")
    torch.testing.assert_close(logits(model, input_ids), logits(b, input_ids))
    lorakit.set_adapter(model, "a")
    torch.testing.assert_close(logits(model, input_ids), logits(a, input_ids))
