"""Multi-head self-attention through ``scaled_dot_product_attention`` (:mod:`videomap.ops.attention`)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.attention import scaled_dot_product_attention
from .linear import Linear


class Attention(nn.Module):
    """Multi-head self-attention; dense and bidirectional unless a mask is given.

    The backbone never masks (its sequences have no padding); the pretraining decoder passes its
    frame-causal mask.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: ``(B, L, D)`` → ``(B, L, D)``. attn_mask: ``(L, L)`` bool, ``True`` where query i may attend key j."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, hd)
        out = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))
