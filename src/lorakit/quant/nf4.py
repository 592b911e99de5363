"""4-bit NormalFloat (NF4) weight quantization, as in QLoRA (Dettmers et al., 2023).

A weight (out, in) is flattened and cut into blocks of ``blocksize`` (64) values. Each block is
divided by its absolute maximum and every value is rounded to the nearest of the 16 NF4 levels;
two 4-bit codes are packed into one byte (first value in the high nibble). With double
quantization the per-block fp32 absmax scales are themselves quantized: the mean is subtracted
and the rest stored as int8 codes with one fp32 scale per 256 blocks, so a weight costs about
0.5 + 1/64 + 4/(64·256) ≈ 0.516 bytes per parameter.

`NF4Linear` keeps only the packed codes and scales (buffers, never Parameters) and dequantizes
on the fly; its autograd Function saves the 4-bit data for backward, not a dense weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lorakit.quant.base import QuantizedLinear
from lorakit.quant.scales import dequantize_scales, quantize_scales

#: The 16 NF4 levels (QLoRA paper, appendix E), in ascending order; identical to bitsandbytes'.
NF4_CODEBOOK = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)
_MIDPOINTS = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2
#: Values quantized per step: bounds the temporaries (int64 bucket indices, scaled copies) to
#: ~13 bytes × this, whatever the weight's size (a 7B model's 11008×4096 matrix included).
_CHUNK_VALUES = 1 << 20


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """(n,) uint8 codes in [0, 16), n even -> (n/2,) uint8; the first of each pair is the high nibble."""
    pairs = codes.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """(n/2,) uint8 -> (n,) uint8 codes; inverse of `pack_codes`."""
    return torch.stack((packed >> 4, packed & 0x0F), dim=-1).reshape(-1)


def byte_table(codebook: torch.Tensor = NF4_CODEBOOK) -> torch.Tensor:
    """(256, 2) lookup table: the two codebook values a packed byte stands for."""
    byte = torch.arange(256)
    return torch.stack((codebook[byte >> 4], codebook[byte & 0x0F]), dim=-1)


def _padded_blocks(weight: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Any shape -> (n_blocks, blocksize) fp32, zero-padded at the end."""
    flat = weight.detach().reshape(-1).float()
    pad = -flat.numel() % blocksize
    if pad:
        flat = F.pad(flat, (0, pad))
    return flat.view(-1, blocksize)


def quantize_nf4(
    weight: torch.Tensor, blocksize: int = 64, double_quant: bool = True
) -> dict[str, torch.Tensor]:
    """Quantize a tensor to NF4; returns the buffers `NF4Linear` stores.

    weight: any shape, n elements -> {"weight_packed": (ceil(n/blocksize)·blocksize/2,) uint8,
    and either "absmax": (n_blocks,) fp32 or, with double quantization, "absmax_codes":
    (n_blocks,) int8, "absmax_scale": (ceil(n_blocks/256),) fp32, "absmax_mean": () fp32}.
    With double quantization the values are rounded against the scales as they will be
    dequantized, so the stored codes are the nearest levels for the scale actually used.
    Work is done in chunks of `_CHUNK_VALUES` values, so the temporaries stay small.
    """
    if blocksize % 2:
        raise ValueError(f"blocksize must be even, got {blocksize}")
    blocks = _padded_blocks(weight, blocksize)
    chunks = blocks.split(_CHUNK_VALUES // blocksize)
    absmax = torch.cat([c.abs().amax(dim=1) for c in chunks])
    state: dict[str, torch.Tensor]
    if double_quant:
        state = quantize_scales(absmax)
        absmax = dequantize_scales(**state)
        state = {f"absmax_{k}": v for k, v in state.items()}
    else:
        state = {"absmax": absmax}
    divisor = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    midpoints = _MIDPOINTS.to(blocks.device)
    packed = torch.empty(blocks.numel() // 2, dtype=torch.uint8, device=blocks.device)
    start = 0
    for chunk, div in zip(chunks, divisor.split(_CHUNK_VALUES // blocksize)):
        codes = torch.bucketize(chunk / div[:, None], midpoints).to(torch.uint8)
        packed[start: start + chunk.numel() // 2] = pack_codes(codes.reshape(-1))
        start += chunk.numel() // 2
    state["weight_packed"] = packed
    return state


#: element size -> integer dtype twice as wide, to gather a byte's two values as one element.
_PAIR_DTYPES = {1: torch.int16, 2: torch.int32, 4: torch.int64}


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...],
    table: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(n_blocks·blocksize/2,) uint8 codes, (n_blocks,) scales -> `shape` tensor of `dtype`.

    Each byte indexes the (256, 2) `byte_table`, read as (256,) elements of twice the width so
    one 1-D `index_select` yields both values; then one in-place broadcast multiply by the
    block scales. No unpacked codes or other weight-sized temporaries.
    """
    pairs = table.to(dtype)
    wide = _PAIR_DTYPES.get(pairs.element_size())
    index = packed.long()
    if wide is None:
        values = pairs.index_select(0, index)
    else:
        values = pairs.view(wide).view(-1).index_select(0, index).view(dtype)
    values = values.view(absmax.numel(), -1)  # (n_blocks, blocksize)
    values.mul_(absmax.to(dtype)[:, None])
    numel = 1
    for size in shape:
        numel *= size
    return values.view(-1)[:numel].view(shape)


class _NF4Matmul(torch.autograd.Function):
    """y = x Wᵀ with W held as NF4; saves only the packed codes and scales for backward."""

    @staticmethod
    def forward(ctx, x, packed, absmax, table, shape):
        weight = dequantize_nf4(packed, absmax, shape, table, x.dtype)
        ctx.save_for_backward(packed, absmax, table)
        ctx.shape = shape
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        packed, absmax, table = ctx.saved_tensors
        weight = dequantize_nf4(packed, absmax, ctx.shape, table, grad_out.dtype)
        return grad_out @ weight, None, None, None, None


class NF4Linear(QuantizedLinear):
    """Frozen linear layer with an NF4 weight (blocks of `blocksize`, scales optionally
    double-quantized): (..., in) -> (..., out)."""

    OPTIONS = ("double_quant", "blocksize")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, double_quant: bool = True,
                 blocksize: int = 64, compute_dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        self.blocksize = blocksize
        self.double_quant = double_quant
        n_blocks = -(in_features * out_features // -blocksize)
        self.register_buffer(
            "weight_packed", torch.zeros(n_blocks * blocksize // 2, dtype=torch.uint8, device=device)
        )
        if double_quant:
            self.register_buffer("absmax_codes", torch.zeros(n_blocks, dtype=torch.int8, device=device))
            self.register_buffer("absmax_scale", torch.zeros(-(n_blocks // -256), device=device))
            self.register_buffer("absmax_mean", torch.zeros((), device=device))
        else:
            self.register_buffer("absmax", torch.zeros(n_blocks, device=device))
        self.register_buffer("table", byte_table().to(device), persistent=False)

    def quantize_weight(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        return quantize_nf4(weight, self.blocksize, self.double_quant)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        return _NF4Matmul.apply(x, self.weight_packed, self.block_scales(), self.table, shape)

    def block_scales(self) -> torch.Tensor:
        """(n_blocks,) fp32 absmax per block (undoing the double quantization if used)."""
        if self.double_quant:
            return dequantize_scales(self.absmax_codes, self.absmax_scale, self.absmax_mean)
        return self.absmax

    def dequantize(self) -> torch.Tensor:
        """The dense weight (out, in) in `compute_dtype`."""
        return dequantize_nf4(
            self.weight_packed, self.block_scales(), (self.out_features, self.in_features),
            self.table, self.compute_dtype,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, blocksize={self.blocksize}, "
            f"double_quant={self.double_quant}, compute_dtype={self.compute_dtype}"
        )
