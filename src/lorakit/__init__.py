"""lorakit: LoRA-family parameter-efficient fine-tuning for PyTorch / Hugging Face models.

    cfg = lorakit.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    lorakit.inject(model, cfg)                      # in place; returns the adapted module names
    lorakit.save_adapter(model, "out/adapter")      # peft's on-disk format
"""
from .config import AdaLoraConfig, LoraConfig, VeraConfig
from .tuners.bottleneck import BottleneckConfig
from .tuners.ia3 import IA3Config
from .tuners.prompt import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from .inject import describe_trainable, inject, preset_targets, trainable_parameters
from .io import AdapterFormatError, load_adapter, read_config, save_adapter
from .merge import combine_adapters, extract_lora, merge, merge_and_unload, merge_models, unload, unmerge
from .quant import quantize
from .routing import route
from .state import active_adapter, delete_adapter, disable_adapters, list_adapters, set_adapter
from .task_router import TaskRouter
from .train.optim import build_optimizer, loraplus_optimizer

__version__ = "0.1.0"

__all__ = [
    "LoraConfig", "VeraConfig", "AdaLoraConfig", "IA3Config", "BottleneckConfig", "PromptTuningConfig",
    "PromptEncoderConfig", "PrefixTuningConfig", "inject", "save_adapter", "load_adapter", "read_config",
    "set_adapter", "disable_adapters",
    "delete_adapter", "list_adapters", "active_adapter", "route", "merge", "unmerge", "merge_and_unload",
    "unload", "trainable_parameters", "describe_trainable", "preset_targets", "AdapterFormatError",
    "loraplus_optimizer", "build_optimizer", "quantize", "combine_adapters", "merge_models", "extract_lora",
    "TaskRouter",
]
