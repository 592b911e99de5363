"""Analysis tools: a training-memory estimator, the spectrum of a trained ΔW, and method
recommendations (`lorakit analyze memory | adapter`, `lorakit recommend`)."""
from .memory import Dtype, Method, MemoryEstimate, ModelShape, Optimizer, estimate_memory, load_shape
from .recommend import Recommendation, Task, recommend
from .spectrum import AdapterSpectrum, analyze_adapter, plot_spectra

__all__ = ["AdapterSpectrum", "Dtype", "Method", "MemoryEstimate", "ModelShape", "Optimizer", "Recommendation",
           "Task", "analyze_adapter", "estimate_memory", "load_shape", "plot_spectra", "recommend"]
