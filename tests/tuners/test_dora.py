"""DoRA: forward equals the dense formula, merges exactly, saves like peft and interoperates with it."""
import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import lorakit
from helpers import MODEL_FACTORIES, peft_from_pretrained, tiny_gpt2, tiny_llama
from helpers import logits, randomize_lora_b, train_steps
from lorakit.tuners.dora import DoraMagnitude
from lorakit.tuners.lora import LoraAdapter, LoraEmbedding, LoraLinear, lora_wrappers

peft = pytest.importorskip("peft")


def _dora_layer(base, dropout=0.0):
    layer = LoraEmbedding(base) if isinstance(base, nn.Embedding) else LoraLinear(base)
    layer.add("default", LoraAdapter(layer.in_features, layer.out_features, 4, 8.0, dropout=dropout, init=False))
    layer.set_active("default")
    adapter = layer.adapters["default"]
    adapter.dora = DoraMagnitude.init_from(layer, adapter)
    with torch.no_grad():
        adapter.dora.magnitude.mul_(torch.linspace(0.5, 1.5, layer.out_features))
    return layer, adapter


def _dense(w_out_in, adapter):
    v = w_out_in + adapter.delta_weight()
    return adapter.dora.magnitude.unsqueeze(1) * v / v.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("kind", ["linear", "linear_nobias", "conv1d"])
def test_forward_equals_dense_formula(kind):
    torch.manual_seed(0)
    base = {"linear": lambda: nn.Linear(12, 7), "linear_nobias": lambda: nn.Linear(12, 7, bias=False),
            "conv1d": lambda: Conv1D(7, 12)}[kind]()
    layer, adapter = _dora_layer(base)
    w = base.weight.T if kind == "conv1d" else base.weight
    x = torch.randn(2, 5, 12)
    expected = x @ _dense(w, adapter).T + (base.bias if base.bias is not None else 0)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_embedding_forward_equals_dense_formula():
    torch.manual_seed(0)
    base = nn.Embedding(20, 6)
    layer, adapter = _dora_layer(base)
    ids = torch.randint(0, 20, (2, 5))
    torch.testing.assert_close(layer(ids), _dense(base.weight.T, adapter).T[ids], atol=1e-5, rtol=1e-5)


def test_fresh_dora_adapter_is_identity(input_ids):
    model = tiny_llama()
    base = logits(model, input_ids)
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules="all-linear", use_dora=True))
    torch.testing.assert_close(logits(model, input_ids), base, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "linear_nobias", "conv1d", "trainable_bias"])
def test_norm_is_detached_and_gradients_match_dense(kind):
    """The hand-written backward against autograd on the dense formula (norm detached), every input."""
    torch.manual_seed(0)
    base = {"linear": lambda: nn.Linear(12, 7), "linear_nobias": lambda: nn.Linear(12, 7, bias=False),
            "conv1d": lambda: Conv1D(7, 12), "trainable_bias": lambda: nn.Linear(12, 7)}[kind]()
    layer, adapter = _dora_layer(base)
    base.weight.requires_grad_(False)
    if base.bias is not None:
        base.bias.requires_grad_(kind == "trainable_bias")
    params = [adapter.lora_A, adapter.lora_B, adapter.dora.magnitude] + ([base.bias] if kind == "trainable_bias" else [])
    x = torch.randn(2, 3, 12, requires_grad=True)
    target = torch.randn(2, 3, 7)
    (layer(x) * target).sum().backward()
    got = [p.grad.clone() for p in [*params, x]]
    for p in [*params, x]:
        p.grad = None
    w = base.weight.T if kind == "conv1d" else base.weight
    v = w + adapter.delta_weight()
    dense = adapter.dora.magnitude.unsqueeze(1) * v / v.norm(dim=1, keepdim=True).detach()
    ((x @ dense.T + (base.bias if base.bias is not None else 0)) * target).sum().backward()
    for g, p in zip(got, [*params, x]):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-5)


def test_dropout_path_matches_peft_algebra():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer, adapter = _dora_layer(base, dropout=0.5)
    layer.train()
    x = torch.randn(3, 12)
    torch.manual_seed(5)
    y = layer(x)
    torch.manual_seed(5)
    dx = adapter.dropout(x)
    v = base.weight + adapter.delta_weight()
    c = adapter.dora.magnitude / v.norm(dim=1)
    expected = base(x) + (c - 1) * (dx @ base.weight.T) + c * (dx @ adapter.delta_weight().T)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_norm_cache_follows_weight_changes():
    torch.manual_seed(0)
    layer, adapter = _dora_layer(nn.Linear(12, 7))
    layer.eval()
    x = torch.randn(3, 12)
    layer(x)
    with torch.no_grad():
        adapter.lora_B.add_(0.5)
    v = layer.base.weight + adapter.delta_weight()
    expected = x @ (adapter.dora.magnitude.unsqueeze(1) * v / v.norm(dim=1, keepdim=True)).T + layer.base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merge_unmerge_round_trip(arch, input_ids):
    model = MODEL_FACTORIES[arch]()
    before_w = {n: p.clone() for n, p in model.state_dict().items()}
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules="all-linear", use_dora=True, init_lora_weights=False))
    for _, w in lora_wrappers(model):
        with torch.no_grad():
            w.active.dora.magnitude.mul_(1.3)
    expected = logits(model, input_ids)
    lorakit.merge(model)
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)
    lorakit.merge(model)  # idempotent
    lorakit.unmerge(model)
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)
    merged = lorakit.merge_and_unload(model)
    torch.testing.assert_close(logits(merged, input_ids), expected, atol=1e-5, rtol=1e-5)
    assert set(merged.state_dict()) == set(before_w)


def test_save_layout_and_round_trip(tmp_path, input_ids):
    import json

    from safetensors.torch import load_file

    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], use_dora=True))
    randomize_lora_b(model)
    expected = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_dora"] is True
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert keys["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"].shape == (32,)
    assert keys["base_model.model.model.embed_tokens.lora_magnitude_vector"].shape == (32,)
    fresh = tiny_llama()
    lorakit.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, input_ids), expected)


def _perturb(model):
    randomize_lora_b(model)
    with torch.no_grad():
        for _, w in lora_wrappers(model):
            w.active.dora.magnitude.mul_(torch.linspace(0.7, 1.4, w.out_features))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lorakit_dora_loads_in_peft(arch, tmp_path, input_ids):
    targets = {"llama": ["q_proj", "v_proj", "down_proj", "embed_tokens"], "gpt2": ["c_attn", "c_fc"]}[arch]
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True))
    _perturb(model)
    lorakit.save_adapter(model, tmp_path)
    theirs = peft_from_pretrained(MODEL_FACTORIES[arch](), tmp_path)
    torch.testing.assert_close(logits(theirs, input_ids), logits(model, input_ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_dora_loads_in_lorakit(arch, tmp_path, input_ids):
    targets = {"llama": ["q_proj", "v_proj", "down_proj", "embed_tokens"], "gpt2": ["c_attn", "c_fc"]}[arch]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(MODEL_FACTORIES[arch](), peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, use_dora=True, init_lora_weights=False)).eval()
        with torch.no_grad():
            for n, p in theirs.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.mul_(1.2)
        theirs.save_pretrained(tmp_path)
        ours = MODEL_FACTORIES[arch]()
        lorakit.load_adapter(ours, tmp_path)
    torch.testing.assert_close(logits(ours, input_ids), logits(theirs, input_ids), atol=1e-5, rtol=1e-5)


def test_training_lowers_loss(input_ids):
    model = tiny_gpt2()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], use_dora=True))
    assert any(p.dim() == 1 for p in model.parameters() if p.requires_grad)  # the magnitudes train
    losses = train_steps(model, input_ids, lr=1e-2)
    assert losses[-1] < losses[0]


def test_route_rejects_dora(input_ids):
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(NotImplementedError):
        with lorakit.route(model, ["default", None, "default"]):
            pass
