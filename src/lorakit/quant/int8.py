"""Weight-only int8 quantization with one absmax scale per output channel.

W (out, in) ≈ codes (out, in) int8 · scale (out, 1), codes = round(127 · W / absmax_row).
Because the scale is per output row it factors out of the matmul: y = (x codesᵀ) · scale, so
neither forward nor backward needs a scaled dense weight, and backward saves only the int8 codes.

Two kernels compute that matmul (`Int8Linear.use_kernel`):
- "dequant" (default): converts the codes to the input's dtype and runs a float matmul; exact
  for the int8 weights, differentiable (QLoRA-style training over an int8 base uses it).
- "fbgemm": torch.ao's dynamic int8 kernel (`quantized::linear_dynamic`): the activations are
  quantized to 8 bits per call too and the product runs in integer arithmetic. Faster on x86 CPUs
  for inference (see benchmarks/compression.py), a little less exact, inference only: a call that
  needs gradients falls back to "dequant". The packed copy of the weight is built once, on switching.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .base import QuantizedLinear


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


class Int8Linear(QuantizedLinear):
    """Frozen linear layer with an int8 weight and per-output-channel scales: (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 compute_dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__(in_features, out_features, bias, compute_dtype, device)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, device=device))

    def quantize_weight(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        return quantize_int8(weight)

    KERNELS = ("dequant", "fbgemm")

    def use_kernel(self, kernel: str) -> "Int8Linear":
        """Select the matmul kernel ("dequant" or "fbgemm", see the module docstring); returns self."""
        if kernel not in self.KERNELS:
            raise ValueError(f"int8 kernel {kernel!r}: expected one of {self.KERNELS}")
        self.__dict__["_packed"] = self._pack() if kernel == "fbgemm" else None
        return self

    @property
    def kernel(self) -> str:
        return "dequant" if self.__dict__.get("_packed") is None else "fbgemm"

    def _pack(self):
        scale = torch.where(self.weight_scale == 0, torch.ones_like(self.weight_scale), self.weight_scale)
        with warnings.catch_warnings():  # torch.ao's quantized tensors are deprecated in favour of torchao
            warnings.simplefilter("ignore")
            q = torch._make_per_channel_quantized_tensor(
                self.weight_int8.cpu(), scale.double().cpu(), torch.zeros_like(scale, dtype=torch.long).cpu(), 0)
            return torch.ops.quantized.linear_prepack(q, None)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.__dict__.get("_packed")
        if packed is not None and x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad):
            return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)
        return _Int8Matmul.apply(x, self.weight_int8, self.weight_scale)

    def set_weight(self, weight: torch.Tensor) -> None:
        super().set_weight(weight)
        if self.__dict__.get("_packed") is not None:  # new codes: repack
            self.use_kernel("fbgemm")

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        if self.__dict__.get("_packed") is not None:
            self.use_kernel("fbgemm")

    def dequantize(self) -> torch.Tensor:
        """The dense weight (out, in) in `compute_dtype`."""
        dtype = self.compute_dtype
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}, kernel={self.kernel}"
        )
