"""The frame-causal decoder of frame-wise masked autoregressive pretraining (DESIGN §4.3).

MAP's decoder is causal over image rows; here rows become frames: a token of frame ``t`` attends to every
token of frames ``≤ t`` and to nothing later, and attention inside a frame is bidirectional.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.blocks import TransformerLayer


def frame_causal_mask(frames: int, tokens_per_frame: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(T'·N, T'·N)`` bool, ``True`` where query token ``i`` may attend key token ``j`` (frame(j) ≤ frame(i))."""
    frame_of = torch.arange(frames * tokens_per_frame, device=device) // tokens_per_frame
    return frame_of[None, :] <= frame_of[:, None]


class FrameCausalDecoder(nn.Module):
    """A small Transformer over ``(B, T', N, dim)`` tokens under the frame-causal mask.

    Args:
        dim: token width (``.dim``). depth: blocks. num_heads: attention heads. mlp_ratio: MLP width ratio.
        causal: ``False`` drops the frame-causal mask (every token attends to every frame): MAE's
            bidirectional decoder, the non-autoregressive control of the objective ablation.
    """

    def __init__(self, dim: int = 384, depth: int = 4, num_heads: int = 6, mlp_ratio: float = 4.0,
                 causal: bool = True):
        super().__init__()
        self.dim, self.causal = dim, causal
        self.blocks = nn.ModuleList(TransformerLayer(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T', N, dim)`` → ``(B, T', N, dim)``; outputs of frame ``t`` depend only on frames ``≤ t``
        (on every frame when ``causal`` is off)."""
        batch, frames, tokens, dim = x.shape
        mask = frame_causal_mask(frames, tokens, x.device) if self.causal else None
        h = x.reshape(batch, frames * tokens, dim)
        for block in self.blocks:
            h = block(h, attn_mask=mask)
        return self.norm(h).reshape(batch, frames, tokens, dim)
