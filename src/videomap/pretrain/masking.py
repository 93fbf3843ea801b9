"""Token masks for frame-wise masked autoregressive pretraining (DESIGN §4.1).

Masks are ``(B, T', N)`` booleans, ``True`` = hidden. Every frame of every sample hides the same number of
tokens, so the encoder's visible sequences have one length across the batch (rectangular batches) and stay in
spatial-first order. All randomness comes from an explicit ``torch.Generator``, never the global RNG, so a
mask is reproducible from a seed.
"""

from __future__ import annotations

import math

import torch


def sample_mask_ratio(generator: torch.Generator | None = None, low: float = 0.3, high: float = 0.7,
                      mean: float = 0.5, std: float = 0.25) -> float:
    """One ratio from MAP's truncated normal: ``N(mean, std)`` restricted to ``[low, high]``.

    Sampled by inverting the normal CDF between the truncation points, which needs no rejection loop.
    """
    if not low <= high:
        raise ValueError(f"mask ratio bounds must satisfy low <= high, got [{low}, {high}]")

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - mean) / (std * math.sqrt(2.0))))

    lo, hi = cdf(low), cdf(high)
    p = lo + (hi - lo) * torch.rand((), generator=generator, dtype=torch.float64).item()
    p = min(max(p, 1e-12), 1 - 1e-12)
    value = mean + std * math.sqrt(2.0) * torch.special.erfinv(torch.tensor(2 * p - 1, dtype=torch.float64)).item()
    return min(max(value, low), high)


def num_hidden(tokens: int, ratio: float) -> int:
    """How many of ``tokens`` a ratio hides: rounded, and at least one token stays visible."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return min(tokens - 1, int(round(ratio * tokens)))


def frame_token_mask(batch: int, frames: int, tokens_per_frame: int, ratio: float,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Hide ``num_hidden(N, ratio)`` random tokens in every frame, independently per frame and per sample.

    Returns:
        ``(B, T', N)`` bool, ``True`` = hidden.
    """
    hidden = num_hidden(tokens_per_frame, ratio)
    noise = torch.rand(batch, frames, tokens_per_frame, generator=generator)
    ranks = noise.argsort(dim=-1).argsort(dim=-1)  # a random permutation rank per token
    return (ranks < hidden).to(device)


def whole_frame_mask(batch: int, frames: int, tokens_per_frame: int, ratio: float,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                     keep_first: bool = False) -> torch.Tensor:
    """Hide ``num_hidden(T', ratio)`` whole frames per sample (at least one frame stays visible).

    ``keep_first`` never hides frame 0 and draws the hidden frames from frames ``1 … T'−1``. Next-frame
    prediction needs it: frame 0 has no earlier frame to be predicted from, so a mask that hid only frame 0
    would leave nothing to score.

    Returns:
        ``(B, T', N)`` bool, ``True`` = hidden; every sample hides the same number of tokens.
    """
    hidden = num_hidden(frames, ratio)
    first = 1 if keep_first else 0
    noise = torch.rand(batch, frames - first, generator=generator)
    frame_hidden = noise.argsort(dim=-1).argsort(dim=-1) < hidden
    if keep_first:
        frame_hidden = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), frame_hidden], dim=1)
    return frame_hidden[:, :, None].expand(batch, frames, tokens_per_frame).clone().to(device)


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices (into ``T'·N``) of the visible tokens, in spatial-first order.

    Args:
        mask: ``(B, T', N)`` bool with the same number of hidden tokens in every sample.

    Returns:
        ``(B, L_vis)`` long.
    """
    flat = mask.flatten(1)
    counts = (~flat).sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"every sample must show the same number of tokens, got {counts.tolist()}")
    # A stable sort puts visible (0) before hidden (1) and keeps each group in sequence order.
    order = flat.to(torch.int8).argsort(dim=1, stable=True)
    return order[:, : int(counts[0])]
