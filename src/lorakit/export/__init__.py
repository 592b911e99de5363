"""Exporting a trained model for runtimes outside PyTorch, one module per format, each with its parity
check against an independent reader: GGUF (llama.cpp; checked with transformers' GGUF loader),
GGUF LoRA adapters (checked with `gguf.GGUFReader`), ONNX (checked with onnxruntime)."""
from .gguf import GGUF_TYPES, GgufParity, UnsupportedArchitecture, check_gguf, export_gguf, write_gguf
from .gguf_lora import check_gguf_lora, export_gguf_lora
from .onnx import export_onnx, write_onnx
from .onnx_runtime import OnnxModel, OnnxParity, check_onnx

__all__ = ["export_gguf", "write_gguf", "check_gguf", "GgufParity", "GGUF_TYPES", "UnsupportedArchitecture",
           "export_gguf_lora", "check_gguf_lora", "export_onnx", "write_onnx", "OnnxModel", "OnnxParity",
           "check_onnx"]
