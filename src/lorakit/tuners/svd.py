"""Truncated SVD and the split of its factors into LoRA's A and B, shared by PiSSA initialisation,
adapter combination (`merge/combine.py`) and LoRA extraction (`merge/extract.py`).

    M ≈ U_k diag(S_k) Vh_k          M (out, in), U_k (out, k), S_k (k,), Vh_k (k, in)
    A = sqrt(S_k / s) Vh_k  (k, in),   B = U_k sqrt(S_k / s)  (out, k),   s·B A = U_k S_k Vh_k
"""
from __future__ import annotations

from typing import Optional

import torch


def top_singular(matrix: torch.Tensor, rank: int, niter: Optional[int] = None,
                 oversample: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-`rank` singular triplets (U (m, k), S (k,), Vh (k, n)) of a 2-D matrix, in fp32.

    `niter=None`: exact (`torch.linalg.svd`). Otherwise randomized (`torch.svd_lowrank` with
    `niter` subspace iterations and `rank + oversample` probe vectors), much faster when k ≪ min(m, n).
    k = min(rank, m, n).
    """
    m32 = matrix.float()
    k = min(rank, *m32.shape)
    if niter is None:
        u, s, vh = torch.linalg.svd(m32, full_matrices=False)
        return u[:, :k], s[:k], vh[:k]
    u, s, v = torch.svd_lowrank(m32, q=min(k + oversample, *m32.shape), niter=niter)
    return u[:, :k], s[:k], v[:, :k].T


def split_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor,
                  scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (k, in), B (out, k)) with scaling · B A = U diag(S) Vh, the singular values shared evenly."""
    root = (s / scaling).sqrt()
    return root[:, None] * vh, u * root[None, :]
