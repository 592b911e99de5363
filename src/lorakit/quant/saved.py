"""Model directories whose linears are stored int8 (`lorakit compress int8`): save and load.

On disk: a HF directory whose `config.json` carries

    "quantization_config": {"quant_method": "lorakit-int8", "modules": [...], "kernel": "fbgemm", ...}

and whose weights are `model-int8.safetensors`: each listed linear as `<name>.weight_int8`
(out, in) int8 and `<name>.weight_scale` (out,) float32 (plus its bias), everything else as saved
by transformers. The file is deliberately not named `model.safetensors`: plain transformers does
not know the format, and would otherwise load it with the listed weights freshly initialised
(warning only) instead of failing. `lorakit.models.load_causal_lm` / `load_classifier` load it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..io.model_dir import save_model_dir
from ..io.shards import checkpoint_files
from .int8 import Int8Linear

QUANT_METHOD = "lorakit-int8"
WEIGHTS_NAME = "model-int8.safetensors"


def saved_quantization(directory: str | os.PathLike) -> Optional[dict]:
    """The `quantization_config` of a lorakit int8 directory, or None for any other directory."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return None
    spec = json.loads(config.read_text()).get("quantization_config") or {}
    return spec if spec.get("quant_method") == QUANT_METHOD else None


def save_int8_dir(model: nn.Module, out: str | os.PathLike, tokenizer=None, kernel: str = "dequant",
                  extra: Optional[dict] = None) -> Path:
    """Write `model` (linears already `Int8Linear`) as a lorakit int8 directory; `kernel` is the
    matmul kernel loaders switch the layers to; `extra` goes into the quantization_config."""
    modules = sorted(n for n, m in model.named_modules() if isinstance(m, Int8Linear))
    if not modules:
        raise ValueError("no Int8Linear module to save; quantize the model first")
    spec = {"quant_method": QUANT_METHOD, "format": "int8 codes, one absmax scale per output row",
            "modules": modules, "kernel": kernel, **(extra or {})}
    return save_model_dir(model, out, tokenizer, config_update={"quantization_config": spec},
                          weights_name=WEIGHTS_NAME)


def load_int8_dir(directory: str | os.PathLike, auto_class, dtype: torch.dtype = torch.float32,
                  kernel: Optional[str] = None) -> nn.Module:
    """Build the model of a lorakit int8 directory with `auto_class` (e.g. AutoModelForCausalLM) on the
    meta device, swap the listed linears for `Int8Linear`, and fill everything from the file.
    `kernel` overrides the one the directory names."""
    from transformers import AutoConfig, GenerationConfig

    from .load import load_into, parameters_on_meta

    directory = Path(directory)
    spec = saved_quantization(directory)
    if spec is None:
        raise ValueError(f"{directory}: not a lorakit int8 directory")
    config = AutoConfig.from_pretrained(directory)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with parameters_on_meta():
        model = auto_class.from_config(config, dtype=dtype)
    for name in spec["modules"]:
        linear = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                Int8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=dtype))
    load_into(model, checkpoint_files(directory, WEIGHTS_NAME))
    use_int8_kernel(model, kernel or spec.get("kernel", "dequant"))
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model.eval()


def use_int8_kernel(model: nn.Module, kernel: str) -> int:
    """Switch every `Int8Linear` of `model` to `kernel`; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    for layer in layers:
        layer.use_kernel(kernel)
    return len(layers)
