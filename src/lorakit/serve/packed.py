"""Base linear weights prepacked for CPU decoding (`lorakit serve --cpu-weights packed`, the default on CPU).

A decode step multiplies a few rows (one token per running request) by every weight matrix of the
model. For a few rows the BLAS call behind `F.linear` repacks the fp32 weight into its blocked
layout on every call, which costs more than the multiply itself: on this project's 2-core machine
a SmolLM2-135M decode step with 8 routed adapters took 269 ms at 8 rows against 125 ms at one row.
oneDNN can keep a copy of each weight already in the blocked layout (`_reorder_linear_weight`),
after which the same step takes 183 ms at 8 rows. A one-row product is a matrix-vector product,
which BLAS does without packing and faster than the packed path (a whole SmolLM2 forward of one
token: 94 ms plain, 152 ms packed), so one row stays plain; from 8 to 128 rows (decode steps and
short prefills) the packed path was faster at every size measured (60 rows: 234 against 356 ms).

Only the forward of inference-time `nn.Linear` modules with fp32 CPU weights changes (their
instance `forward`, so module types and state-dict keys stay); anything that needs a gradient, one
row, more than `MAX_ROWS` rows and other devices or dtypes take the plain `F.linear`. A weight changed in
place (a merge, a load) is repacked on its next use. The copy costs one more set of the linear
weights in memory.
"""
from __future__ import annotations

import enum

import torch
from torch import nn
from torch.nn import functional as F

PACK_ROWS = 8
"""The row count oneDNN tunes the packed layout for (measured best among 8, 16 and 32 for 1-32 rows)."""
MIN_ROWS, MAX_ROWS = 2, 128
"""Inputs with fewer or more rows than these (one token of one request; a long prefill) use `F.linear`."""


class CpuWeights(str, enum.Enum):
    """`lorakit serve --cpu-weights`: how the base's linear weights are kept on a CPU."""

    PACKED = "packed"  # an extra prepacked copy for decode steps
    PLAIN = "plain"  # as loaded


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class _PackedForward:
    """The forward of one `nn.Linear`: prepacked oneDNN matmul for short inference inputs, else `F.linear`."""

    def __init__(self, linear: nn.Linear):
        self.linear = linear
        self.key: tuple = ()
        self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self.linear.weight, self.linear.bias
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if (not MIN_ROWS <= rows <= MAX_ROWS or x.dtype != w.dtype or x.device != w.device
                or torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)):
            return F.linear(x, w, bias)
        key = (w.data_ptr(), w._version, bias is not None and bias._version)
        if key != self.key:  # first use, or the weight changed in place
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS)
            self.key = key
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, x.shape[-1]), self.packed, bias, "none", [], "")
        return y.view(*x.shape[:-1], w.shape[0])


def _packable(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (type(module) is nn.Linear and w is not None and w.dtype == torch.float32 and w.device.type == "cpu"
            and "forward" not in module.__dict__)


def pack_linears(model: nn.Module) -> int:
    """Give every fp32 CPU `nn.Linear` of `model` the prepacked forward (packed lazily, on first use).
    Returns how many modules changed (0 where oneDNN is not available)."""
    if not available():
        return 0
    changed = 0
    for module in model.modules():
        if _packable(module):
            module.__dict__["forward"] = _PackedForward(module)
            changed += 1
    return changed


def unpack_linears(model: nn.Module) -> None:
    """Back to the plain forward everywhere (drops the packed copies)."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), _PackedForward):
            del module.__dict__["forward"]
