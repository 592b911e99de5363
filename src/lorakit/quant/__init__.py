"""Weight-only quantization of linear layers: NF4 (QLoRA) and int8.

`quantize(model)` swaps `nn.Linear` modules for frozen quantized ones in place; the LoRA
wrappers then wrap those like any base layer (they need `in_features`, `out_features`,
`forward` and, for merging, `dequantize()` / `set_weight()`). `dequantize(model)` is the inverse.
`quant.load` quantizes while a checkpoint is read, so the full-precision model never exists.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from lorakit.quant.base import QuantizedLinear
from lorakit.quant.int8 import Int8Linear
from lorakit.quant.nf4 import NF4_CODEBOOK, NF4Linear, dequantize_nf4, quantize_nf4
from ..errors import InputError

#: method name -> quantized linear class (a `QuantizedLinear`: `from_linear(linear, **format options)`).
QUANTIZED_LINEARS: dict[str, type[QuantizedLinear]] = {"nf4": NF4Linear, "int8": Int8Linear}
QUANTIZED_TYPES = tuple(QUANTIZED_LINEARS.values())


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def quantize(
    model: nn.Module,
    method: str = "nf4",
    double_quant: bool = True,
    skip: Iterable[str] | None = None,
    blocksize: int = 64,
) -> list[str]:
    """Replace the `nn.Linear` modules of `model` in place; returns the replaced module names.

    The output head (`model.get_output_embeddings()`) and embeddings are never quantized, nor
    any module whose name equals an entry of `skip` or ends with "." + that entry.
    `double_quant` and `blocksize` apply to NF4; int8 uses per-output-channel scales.
    """
    cls = quantized_linear_class(method)
    if not isinstance(model, nn.Module):
        raise InputError(f"quantize: model must be a torch.nn.Module, got {type(model).__name__}")
    targets = quantizable_linears(model, skip)
    if not targets:
        raise InputError(f"quantize: no nn.Linear layer to quantize in {type(model).__name__} (the output head "
                         "and embeddings are never quantized)")
    for name, module in targets.items():
        _set_submodule(model, name, cls.from_linear(module, double_quant=double_quant, blocksize=blocksize))
    return list(targets)


def quantized_linear_class(method: str) -> type[nn.Module]:
    if method not in QUANTIZED_LINEARS:
        raise InputError(f"unknown quantization method {method!r}; valid: {sorted(QUANTIZED_LINEARS)}")
    return QUANTIZED_LINEARS[method]


def quantizable_linears(model: nn.Module, skip: Iterable[str] | None = None) -> dict[str, nn.Linear]:
    """The `nn.Linear` modules `quantize` replaces, by name (works on a model built on the meta device)."""
    skip = list(skip or ())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and not _matches(name, skip)
    }


def dequantize(model: nn.Module, dtype: torch.dtype | None = None) -> list[str]:
    """The inverse of `quantize`: every quantized linear becomes an `nn.Linear` holding its dequantized
    weight (in `dtype`, default the module's compute dtype); returns the replaced module names."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES)]
    for name, module in targets:
        _set_submodule(model, name, to_linear(module, dtype))
    return [name for name, _ in targets]


def to_linear(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Linear:
    """A frozen `nn.Linear` with the dequantized weight (and the bias) of a quantized linear."""
    weight = module.dequantize().to(dtype or module.compute_dtype)
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach().to(weight.dtype).clone(), requires_grad=False)
    return linear


def quant_spec(model: nn.Module) -> dict | None:
    """How `model`'s linears were quantized: {"method", "double_quant", "blocksize", "compute_dtype"}
    of the first quantized linear found, or None when there is none."""
    methods = {cls: name for name, cls in QUANTIZED_LINEARS.items()}
    for module in model.modules():
        if isinstance(module, QUANTIZED_TYPES):
            return {
                "method": methods[type(module)],
                "double_quant": getattr(module, "double_quant", True),
                "blocksize": getattr(module, "blocksize", 64),
                "compute_dtype": str(module.compute_dtype).removeprefix("torch."),
            }
    return None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantized_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes held by quantized weights and their scales, number of quantized weight parameters)."""
    nbytes = params = 0
    for module in model.modules():
        if isinstance(module, QUANTIZED_TYPES):
            nbytes += module.nbytes()
            params += module.in_features * module.out_features
    return nbytes, params


def bytes_per_param(model: nn.Module) -> float:
    """Average bytes per quantized weight parameter, scales included (NF4 + double quant ≈ 0.516)."""
    nbytes, params = quantized_bytes(model)
    return nbytes / params if params else 0.0


__all__ = [
    "NF4_CODEBOOK", "NF4Linear", "Int8Linear", "QuantizedLinear", "QUANTIZED_LINEARS", "QUANTIZED_TYPES", "quantize",
    "dequantize",
    "quantizable_linears", "quantized_linear_class", "quant_spec", "to_linear", "quantized_bytes",
    "bytes_per_param", "quantize_nf4", "dequantize_nf4",
]
