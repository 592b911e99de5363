"""VeRA: shared frozen projections, per-layer vectors; dense formula, merges, peft's file format both ways."""
import json
import warnings

import pytest
import torch

import lorakit
from helpers import MODEL_FACTORIES, peft_from_pretrained, tiny_gpt2, tiny_llama
from helpers import logits, train_steps
from lorakit.tuners.lora import lora_wrappers
from lorakit.tuners.vera import VeraAdapter

peft = pytest.importorskip("peft")
TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, w in lora_wrappers(model):
            for a in w.adapters.values():
                a.vera_lambda_b.copy_(torch.randn(a.vera_lambda_b.shape, generator=g))
                a.vera_lambda_d.copy_(torch.randn(a.vera_lambda_d.shape, generator=g))


def _vera(arch, **kw):
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, lorakit.VeraConfig(r=4, target_modules=TARGETS[arch], **kw))
    return model


def test_fresh_adapter_is_identity_and_projection_is_shared(input_ids):
    model = tiny_llama()
    expected = logits(model, input_ids)
    lorakit.inject(model, lorakit.VeraConfig(r=4, target_modules=TARGETS["llama"]))
    torch.testing.assert_close(logits(model, input_ids), expected)
    adapters = [w.adapters["default"] for _, w in lora_wrappers(model)]
    assert all(isinstance(a, VeraAdapter) for a in adapters)
    assert len({id(a.projection) for a in adapters}) == 1
    assert adapters[0].projection.vera_A.shape == (4, 64) and adapters[0].projection.vera_B.shape == (32, 4)
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vera_lambda_b", "vera_lambda_d"}


def test_forward_equals_dense_formula():
    model = _vera("llama")
    _randomize(model)
    layer = model.model.layers[0].self_attn.v_proj  # (16, 32): sliced projections
    a = layer.adapters["default"]
    pa, pb = a.projection.vera_A[:, :32], a.projection.vera_B[:16]
    dw = torch.diag(a.vera_lambda_b) @ pb @ torch.diag(a.vera_lambda_d) @ pa
    torch.testing.assert_close(a.delta_weight(), dw)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(layer(x), x @ (layer.base.weight + dw).T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merge_unmerge_round_trip(arch, input_ids):
    model = _vera(arch)
    _randomize(model)
    expected = logits(model, input_ids)
    lorakit.merge(model)
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)
    lorakit.unmerge(model)
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-5)
    merged = lorakit.merge_and_unload(model)
    torch.testing.assert_close(logits(merged, input_ids), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("save_projection", [True, False])
def test_save_layout_and_round_trip(save_projection, tmp_path, input_ids):
    from safetensors.torch import load_file

    model = _vera("llama", save_projection=save_projection, projection_prng_key=7)
    _randomize(model)
    expected = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "VERA" and cfg["projection_prng_key"] == 7
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert keys["base_model.model.model.layers.0.self_attn.q_proj.vera_lambda_b"].shape == (32,)
    assert keys["base_model.model.model.layers.0.self_attn.q_proj.vera_lambda_d"].shape == (4,)
    assert ("base_model.vera_A" in keys) == save_projection
    fresh = tiny_llama()
    lorakit.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, input_ids), expected)


@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lorakit_vera_loads_in_peft(arch, save_projection, tmp_path, input_ids):
    model = _vera(arch, save_projection=save_projection, projection_prng_key=3)
    _randomize(model)
    lorakit.save_adapter(model, tmp_path)
    theirs = peft_from_pretrained(MODEL_FACTORIES[arch](), tmp_path)
    torch.testing.assert_close(logits(theirs, input_ids), logits(model, input_ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("save_projection", [True, False])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_vera_loads_in_lorakit(arch, save_projection, tmp_path, input_ids):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(MODEL_FACTORIES[arch](), peft.VeraConfig(
            r=4, target_modules=TARGETS[arch], init_weights=False, save_projection=save_projection,
            projection_prng_key=5)).eval()
        theirs.save_pretrained(tmp_path)
        ours = MODEL_FACTORIES[arch]()
        lorakit.load_adapter(ours, tmp_path)
    torch.testing.assert_close(logits(ours, input_ids), logits(theirs, input_ids), atol=1e-5, rtol=1e-5)


def test_training_lowers_loss(input_ids):
    model = tiny_gpt2()
    lorakit.inject(model, lorakit.VeraConfig(r=8, target_modules=TARGETS["gpt2"]))
    losses = train_steps(model, input_ids, lr=5e-2)
    assert losses[-1] < losses[0]
