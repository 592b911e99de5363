import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit.tuners.lora import LoraAdapter, LoraEmbedding, LoraLinear


def _layer(base, r=4, alpha=8.0, rslora=False, name="default"):
    layer = LoraLinear(base) if not isinstance(base, nn.Embedding) else LoraEmbedding(base)
    layer.add(name, LoraAdapter(layer.in_features, layer.out_features, r, alpha, use_rslora=rslora, init=False))
    layer.set_active(name)
    return layer


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Linear(12, 7)


def test_fresh_adapter_is_identity(linear):
    layer = LoraLinear(linear)
    layer.add("default", LoraAdapter(12, 7, r=4, alpha=8))
    layer.set_active("default")
    x = torch.randn(2, 5, 12)
    assert torch.equal(layer(x), linear(x))


@pytest.mark.parametrize("rslora", [False, True])
def test_linear_forward_equals_dense_formula(linear, rslora):
    layer = _layer(linear, r=4, alpha=8.0, rslora=rslora)
    a = layer.adapters["default"]
    scaling = 8.0 / math.sqrt(4) if rslora else 8.0 / 4
    assert a.scaling == scaling
    x = torch.randn(2, 5, 12)
    expected = x @ (linear.weight + scaling * a.lora_B @ a.lora_A).T + linear.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.delta_weight(), scaling * a.lora_B @ a.lora_A)


def test_conv1d_forward_and_merge_use_transposed_weight():
    torch.manual_seed(0)
    base = Conv1D(7, 12)  # weight (in=12, out=7)
    layer = _layer(base)
    x = torch.randn(2, 3, 12)
    expected = x @ (base.weight + layer.adapters["default"].delta_weight().T) + base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=1e-5)


def test_embedding_forward_equals_dense_formula():
    torch.manual_seed(0)
    base = nn.Embedding(20, 6)
    layer = _layer(base)
    ids = torch.randint(0, 20, (2, 5))
    dense = base.weight + layer.adapters["default"].delta_weight().T
    torch.testing.assert_close(layer(ids), dense[ids], atol=1e-5, rtol=1e-5)


def test_merge_unmerge_round_trip_and_idempotent(linear):
    layer = _layer(linear)
    w0 = linear.weight.detach().clone()
    x = torch.randn(4, 12)
    y = layer(x)
    layer.merge()
    layer.merge()  # second merge is a no-op
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(linear.weight, w0 + layer.adapters["default"].delta_weight(), atol=1e-6, rtol=0)
    layer.unmerge()
    layer.unmerge()
    torch.testing.assert_close(linear.weight, w0, atol=1e-6, rtol=0)


def test_safe_merge_rejects_non_finite(linear):
    layer = _layer(linear)
    with torch.no_grad():
        layer.adapters["default"].lora_B[0, 0] = float("inf")
    w0 = linear.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge(safe=True)
    assert torch.equal(linear.weight, w0) and layer.merged is None


def test_merge_casts_back_to_base_dtype():
    base = nn.Linear(8, 8).to(torch.bfloat16)
    layer = _layer(base)
    layer.adapters["default"].to(torch.float32)
    layer.merge()
    assert base.weight.dtype == torch.bfloat16


def test_gaussian_init_is_identity_and_false_init_is_not(linear):
    x = torch.randn(3, 12)
    for init, identity in (("gaussian", True), (False, False)):
        layer = LoraLinear(linear)
        layer.add("a", LoraAdapter(12, 7, 4, 8, init=init))
        layer.set_active("a")
        assert torch.equal(layer(x), linear(x)) is identity


def test_switching_while_merged_is_refused(linear):
    layer = _layer(linear)
    layer.add("other", LoraAdapter(12, 7, 2, 2))
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.set_active("other")
