"""Prepacked CPU linear weights (serve/packed.py): same outputs as F.linear, repacked when a weight
changes, plain path for gradients and long inputs, module types and state-dict keys untouched."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lorakit
from helpers import randomize_lora_b, tiny_llama
from lorakit.serve import packed
from lorakit.serve.packed import MAX_ROWS, pack_linears, unpack_linears

pytestmark = pytest.mark.skipif(not packed.available(), reason="oneDNN (mkldnn) is not available in this torch")


@pytest.mark.parametrize("shape", [(1, 24), (3, 24), (2, 4, 24), (MAX_ROWS, 24), (MAX_ROWS + 1, 24), (0, 24)])
def test_packed_forward_matches_f_linear(shape):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    x = torch.randn(shape)
    want = F.linear(x, layer.weight, layer.bias)
    assert pack_linears(layer) == 1
    with torch.no_grad():
        got = layer(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_weight_changed_in_place_is_repacked():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    pack_linears(layer)
    x = torch.randn(4, 16)
    with torch.no_grad():
        layer(x)
        layer.weight.mul_(-2.0)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


def test_merging_an_adapter_into_a_packed_base_is_seen():
    torch.manual_seed(0)
    model = tiny_llama().eval()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    randomize_lora_b(model, std=0.5)
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        pack_linears(model)
        model(input_ids=ids)  # packs the base weights as they are before the merge
        lorakit.merge(model)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)


def test_gradients_take_the_plain_path():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    pack_linears(layer)
    y = layer(torch.randn(4, 16))
    assert y.grad_fn is not None
    y.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_models_keep_types_keys_and_outputs():
    torch.manual_seed(0)
    model = tiny_llama().eval()
    keys = list(model.state_dict())
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        n = pack_linears(model)
        assert n == sum(type(m) is nn.Linear for m in model.modules())
        assert pack_linears(model) == 0  # already packed
        got = model(input_ids=ids[:, :1]).logits, model(input_ids=ids).logits
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(got[0], want[:, :1], rtol=1e-4, atol=1e-5)  # one token per row: 2 rows
    torch.testing.assert_close(got[1], want, rtol=1e-4, atol=1e-5)
    unpack_linears(model)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_half_precision_weights_are_left_alone():
    layer = nn.Linear(8, 8).to(torch.bfloat16)
    assert pack_linears(layer) == 0
