"""RMSNorm, computed in fp32 (fp64 for fp64 inputs) whatever the input dtype."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.rms_norm import rms_norm


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the last axis.

    Same parameters as mamba_ssm's ``RMSNorm`` (``weight`` only), so Mamba-family checkpoints load.
    The statistics are taken in fp32 because bf16 sums of squares lose the small channels; the result is
    returned in the input dtype so an fp32 residual stream stays fp32.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(..., D)`` → ``(..., D)``."""
        return rms_norm(x, self.weight, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
