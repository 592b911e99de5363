"""Analysis tools: a training-memory estimator, the spectrum of a trained ΔW, and method
recommendations (`lorakit analyze memory | adapter`, `lorakit recommend`)."""
from .memory import Dtype, Method, MemoryEstimate, ModelShape, Optimizer, estimate_memory, load_shape

__all__ = ["Dtype", "Method", "MemoryEstimate", "ModelShape", "Optimizer", "estimate_memory", "load_shape"]
