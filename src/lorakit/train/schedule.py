"""Learning-rate schedules: linear warmup, then constant, linear or cosine decay to zero."""
from __future__ import annotations

import math

import torch


def _constant(progress: float) -> float:
    return 1.0


def _linear(progress: float) -> float:
    return max(0.0, 1.0 - progress)


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


DECAYS = {"constant": _constant, "linear": _linear, "cosine": _cosine}


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based) of `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return DECAYS[schedule]((step - warmup) / max(1, total - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, schedule))
