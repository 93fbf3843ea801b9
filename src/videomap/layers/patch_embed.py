"""3-D patch (tubelet) embedding."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed3d(nn.Module):
    """``Conv3d(C, D, kernel=stride=(tubelet, p, p))``: one token per tubelet × patch.

    The convolution lives in ``self.proj`` so that the parameters are named ``patch_embed.proj.*``, as in
    VideoMamba.
    """

    def __init__(self, patch_size: int = 16, tubelet_size: int = 1, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def grid_size(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """``(T', H/p, W/p)`` for an input of ``T`` frames of ``H × W``; raises if not divisible."""
        p, k = self.patch_size, self.tubelet_size
        if t % k or h % p or w % p:
            raise ValueError(
                f"input of {t} frames of {h}x{w} is not divisible into tubelets of {k} frames and {p}x{p} patches"
            )
        return t // k, h // p, w // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C, T, H, W)`` → tokens ``(B, T', N, D)`` with ``N = (H/p)(W/p)`` in raster order."""
        self.grid_size(*x.shape[2:])
        x = self.proj(x)  # (B, D, T', H', W')
        return x.flatten(3).permute(0, 2, 3, 1)
