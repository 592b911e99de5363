"""Where a run trains and in which precision: `train.device` and `model.dtype`.

Device (`train.device`): `auto` is cuda:0 when CUDA is available, else the CPU; `cpu`, `cuda` (= cuda:0)
and `cuda:N` ask for one. Asking for CUDA where there is none is a one-line error (exit 2 from the CLI)
before any data or model is read. One process trains on that device; under torchrun each rank takes
cuda:LOCAL_RANK (`distributed.setup`).

Precision (`model.dtype`):

- float32 (the default): nothing here runs. No autocast, no loss scaling, no extra casts.
- bfloat16 / float16: the frozen base is stored and runs in that dtype; every trainable adapter weight is
  an fp32 *master* (`tuners.layers.master_dtype`), so gradients, AdamW's moments and the update are fp32
  and a step far below a 16-bit ulp is not lost. The adapter's forward runs in the activations' dtype on
  its factors cast per call. On CUDA the forward (loss and evaluation) runs under `torch.autocast` in the
  base's dtype, so every matmul of the step, adapter included, takes the 16-bit tensor-core path and
  autocast keeps its fp32 ops (softmax, norms' statistics, losses) in fp32.
- float16 also gets a `torch.amp.GradScaler` (on CPU as on CUDA: fp16's narrow exponent lets small
  gradients underflow to zero without it): the loss is scaled before backward, the gradients unscaled
  before clipping, and a step whose gradients overflowed is skipped (the scale halves) instead of
  stopping the run. bfloat16 has float32's exponent range and needs no scaler.

Saved adapters hold the fp32 masters (peft's layout; peft also keeps adapters of a 16-bit base in fp32
by default, `autocast_adapter_dtype=True`, and casts on load as needed).
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Optional

import torch

from ..errors import InputError
from ..models import DTYPES

AUTO = "auto"
"""`train.device: auto`: cuda:0 when CUDA is available, else cpu."""
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
"""The values of `train.device`."""


class DeviceError(InputError):
    """`train.device` names a device this machine does not have."""


def resolve_device(spec: str) -> torch.device:
    """The torch device `train.device` names on this machine (auto: cuda:0 if CUDA is available, else cpu)."""
    if spec == AUTO:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise DeviceError(f"train.device: {spec}: CUDA is not available ({why}); use train.device: cpu or auto")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"train.device: {spec}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        device = torch.device("cuda", index)
    return device


def native_half_matmul(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies `dtype` (bfloat16 / float16) matrices natively through oneDNN (AVX512-BF16,
    AVX512-FP16 or AMX). Without it PyTorch falls back to a generic kernel: on an AVX2 CPU measured here a
    bfloat16 matmul ran at 1.5 GFLOP/s on one thread against float32's 57 (about 35x slower), where an
    AVX512-BF16 CPU ran bfloat16 2.6x faster than float32."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):  # a torch without oneDNN or without this query: assume it is native
        return True


def warn_slow_cpu_half(model_dtype: str, device: torch.device) -> None:
    """A 16-bit base on a CPU without native 16-bit matmuls trains many times slower than float32: say so
    (a warning, not an error: the run is correct, only slow) before the first step."""
    dtype = DTYPES[model_dtype]
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not native_half_matmul(dtype):
        warnings.warn(f"model.dtype: {model_dtype} on a CPU without native {model_dtype} matmuls (no AVX512-BF16 / "
                      f"AVX512-FP16 / AMX): every matmul takes a generic kernel, many times slower than float32; "
                      f"use model.dtype: float32 on this machine", stacklevel=2)


class Precision:
    """The forward context and the backward / step of one run (see the module docstring).

    float32: `forward()` is a null context and `backward` / `step` are `loss.backward()` / `optimizer.step()`."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        half = dtype in (torch.float16, torch.bfloat16)
        self.device_type = device.type
        self.autocast_dtype: Optional[torch.dtype] = dtype if half and device.type == "cuda" else None
        self.scaler: Optional[torch.amp.GradScaler] = (torch.amp.GradScaler(device.type)
                                                       if dtype == torch.float16 else None)

    @classmethod
    def of(cls, model_dtype: str, device: torch.device) -> "Precision":
        return cls(DTYPES[model_dtype], device)

    def forward(self):
        """The context every training / evaluation forward runs in: autocast for a 16-bit base on CUDA."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping or reading gradients: the true (unscaled) gradients (float16 only)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step; False when the loss scaler skipped it (non-finite gradients; scale lowered)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def skips_non_finite(self) -> bool:
        """Whether a non-finite gradient is an expected event (loss scaling: the step is skipped), not an error."""
        return self.scaler is not None

    def metrics(self, stepped: bool) -> dict:
        """For metrics.jsonl (float16): the loss scale after this step and whether the step was skipped."""
        if self.scaler is None:
            return {}
        return {"loss_scale": self.scaler.get_scale(), "skipped_step": not stepped}

    def state_dict(self) -> dict:
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
