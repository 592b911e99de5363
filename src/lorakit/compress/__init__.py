"""Making a trained model smaller and faster for CPU inference: int8 post-training quantization,
pruning (unstructured, global, structured, iterative with LoRA recovery) and, through the trainer's
`task: distill`, knowledge distillation into a smaller student. Every result is a model directory
that `lorakit eval`, `generate` and `serve` load; `measure` holds the yardsticks."""
from .int8 import compress_int8
from .pipeline import PRUNERS, prune_to_dir
from .prune import apply_masks, prune_unstructured, sparsity_report, zero_masks
from .structured import evenly_spaced_layers, prune_structured

__all__ = ["compress_int8", "prune_to_dir", "PRUNERS", "prune_unstructured", "prune_structured", "sparsity_report",
           "zero_masks", "apply_masks", "evenly_spaced_layers"]
