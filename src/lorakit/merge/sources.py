"""The models a merge reads, as tensor sources that stream one tensor at a time.

A reference is a local HF directory, a merged model directory (`lorakit merge` output), a
`.gguf` file or an embedded name (all resolved by `lorakit.models`), or `BASE+ADAPTER_DIR`:
the base with a LoRA adapter applied. A plain LoRA (rsLoRA, rank/alpha patterns, embeddings,
GPT-2 Conv1D, modules_to_save, biases) is applied lazily, tensor by tensor, as W + ΔW with ΔW from
the adapter's `delta_weight()`; other adapter kinds (DoRA, VeRA, AdaLoRA, QLoRA bases) are merged
once into a temporary directory with `merge_adapter_to_dir` and read from there.
"""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import LoraConfig
from ..errors import InputError
from ..io import PREFIX, check_adapter_dir, read_base_quantization, read_config, read_weights
from ..io.shards import CheckpointMismatch, CheckpointReader
from ..models import ModelNotFoundError, local_dir
from ..tuners.lora import LoraAdapter

_LORA_KEY = re.compile(r"(?P<module>.+)\.(?:lora_(?P<side>[AB])\.weight|lora_embedding_(?P<embedding_side>[AB]))")


class ModelSource:
    """One model of a merge: tensor names, shapes and dtypes without reading, and `read(name)`."""

    def __init__(self, label: str, directory: Path, reader: CheckpointReader,
                 overlay: Optional[dict[str, Callable[[torch.Tensor], torch.Tensor]]] = None):
        self.label = label  # as written in the recipe
        self.directory = directory  # holds config.json and the tokenizer
        self.reader = reader
        self.overlay = overlay or {}

    def keys(self) -> list[str]:
        return self.reader.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.reader

    def shape(self, key: str) -> tuple[int, ...]:
        return self.reader.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.reader.dtype(key)

    def read(self, key: str) -> torch.Tensor:
        tensor = self.reader.read(key)
        change = self.overlay.get(key)
        return tensor if change is None else change(tensor)

    def config(self) -> dict:
        return json.loads((self.directory / "config.json").read_text())


def split_reference(ref: str) -> tuple[str, Optional[str]]:
    """'BASE+ADAPTER' → (BASE, ADAPTER); a name that exists as written (even with a '+') is a plain model."""
    if "+" not in ref or Path(ref).expanduser().exists():
        return ref, None
    base, _, adapter = ref.rpartition("+")
    return base, adapter


def open_source(ref: str, where: str, scratch: contextlib.ExitStack) -> ModelSource:
    """The tensors of model reference `ref` (`where`: the recipe key, for errors).

    `scratch` owns temporary directories (merged non-plain adapters); closing it removes them.
    """
    base, adapter = split_reference(ref)
    try:
        directory = local_dir(base, tokenizer=False)
    except ModelNotFoundError as e:
        raise InputError(f"{where}: {e}") from None
    reader = _reader(directory, where)
    if adapter is None:
        return ModelSource(ref, directory, reader)
    adapter_dir = check_adapter_dir(adapter, f"{where}: {adapter}", InputError)
    config = read_config(adapter_dir)
    weights = read_weights(adapter_dir)
    if _is_plain_lora(config, weights, adapter_dir):
        return ModelSource(ref, directory, reader, _lora_overlay(config, weights, reader, f"{where}: {adapter}"))
    from .quantized import merge_adapter_to_dir  # noqa: PLC0415 (loads models; only for non-plain adapters)

    tmp = Path(tempfile.mkdtemp(prefix="lorakit-merge-adapter-"))
    scratch.callback(shutil.rmtree, tmp, True)
    merge_adapter_to_dir(adapter_dir, tmp / "model", base_model=base)
    return ModelSource(ref, directory, _reader(tmp / "model", where))


def _reader(directory: Path, where: str) -> CheckpointReader:
    try:
        return CheckpointReader(directory)
    except CheckpointMismatch as e:
        raise InputError(f"{where}: {e}") from None


def _is_plain_lora(config, weights: dict, adapter_dir: Path) -> bool:
    return (isinstance(config, LoraConfig) and not config.use_dora and read_base_quantization(adapter_dir) is None
            and not any(k.endswith("lora_magnitude_vector") for k in weights))


def lora_modules(config: LoraConfig, weights: dict[str, torch.Tensor], where: str
                 ) -> tuple[dict[str, LoraAdapter], set[str], dict[str, torch.Tensor]]:
    """A plain LoRA adapter's files as (module name → LoraAdapter (fp32, scaling from the config),
    names of embedding modules, checkpoint key → tensor replaced outright (modules_to_save, biases))."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    embeddings: set[str] = set()
    replaced: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        if not key.startswith(PREFIX):
            raise InputError(f"{where}: unexpected tensor {key} in the adapter")
        name = key[len(PREFIX):]
        m = _LORA_KEY.fullmatch(name)
        if m:
            factors.setdefault(m["module"], {})["lora_" + (m["side"] or m["embedding_side"])] = tensor
            if m["embedding_side"]:
                embeddings.add(m["module"])
        elif not name.endswith(".base_layer.weight"):  # (peft's copy of a targeted embedding's own weight)
            replaced[name.replace(".base_layer.", ".")] = tensor
    adapters = {}
    for module, f in factors.items():
        if "lora_A" not in f or "lora_B" not in f:
            raise InputError(f"{where}: {module} has only one of lora_A / lora_B")
        a, b = f["lora_A"], f["lora_B"]
        if a.shape[0] != b.shape[1]:
            raise InputError(f"{where}: {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} differ in rank")
        adapter = LoraAdapter(a.shape[1], b.shape[0], a.shape[0], config.alpha_for(module),
                              use_rslora=config.use_rslora, dtype=torch.float32)
        with torch.no_grad():
            adapter.lora_A.copy_(a)
            adapter.lora_B.copy_(b)
        adapters[module] = adapter.requires_grad_(False)
    return adapters, embeddings, replaced


def _lora_overlay(config: LoraConfig, weights: dict[str, torch.Tensor], reader: CheckpointReader,
                  where: str) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Checkpoint key → function(base tensor) → the tensor with the adapter applied."""
    adapters, embeddings, replaced = lora_modules(config, weights, where)
    overlay: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for module, adapter in adapters.items():
        key = f"{module}.weight"
        if key not in reader:
            raise InputError(f"{where}: the adapter changes {module}, but the base has no tensor {key}")
        transpose = module in embeddings or config.fan_in_fan_out
        expected = (adapter.lora_B.shape[0], adapter.lora_A.shape[1])
        expected = expected[::-1] if transpose else expected
        if reader.shape(key) != expected:
            raise InputError(f"{where}: {module}: the adapter's update is {expected}, the base tensor "
                             f"{key} is {reader.shape(key)}")
        overlay[key] = _add_delta(adapter, transpose)
    for key, tensor in replaced.items():
        if key not in reader:
            raise InputError(f"{where}: the adapter replaces {key}, which the base does not have")
        if reader.shape(key) != tuple(tensor.shape):
            raise InputError(f"{where}: {key}: adapter {tuple(tensor.shape)} vs base {reader.shape(key)}")
        overlay[key] = _replace_with(tensor)
    return overlay


def _add_delta(adapter: LoraAdapter, transpose: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def apply(weight: torch.Tensor) -> torch.Tensor:
        delta = adapter.delta_weight(torch.float32)
        return (weight.float() + (delta.T if transpose else delta)).to(weight.dtype)

    return apply


def _replace_with(tensor: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda weight: tensor.to(weight.dtype)
