"""Weight-only quantization of linear layers: NF4 (QLoRA) and int8.

`quantize(model)` swaps `nn.Linear` modules for frozen quantized ones in place; the LoRA
wrappers then wrap those like any base layer (they need `in_features`, `out_features`,
`forward` and, for merging, `dequantize()`).
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

from lorakit.quant.int8 import Int8Linear
from lorakit.quant.nf4 import NF4_CODEBOOK, NF4Linear, dequantize_nf4, quantize_nf4

#: method name -> quantized linear class; each has `from_linear(linear, double_quant=, blocksize=)`.
QUANTIZED_LINEARS: dict[str, type[nn.Module]] = {"nf4": NF4Linear, "int8": Int8Linear}
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
    if method not in QUANTIZED_LINEARS:
        raise ValueError(f"unknown quantization method {method!r}; valid: {sorted(QUANTIZED_LINEARS)}")
    cls = QUANTIZED_LINEARS[method]
    skip = list(skip or ())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and not _matches(name, skip)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, cls.from_linear(module, double_quant=double_quant, blocksize=blocksize))
    return [name for name, _ in targets]


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
    "NF4_CODEBOOK", "NF4Linear", "Int8Linear", "QUANTIZED_LINEARS", "quantize", "quantized_bytes",
    "bytes_per_param", "quantize_nf4", "dequantize_nf4",
]
