import torch

from lorakit.quant.scales import SCALE_BLOCKSIZE, dequantize_scales, quantize_scales


def test_round_trip_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    scales = torch.rand(1000) * 0.1 + 0.02  # 3 full blocks of 256 and a partial one
    state = quantize_scales(scales)
    assert state["codes"].dtype == torch.int8 and state["codes"].shape == (1000,)
    assert state["scale"].shape == (-(1000 // -SCALE_BLOCKSIZE),) and state["mean"].shape == ()
    error = (dequantize_scales(**state) - scales).abs()
    per_value = state["scale"].repeat_interleave(SCALE_BLOCKSIZE)[:1000]
    assert (error <= per_value / 2 + 1e-7).all()


def test_constant_scales_are_exact():
    scales = torch.full((300,), 0.25)
    assert torch.equal(dequantize_scales(**quantize_scales(scales)), scales)
