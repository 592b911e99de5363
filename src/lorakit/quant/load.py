"""Loading a checkpoint straight into a quantized model, one tensor at a time (bounded memory).

    with parameters_on_meta():
        model = build(config)                     # no weight memory: parameters live on "meta"
    load_quantized(model, checkpoint_files(dir), method="nf4")

Each targeted `nn.Linear` is materialised from its checkpoint tensors and replaced at once by its
quantized module, so the process never holds the full-precision model: peak memory is about the
quantized model, the unquantized rest (embeddings, norms, the head), and one weight matrix. The
result is exactly `quantize(<the model loaded in full precision>)`, bit for bit.

Tensors are read one at a time by `lorakit.io.shards` (plain file reads, never a memory map), so
pages of the checkpoint file do not count towards — or stay in — the process's resident memory.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from ..io.shards import CheckpointMismatch, SafetensorsReader, checkpoint_files, release_free_memory
from . import quantizable_linears, quantized_linear_class

__all__ = ["CheckpointMismatch", "SafetensorsReader", "checkpoint_files", "load_quantized", "load_into",
           "parameters_on_meta"]


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside the block, every parameter a module registers is moved to the meta device.

    Buffers stay real (they are small and often computed in `__init__`, e.g. rotary
    frequencies), and initialisers run on meta tensors, i.e. cost nothing.
    """
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def load_quantized(
    model: nn.Module,
    files: Iterable[str | Path],
    method: str = "nf4",
    skip: Iterable[str] | None = None,
    double_quant: bool = True,
    blocksize: int = 64,
) -> list[str]:
    """Fill `model` (parameters on meta, see `parameters_on_meta`) from safetensors `files`,
    quantizing the linears `quantize(model, method, ...)` would; returns the quantized names.

    Every tensor is cast to the dtype of the meta parameter it replaces; a quantized linear gets
    that dtype as compute dtype. Parameters tied to each other stay tied (e.g. a tied
    output head). Raises `CheckpointMismatch` before reading any tensor if names or shapes differ.
    """
    cls = quantized_linear_class(method)
    where = _read_checked(model, files)
    targets = quantizable_linears(model, skip)
    for name, linear in targets.items():
        dtype = linear.weight.dtype
        weight = where[f"{name}.weight"].read(f"{name}.weight").to(dtype)
        bias = where[f"{name}.bias"].read(f"{name}.bias").to(dtype) if linear.bias is not None else None
        quantized = cls.from_weight(weight, bias, double_quant=double_quant, blocksize=blocksize, compute_dtype=dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, quantized)
        del weight, bias
        release_free_memory()
    _fill_remaining(model, where, done={f"{name}.{p}" for name in targets for p in ("weight", "bias")})
    return list(targets)


def load_into(model: nn.Module, files: Iterable[str | Path]) -> None:
    """Fill `model` (parameters on meta) from safetensors `files` holding exactly its state dict, e.g.
    a model whose linears were already swapped for the quantized layout the files store (int8 dirs).
    Integer tensors (codes) keep their stored dtype; checks and tying as in `load_quantized`."""
    _fill_remaining(model, _read_checked(model, files))


def _read_checked(model: nn.Module, files: Iterable[str | Path]) -> dict[str, SafetensorsReader]:
    """key → reader of the file holding it, after checking keys and shapes (nothing read yet)."""
    readers = [SafetensorsReader(f) for f in files]
    where = {key: r for r in readers for key in r.keys()}
    expected = model.state_dict(keep_vars=True)
    _check(expected, _aliases(expected), where)
    return where


def _fill_remaining(model: nn.Module, where: dict[str, SafetensorsReader], done: Iterable[str] = ()) -> None:
    """Read every state-dict tensor found in `where` (but `done`) into place, cast to the dtype of the
    tensor it replaces (floating ones only), tied tensors once; raises if anything stays on meta."""
    expected = model.state_dict(keep_vars=True)
    aliases = _aliases(expected)
    done = set(done)
    for key, current in expected.items():
        if key in done or key not in where:
            continue
        tensor = where[key].read(key)
        value = tensor.to(current.dtype) if tensor.is_floating_point() else tensor
        if isinstance(current, nn.Parameter):
            value = nn.Parameter(value, requires_grad=current.requires_grad)
        for alias in aliases.get(key, [key]):
            _assign(model, alias, value)
            done.add(alias)
    left = [n for n, t in model.state_dict(keep_vars=True).items() if t.device.type == "meta"]
    if left:
        raise CheckpointMismatch(f"not loaded from the checkpoint ({len(left)}): {', '.join(left[:5])}")


def _aliases(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Keys sharing one tensor object (tied weights), grouped under each key of the group."""
    groups: dict[int, list[str]] = {}
    for key, t in state.items():
        groups.setdefault(id(t), []).append(key)
    return {key: group for group in groups.values() if len(group) > 1 for key in group}


def _check(expected: dict, aliases: dict, where: dict) -> None:
    """Every meta tensor must come from the file (itself or a tied alias); real buffers may not."""
    missing = [k for k, t in expected.items() if t.device.type == "meta" and k not in where
               and not any(a in where for a in aliases.get(k, []))]
    unexpected = [k for k in where if k not in expected]
    shapes = [f"{k}: file {tuple(where[k].entries[k]['shape'])} vs model {tuple(t.shape)}"
              for k, t in expected.items() if k in where and list(where[k].entries[k]["shape"]) != list(t.shape)]
    problems = [f"{label} ({len(items)}): {', '.join(items[:5])}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if items]
    if problems:
        raise CheckpointMismatch("checkpoint does not match the model: " + "; ".join(problems))


def _assign(model: nn.Module, key: str, value: torch.Tensor) -> None:
    """Put a parameter (or buffer) object in place of the one named `key`."""
    parent, _, leaf = key.rpartition(".")
    module = model.get_submodule(parent) if parent else model
    if leaf in module._parameters:
        module._parameters[leaf] = value
    else:
        module._buffers[leaf] = value
