"""Weight-only int8 quantization with one absmax scale per output channel.

W (out, in) ≈ codes (out, in) int8 · scale (out, 1), codes = round(127 · W / absmax_row).
Because the scale is per output row it factors out of the matmul: y = (x codesᵀ) · scale, so
neither forward nor backward needs a scaled dense weight, and backward saves only the int8 codes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def quantize_int8(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """(out, in) -> {"weight_int8": (out, in) int8, "weight_scale": (out,) fp32}."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1) / 127
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.round(weight / divisor[:, None]).clamp_(-127, 127).to(torch.int8)
    return {"weight_int8": codes, "weight_scale": scale}


class _Int8Matmul(torch.autograd.Function):
    """y = (x codesᵀ) · scale; saves only the int8 codes and the (out,) scales for backward."""

    @staticmethod
    def forward(ctx, x, codes, scale):
        ctx.save_for_backward(codes, scale)
        return F.linear(x, codes.to(x.dtype)) * scale.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        codes, scale = ctx.saved_tensors
        return (grad_out * scale.to(grad_out.dtype)) @ codes.to(grad_out.dtype), None, None


class Int8Linear(nn.Module):
    """Frozen linear layer with an int8 weight and per-output-channel scales: (..., in) -> (..., out).

    Same contract as `NF4Linear`: `from_linear`, `from_weight`, `dequantize()`, buffers only,
    input cast to `compute_dtype` and output cast back to the input's dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, device=device))
        self.bias = (
            nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device), requires_grad=False)
            if bias
            else None
        )

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        compute_dtype: torch.dtype | None = None,
        **_: object,
    ) -> "Int8Linear":
        """Quantize a dense (out, in) weight; NF4-only options (double_quant, blocksize) are ignored."""
        out_features, in_features = weight.shape
        module = cls(
            in_features, out_features, bias=bias is not None,
            compute_dtype=compute_dtype or weight.dtype, device=weight.device,
        )
        for name, tensor in quantize_int8(weight).items():
            getattr(module, name).copy_(tensor)
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        return module

    @classmethod
    def from_linear(cls, linear: nn.Linear, **_: object) -> "Int8Linear":
        """Quantize an `nn.Linear`; NF4-only options (double_quant, blocksize) are ignored."""
        return cls.from_weight(linear.weight, linear.bias)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Re-quantize a new dense (out, in) weight in place (used by an in-place merge; lossy)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight shape {tuple(weight.shape)} != {(self.out_features, self.in_features)}")
        for name, tensor in quantize_int8(weight.to(self.device)).items():
            getattr(self, name).copy_(tensor)

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.compute_dtype

    @property
    def device(self) -> torch.device:
        return self.weight_int8.device

    def dequantize(self) -> torch.Tensor:
        """The dense weight (out, in) in `compute_dtype`."""
        dtype = self.compute_dtype
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def nbytes(self) -> int:
        """Bytes held by the int8 weight and its scales (bias excluded)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Int8Matmul.apply(x.to(self.compute_dtype), self.weight_int8, self.weight_scale)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}"
        )
