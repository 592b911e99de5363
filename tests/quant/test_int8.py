import pytest
import torch
from torch import nn

from lorakit.quant.int8 import Int8Linear, quantize_int8


def test_codes_and_per_channel_scales():
    torch.manual_seed(0)
    weight = torch.randn(16, 32)
    state = quantize_int8(weight)
    assert state["weight_int8"].dtype == torch.int8 and state["weight_scale"].shape == (16,)
    assert torch.equal(state["weight_int8"].abs().amax(dim=1), torch.full((16,), 127, dtype=torch.int8))
    dense = Int8Linear.from_weight(weight).dequantize()
    assert ((dense - weight).abs() <= state["weight_scale"][:, None] / 2 + 1e-7).all()


def test_zero_rows_stay_zero():
    weight = torch.zeros(4, 8)
    assert torch.equal(Int8Linear.from_weight(weight).dequantize(), weight)


def test_keeps_only_buffers_and_about_one_byte_per_param():
    module = Int8Linear.from_linear(nn.Linear(256, 128))
    assert [n for n, _ in module.named_parameters()] == ["bias"]
    assert module.nbytes() / (256 * 128) == pytest.approx(1 + 4 / 256)
    assert (module.in_features, module.out_features, module.weight_dtype) == (256, 128, torch.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_input_grad_equal_dense_with_dequantized_weight(bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 80, bias=bias)
    module = Int8Linear.from_linear(linear)
    x = torch.randn(3, 7, 96, requires_grad=True)
    y = module(x)
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    x_ref = x.detach().requires_grad_(True)
    y_ref = nn.functional.linear(x_ref, module.dequantize(), linear.bias.detach() if bias else None)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, grad)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, linear(x), atol=0.02, rtol=0.02)


def test_autograd_saves_no_full_precision_weight():
    module = Int8Linear.from_linear(nn.Linear(256, 192))
    x = torch.randn(4, 256, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = module(x)
    y.sum().backward()
    assert x.grad is not None
    for tensor in saved:
        assert not (tensor.is_floating_point() and tensor.numel() >= 256 * 192), tensor.shape
    assert any(t.dtype == torch.int8 for t in saved)


def test_state_dict_round_trips_into_a_skeleton():
    torch.manual_seed(0)
    module = Int8Linear.from_linear(nn.Linear(64, 48))
    skeleton = Int8Linear(64, 48)
    skeleton.load_state_dict(module.state_dict())
    x = torch.randn(5, 64)
    assert torch.equal(skeleton(x), module(x))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    linear = nn.Linear(576, 192)
    cpu = Int8Linear.from_linear(linear)
    cuda = Int8Linear.from_linear(linear.cuda())
    assert torch.equal(cuda.weight_int8.cpu(), cpu.weight_int8)
    x = torch.randn(4, 576)
    torch.testing.assert_close(cuda(x.cuda()).cpu(), cpu(x), atol=1e-4, rtol=1e-4)


def test_other_formats_options_are_ignored_and_typos_rejected():
    weight = torch.randn(8, 16)
    Int8Linear.from_weight(weight, blocksize=64, double_quant=False)  # NF4's options: ignored
    with pytest.raises(TypeError, match="blocksiz"):
        Int8Linear.from_weight(weight, blocksiz=64)
