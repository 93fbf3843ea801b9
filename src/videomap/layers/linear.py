"""``nn.Linear`` whose float32 CPU products go through oneDNN (:mod:`videomap.ops.matmul`)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.matmul import linear


class Linear(nn.Linear):
    """Drop-in ``nn.Linear`` (same parameters, same checkpoints) computed by :func:`videomap.ops.matmul.linear`.

    x: ``(..., in_features)`` → ``(..., out_features)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
