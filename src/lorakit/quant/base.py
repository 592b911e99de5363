"""What the weight-only quantized linears share; each format adds only its own storage and matmul.

A format (`NF4Linear`, `Int8Linear`) subclasses `QuantizedLinear` and supplies:
- its buffers, registered in `__init__` (the plain constructor builds an empty skeleton of the
  right shapes, for `load_state_dict`);
- `OPTIONS`: the format options its constructor takes (e.g. NF4's `blocksize`);
- `quantize_weight(weight)`: a dense (out, in) weight → {buffer name: tensor};
- `matmul(x)`: x @ Wᵀ from the quantized data, x already in `compute_dtype`;
- `dequantize()`: the dense (out, in) weight in `compute_dtype`.
"""
from __future__ import annotations

import torch
from torch import nn


class QuantizedLinear(nn.Module):
    """Frozen linear layer whose weight lives quantized in buffers: (..., in) -> (..., out).

    The input is cast to `compute_dtype` for the matmul and the output back to the input's dtype.
    """

    OPTIONS: tuple[str, ...] = ()

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 compute_dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device), requires_grad=False)
                     if bias else None)

    # ---- what a format supplies ----------------------------------------------------------
    def quantize_weight(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    # ---- shared ----------------------------------------------------------------------------
    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    compute_dtype: torch.dtype | None = None, **options) -> "QuantizedLinear":
        """Quantize a dense (out, in) weight (e.g. a merged one); the compute dtype defaults to its dtype.

        `options` go to the format's constructor; those only another format takes (NF4's
        `blocksize` for int8) are ignored, so one call site serves every format; others are an error.
        """
        known = {o for fmt in QuantizedLinear.__subclasses__() for o in fmt.OPTIONS}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_weight: unknown option(s) {unknown}; formats take {sorted(known)}")
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, bias=bias is not None, compute_dtype=compute_dtype or weight.dtype,
                     device=weight.device, **{k: v for k, v in options.items() if k in cls.OPTIONS})
        module.set_weight(weight)
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        return module

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options) -> "QuantizedLinear":
        """Quantize an `nn.Linear` (weight and bias)."""
        return cls.from_weight(linear.weight, linear.bias, **options)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a dense (out, in) weight into this module's buffers (an in-place merge uses it; lossy)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight shape {tuple(weight.shape)} != {(self.out_features, self.in_features)}")
        for name, tensor in self.quantize_weight(weight.detach().to(self.device)).items():
            getattr(self, name).copy_(tensor)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype `dequantize()` returns and the matmul runs in (alias of `compute_dtype`)."""
        return self.compute_dtype

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    def nbytes(self) -> int:
        """Bytes of the quantized weight and its scales as saved (bias and lookup tables excluded)."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers()
                   if n not in self._non_persistent_buffers_set)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x.to(self.compute_dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)
