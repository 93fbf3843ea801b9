"""Token reducers: fewer visual tokens for the language model, by pooling patches in space and frames in time.

Both work on the encoder's token grid ``(B, T', N, D)`` with ``N = Hg·Wg`` in raster order. A stride that
does not divide the grid gives ``ceil(size / stride)`` windows spread evenly over it (adaptive pooling), so
no token is dropped; when it divides, this is plain pooling with kernel = stride.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POOL_MODES = ("avg", "max")


def _square_grid(num_tokens: int) -> tuple[int, int]:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens per frame are not a square grid; pass grid_hw=(H', W')")
    return side, side


def spatial_pool(tokens: torch.Tensor, stride: int, grid_hw: tuple[int, int] | None = None, mode: str = "avg") -> torch.Tensor:
    """Pool each frame's patch grid by ``stride``.

    tokens: ``(B, T', N, D)``, ``N = Hg·Wg`` (``grid_hw``; square when omitted)
    → ``(B, T', ceil(Hg/stride)·ceil(Wg/stride), D)``.
    """
    if stride == 1:
        return tokens
    if mode not in POOL_MODES:
        raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
    b, t, n, d = tokens.shape
    h, w = grid_hw or _square_grid(n)
    if h * w != n:
        raise ValueError(f"grid {h}x{w} does not hold {n} tokens")
    x = tokens.reshape(b * t, h, w, d).permute(0, 3, 1, 2)
    out_hw = (math.ceil(h / stride), math.ceil(w / stride))
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    x = pool(x, out_hw)
    return x.permute(0, 2, 3, 1).reshape(b, t, out_hw[0] * out_hw[1], d)


def temporal_pool(tokens: torch.Tensor, stride: int, mode: str = "avg") -> torch.Tensor:
    """Pool groups of ``stride`` consecutive frames. tokens: ``(B, T', N, D)`` → ``(B, ceil(T'/stride), N, D)``."""
    if stride == 1:
        return tokens
    if mode not in POOL_MODES:
        raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
    b, t, n, d = tokens.shape
    x = tokens.permute(0, 2, 3, 1).reshape(b, n * d, t)
    pool = F.adaptive_avg_pool1d if mode == "avg" else F.adaptive_max_pool1d
    x = pool(x, math.ceil(t / stride))
    return x.reshape(b, n, d, -1).permute(0, 3, 1, 2)


class TokenReducer(nn.Module):
    """Spatial then temporal pooling with fixed strides (1 = leave that axis alone); no parameters."""

    def __init__(self, spatial_stride: int = 1, temporal_stride: int = 1, mode: str = "avg"):
        super().__init__()
        if spatial_stride < 1 or temporal_stride < 1:
            raise ValueError("strides must be >= 1")
        if mode not in POOL_MODES:
            raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
        self.spatial_stride, self.temporal_stride, self.mode = spatial_stride, temporal_stride, mode

    def forward(self, tokens: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """tokens ``(B, T', N, D)`` → ``(B, T'', N', D)`` (see :meth:`output_grid`)."""
        tokens = spatial_pool(tokens, self.spatial_stride, grid_hw, self.mode)
        return temporal_pool(tokens, self.temporal_stride, self.mode)

    def output_grid(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """The token grid ``(T'', Hg', Wg')`` that an input grid ``(T', Hg, Wg)`` reduces to."""
        t, h, w = grid
        s, k = self.spatial_stride, self.temporal_stride
        return math.ceil(t / k), math.ceil(h / s), math.ceil(w / s)

    def extra_repr(self) -> str:
        return f"spatial_stride={self.spatial_stride}, temporal_stride={self.temporal_stride}, mode={self.mode!r}"
