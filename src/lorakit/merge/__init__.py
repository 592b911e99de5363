"""Folding adapters into base weights, adapter arithmetic and whole-model merging."""
from .base import merge, merge_and_unload, unload, unmerge
from .quantized import merge_adapter_to_dir, merge_dequantized, requantization_error

__all__ = ["merge", "unmerge", "merge_and_unload", "unload", "merge_adapter_to_dir", "merge_dequantized",
           "requantization_error"]
