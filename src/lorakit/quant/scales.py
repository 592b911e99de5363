"""Double quantization of per-block scales (QLoRA): mean-centred int8 codes, fp32 scale per 256."""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCALE_BLOCKSIZE = 256


def quantize_scales(scales: torch.Tensor, blocksize: int = SCALE_BLOCKSIZE) -> dict[str, torch.Tensor]:
    """(n,) fp32 -> {"codes": (n,) int8, "scale": (ceil(n/blocksize),) fp32, "mean": () fp32}.

    The mean is subtracted, then each block of `blocksize` centred values is scaled by its
    absmax / 127 and rounded to the nearest integer.
    """
    scales = scales.float()
    mean = scales.mean()
    centred = scales - mean
    n = centred.numel()
    blocks = F.pad(centred, (0, -n % blocksize)).view(-1, blocksize)
    scale = blocks.abs().amax(dim=1) / 127
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.round(blocks / divisor[:, None]).clamp_(-127, 127).to(torch.int8)
    return {"codes": codes.view(-1)[:n].clone(), "scale": scale, "mean": mean}


def dequantize_scales(
    codes: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, blocksize: int = SCALE_BLOCKSIZE
) -> torch.Tensor:
    """(n,) int8 codes, (ceil(n/blocksize),) fp32 block scales, () fp32 mean -> (n,) fp32 scales."""
    per_value = scale.repeat_interleave(blocksize)[: codes.numel()]
    return torch.addcmul(mean, codes.float(), per_value)
