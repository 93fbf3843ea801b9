"""RMSNorm as a function, shared by the norm module and the fused Mamba layer that recomputes it."""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis.

    Args:
        x: ``(..., D)``. weight: ``(D,)``.

    Returns:
        ``(..., D)`` in ``x``'s dtype. The statistics are taken in fp32 (fp64 for fp64 inputs) because bf16
        sums of squares lose the small channels.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    y = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(compute)).to(x.dtype)
