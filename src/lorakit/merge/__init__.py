"""Folding adapters into base weights, adapter arithmetic and whole-model merging."""
from .base import merge, merge_and_unload, unload, unmerge

__all__ = ["merge", "unmerge", "merge_and_unload", "unload"]
