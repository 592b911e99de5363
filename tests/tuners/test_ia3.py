"""IA³: the scaling formulas, merging, the default targets, save/load and peft interop both ways."""
import json
import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import lorakit
from lorakit.errors import InputError
from helpers import MODEL_FACTORIES, logits, peft_from_pretrained, tiny_llama, train_steps
from lorakit.tuners.ia3 import IA3Adapter
from lorakit.tuners.layers import AdaptedLinear, layer_wrappers

peft = pytest.importorskip("peft")
TARGETS = {"llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
           "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
           "bert": (["key", "value", "output.dense"], ["output.dense"])}


def _layer(base, feedforward):
    layer = AdaptedLinear(base)
    layer.add("default", IA3Adapter(layer.in_features, layer.out_features, feedforward, init=False))
    layer.set_active("default")
    return layer, layer.adapters["default"]


@pytest.mark.parametrize("feedforward", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_equals_dense_formula(kind, feedforward):
    torch.manual_seed(0)
    base = nn.Linear(12, 7) if kind == "linear" else Conv1D(7, 12)
    layer, adapter = _layer(base, feedforward)
    w = base.weight.T if kind == "conv1d" else base.weight  # (out, in)
    l = adapter.ia3_l.detach().view(-1)
    x = torch.randn(2, 5, 12)
    expected = (x * l) @ w.T + base.bias if feedforward else (x @ w.T + base.bias) * l
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert adapter.ia3_l.shape == ((1, 12) if feedforward else (7, 1))  # peft's shapes


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_defaults_fresh_identity_and_merge_round_trip(arch, input_ids):
    model = MODEL_FACTORIES[arch]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = logits(model, input_ids)
    names = lorakit.inject(model, lorakit.IA3Config())  # the architecture's targets and feed-forward modules
    targets, feedforward = TARGETS[arch]
    assert names and all(any(n == t or n.endswith("." + t) for t in targets) for n in names)
    ff = {n for n, w in layer_wrappers(model) if w.active.scales_input}
    assert ff and all(any(n.endswith("." + t) for t in feedforward) for n in ff)
    torch.testing.assert_close(logits(model, input_ids), base)
    with torch.no_grad():
        for _, w in layer_wrappers(model):
            w.active.ia3_l.normal_(1.0, 0.3)
    expected = logits(model, input_ids)
    assert not torch.allclose(expected, base, atol=1e-4)
    lorakit.merge(model)
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-4)
    lorakit.unmerge(model)
    torch.testing.assert_close(logits(model, input_ids), expected, atol=1e-5, rtol=1e-4)
    plain = lorakit.merge_and_unload(model)
    torch.testing.assert_close(logits(plain, input_ids), expected, atol=1e-5, rtol=1e-4)
    assert set(plain.state_dict()) == set(before)


def test_only_vectors_train_and_a_few_steps_lower_the_loss(input_ids):
    model = tiny_llama()
    lorakit.inject(model, lorakit.IA3Config())
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"ia3_l"}
    losses = train_steps(model, input_ids, lr=5e-2)
    assert losses[-1] < losses[0]


def test_config_checks():
    with pytest.raises(ValueError, match="not in target_modules"):
        lorakit.IA3Config(target_modules=["k_proj"], feedforward_modules=["down_proj"])
    with pytest.raises(InputError, match="embeddings"):
        lorakit.inject(tiny_llama(), lorakit.IA3Config(target_modules=["embed_tokens"]))
    model = tiny_llama()
    with pytest.raises(InputError, match="feedforward_modules entries matched none of the targets: down_projj"):
        lorakit.inject(model, lorakit.IA3Config(feedforward_modules=["down_projj"]))
    assert not any(p.requires_grad is False for p in model.parameters())  # a failed inject leaves the model as it was


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_lorakit_ia3_loads_in_peft_and_back(arch, tmp_path, input_ids):
    model = MODEL_FACTORIES[arch]()
    head = ["classifier"] if arch == "bert" else None  # peft expects a classifier's head in SEQ_CLS files
    lorakit.inject(model, lorakit.IA3Config(init_ia3_weights=False, modules_to_save=head))
    ours = logits(model, input_ids)
    lorakit.save_adapter(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "IA3" and set(saved["feedforward_modules"]) <= set(saved["target_modules"])
    theirs = peft_from_pretrained(MODEL_FACTORIES[arch](), tmp_path)
    torch.testing.assert_close(logits(theirs, input_ids), ours, atol=1e-5, rtol=1e-5)
    fresh = MODEL_FACTORIES[arch]()
    lorakit.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, input_ids), ours)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_peft_ia3_loads_in_lorakit(arch, tmp_path, input_ids):
    targets, feedforward = TARGETS[arch]
    with warnings.catch_warnings(action="ignore"):
        theirs = peft.get_peft_model(MODEL_FACTORIES[arch](), peft.IA3Config(
            target_modules=targets, feedforward_modules=feedforward, init_ia3_weights=False)).eval()
    theirs.save_pretrained(tmp_path)
    model = MODEL_FACTORIES[arch]()
    lorakit.load_adapter(model, tmp_path)
    torch.testing.assert_close(logits(model, input_ids), logits(theirs, input_ids), atol=1e-5, rtol=1e-5)
