"""Transformer feed-forward block."""

from __future__ import annotations

import torch
from torch import nn

from .linear import Linear


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``: ``D → hidden → D``. x: ``(..., D)``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
