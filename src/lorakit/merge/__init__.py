"""Folding adapters into base weights, adapter arithmetic, whole-model merging and LoRA extraction.

base.py       merge / unmerge / merge_and_unload / unload (explicit state changes of one model)
quantized.py  merge an adapter out of a quantized base into a saved model (`lorakit merge`)
methods.py    the merge methods as pure tensor functions; METHODS: recipe name → method
combine.py    combine_adapters: peft's add_weighted_adapter combinations (`lorakit combine`)
recipe.py     mergekit-format recipes, validated; per-tensor parameter resolution
sources.py    the models a merge reads (HF dir, GGUF, embedded name, BASE+ADAPTER), tensor by tensor
models.py     merge_models: the streaming executor (`lorakit merge-models`)
extract.py    extract_lora: fine-tuned − base as a LoRA adapter (`lorakit extract`)
"""
from .base import merge, merge_and_unload, unload, unmerge
from .combine import COMBINATIONS, combine_adapter_dirs, combine_adapters
from .extract import Extraction, extract_lora
from .models import merge_models
from .quantized import merge_adapter_to_dir, merge_dequantized, requantization_error
from .recipe import Recipe, load_recipe

__all__ = ["merge", "unmerge", "merge_and_unload", "unload", "merge_adapter_to_dir", "merge_dequantized",
           "requantization_error", "combine_adapters", "combine_adapter_dirs", "COMBINATIONS", "merge_models",
           "Recipe", "load_recipe", "extract_lora", "Extraction"]
