"""Bottleneck adapters: sites by architecture, the three placements' formulas, save/load, the errors."""
import json

import pytest
import torch
from torch import nn

import lorakit
from helpers import MODEL_FACTORIES, logits, tiny_llama
from lorakit.tuners.bottleneck import AdapterSite, BottleneckAdapter

SITES = {  # (architecture, placement) -> the wrapped module paths of layer 0
    ("llama", "houlsby"): ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp"],
    ("llama", "pfeiffer"): ["model.layers.0.mlp"],
    ("llama", "parallel"): ["model.layers.0.mlp"],
    ("gpt2", "houlsby"): ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp"],
    ("gpt2", "parallel"): ["transformer.h.0.mlp"],
    ("bert", "houlsby"): ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"],
    ("bert", "parallel"): ["bert.encoder.layer.0.output"],
}


def _randomize(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BottleneckAdapter):
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("arch, placement", list(SITES))
def test_sites_by_architecture_and_fresh_identity(arch, placement, input_ids):
    model = MODEL_FACTORIES[arch]()
    base = logits(model, input_ids)
    names = lorakit.inject(model, lorakit.BottleneckConfig(placement=placement, bottleneck_size=4))
    assert [n for n in names if ".0." in n] == SITES[arch, placement] and len(names) == 2 * len(SITES[arch, placement])
    assert all(isinstance(model.get_submodule(n), AdapterSite) for n in names)
    torch.testing.assert_close(logits(model, input_ids), base)
    trainable = {n.rsplit(".", 2)[-2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"bottleneck_down", "bottleneck_up"}
    _randomize(model)
    assert not torch.allclose(logits(model, input_ids), base, atol=1e-4)
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(logits(model, input_ids), base)


def _f(adapter, h):
    return adapter.scaling * adapter.bottleneck_up(torch.relu(adapter.bottleneck_down(h)))


def test_each_placement_follows_its_formula():
    torch.manual_seed(0)
    model = tiny_llama()
    layer = model.model.layers[0]
    x = torch.randn(2, 5, 32)
    plain = layer.mlp(x)
    for placement, expect in (("pfeiffer", lambda a: plain + _f(a, plain)), ("parallel", lambda a: plain + _f(a, x))):
        lorakit.inject(model, lorakit.BottleneckConfig(placement=placement, bottleneck_size=4, init_weights=False),
                       placement)
        adapter = layer.mlp.adapters[placement]
        assert adapter.scaling == (4.0 if placement == "parallel" else 1.0)
        torch.testing.assert_close(layer.mlp(x), expect(adapter))
    bert = MODEL_FACTORIES["bert"]()
    h, x = torch.randn(2, 5, 64), torch.randn(2, 5, 32)
    lorakit.inject(bert, lorakit.BottleneckConfig(placement="parallel", bottleneck_size=4, init_weights=False))
    out_block = bert.bert.encoder.layer[0].output
    adapter = out_block.adapters["default"]
    expected = out_block.base.LayerNorm(out_block.base.dense(h) + x + _f(adapter, x))  # LN(FFN + f(x) + residual)
    bert.eval()
    torch.testing.assert_close(out_block(h, x), expected)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_save_load_round_trip_and_layout(arch, tmp_path, input_ids):
    from safetensors.torch import load_file

    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, lorakit.BottleneckConfig(placement="houlsby", reduction_factor=8))
    _randomize(model)
    expected = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORAKIT_BOTTLENECK" and config["bottleneck_size"] == 4
    keys = load_file(tmp_path / "adapter_model.safetensors")
    site = SITES[arch, "houlsby"][0]
    assert keys[f"base_model.model.{site}.bottleneck_down.weight"].shape == (4, 32)
    assert keys[f"base_model.model.{site}.bottleneck_up.bias"].shape == (32,)
    fresh = MODEL_FACTORIES[arch]()
    lorakit.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, input_ids), expected)
    assert lorakit.read_config(tmp_path).placement == "houlsby"


def test_errors_name_what_to_do(input_ids):
    model = tiny_llama()
    lorakit.inject(model, lorakit.BottleneckConfig())
    _randomize(model)
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        lorakit.merge(model)
    with pytest.raises(NotImplementedError, match="route"):
        with lorakit.route(model, ["default", None]):
            pass
    plain = lorakit.unload(model)
    assert isinstance(plain.model.layers[0].mlp, nn.Module) and not isinstance(plain.model.layers[0].mlp, AdapterSite)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "oddformer", "hidden_size": 8})()
            self.layers = nn.ModuleList([nn.ModuleDict({"mixer": nn.Linear(8, 8), "ff": nn.Linear(8, 8)})])

    with pytest.raises(lorakit.errors.InputError, match="oddformer.*ff, mixer"):
        lorakit.inject(Odd(), lorakit.BottleneckConfig())
    assert lorakit.inject(Odd(), lorakit.BottleneckConfig(ffn="ff")) == ["layers.0.ff"]
    with pytest.raises(ValueError, match="not both"):
        lorakit.BottleneckConfig(reduction_factor=4, bottleneck_size=8)
    lora = tiny_llama()
    lorakit.inject(lora, lorakit.LoraConfig(target_modules=["o_proj"]), "l")
    with pytest.raises(lorakit.errors.InputError, match="o_proj already holds other adapters"):
        lorakit.inject(lora, lorakit.BottleneckConfig(placement="houlsby"), "b")


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_llama_family_sites(family, input_ids):
    import transformers

    cfg_class, model_class = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                              "mistral": ("MistralConfig", "MistralForCausalLM")}[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_class)(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = getattr(transformers, model_class)(cfg).eval()
    base = logits(model, input_ids)
    names = lorakit.inject(model, lorakit.BottleneckConfig(placement="houlsby", bottleneck_size=4))
    assert names[:2] == ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp"] and len(names) == 4
    torch.testing.assert_close(logits(model, input_ids), base)
