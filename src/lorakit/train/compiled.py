"""`train.compile`: each transformer layer compiled with `torch.compile` for the training steps.

Inductor turns a layer's forward and backward, LoRA factors included, into generated kernels that fuse
the elementwise work eager mode runs one op at a time (RMSNorm, SiLU × up, RoPE, residual adds, the
adapter's scaling) around the same matmuls. Compiled per layer, in place (`nn.Module.compile`), so
module paths, state-dict keys and the saved adapter are those of the eager model, and the 30 identical
layers of a decoder share one compiled graph. Shapes are dynamic from the first step: batches of
other lengths or row counts reuse the graph instead of recompiling.

The first step pays for the compile (about a minute for SmolLM2-135M on 2 CPU cores; inductor caches
the result on disk, so a later run with the same model and torch starts faster). On the CPU inductor
needs a C++ compiler. Only the training steps run compiled: evaluation and generation during the run
run eager (their no-grad and decode shapes would each cost another compile), and the layers are
returned to eager when training ends.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..errors import InputError
from ..targets import layer_list

CXX_COMPILERS = ("g++", "c++", "clang++")


class CompileError(InputError):
    """`train.compile` cannot run here (no C++ compiler for inductor on the CPU, no layer list)."""


def check_compilable(model: nn.Module, device: torch.device) -> None:
    """A one-line error before anything is written if `train.compile` cannot work on this machine."""
    if device.type == "cpu" and not any(shutil.which(c) for c in CXX_COMPILERS):
        raise CompileError(f"train.compile: inductor needs a C++ compiler on the CPU ({', '.join(CXX_COMPILERS)}); "
                           f"none is on PATH: install one or set train.compile: false")
    try:
        layer_list(model)
    except InputError as e:
        raise CompileError(f"train.compile: {e}") from None


@contextmanager
def compiled_layers(model: nn.Module) -> Iterator[None]:
    """Inside: every layer of the model's layer list runs compiled; after: eager again."""
    _, layers = layer_list(model)
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None  # what nn.Module.compile set; None is the eager call


def eager():
    """A context in which compiled modules run eagerly (evaluation, generation): no compile for their shapes."""
    return torch.compiler.set_stance("force_eager")
