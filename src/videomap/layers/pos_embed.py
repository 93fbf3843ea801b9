"""Learned spatial + temporal position embeddings (DESIGN §2.3) and their resampling.

The parameters themselves live on the model (``pos_embed (1, 1 + N, D)``, whose index 0 belongs to the
class token, and ``temporal_pos_embedding (1, T', D)``), so their names match VideoMamba checkpoints; these
functions resample them to another grid and add them to tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_spatial_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Bicubically resample the patch part of ``pos_embed (1, P + Hg·Wg, D)`` to ``new_grid``.

    The first ``num_prefix_tokens`` rows (the class token's) are kept as they are.
    Returns ``(1, P + Hn·Wn, D)`` in ``pos_embed``'s dtype.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} patch rows, not {old_grid[0]}x{old_grid[1]}")
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    # Interpolate in fp32: bicubic weights in bf16 visibly distort the embedding.
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def resample_temporal_pos_embed(temporal_pos_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linearly resample ``temporal_pos_embed (1, T, D)`` to ``(1, num_frames, D)``."""
    if temporal_pos_embed.shape[1] == num_frames:
        return temporal_pos_embed
    x = temporal_pos_embed.permute(0, 2, 1).float()  # (1, D, T)
    x = F.interpolate(x, size=num_frames, mode="linear", align_corners=False)
    return x.permute(0, 2, 1).to(temporal_pos_embed.dtype)


def infer_square_grid(num_patches: int) -> tuple[int, int]:
    """The ``(g, g)`` grid of a square ``pos_embed`` with ``num_patches`` patch rows; raises otherwise."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"cannot infer the grid of a pos_embed with {num_patches} patch rows: not square; pass the grid explicitly"
        )
    return side, side


def add_position_embeddings(
    patch_tokens: torch.Tensor, cls_token: torch.Tensor, pos_embed: torch.Tensor, temporal_pos_embed: torch.Tensor
) -> torch.Tensor:
    """Assemble the input sequence ``[cls, frame 0 tokens, frame 1 tokens, …]`` (spatial-first).

    Args:
        patch_tokens: ``(B, T', N, D)``.
        cls_token: ``(1, 1, D)``.
        pos_embed: ``(1, 1 + N, D)``; row 0 is added to the class token, rows ``1:`` to every frame.
        temporal_pos_embed: ``(1, T', D)``; row ``t`` is added to every patch token of frame ``t`` (not to
            the class token, as in VideoMamba).

    Returns:
        ``(B, 1 + T'·N, D)``.
    """
    batch, frames, tokens, dim = patch_tokens.shape
    x = patch_tokens + pos_embed[:, None, 1:, :] + temporal_pos_embed[:, :, None, :]
    cls = (cls_token + pos_embed[:, :1]).expand(batch, -1, -1).to(x.dtype)
    return torch.cat([cls, x.reshape(batch, frames * tokens, dim)], dim=1)
