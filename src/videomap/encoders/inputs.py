"""Turning what a caller has (decoded uint8 frames, or normalised float clips) into backbone input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_frames(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinearly resize every frame of ``x (B, C, T, H, W)`` to ``size`` (``S`` or ``(H', W')``).

    Anti-aliased, so shrinking decoded frames does not alias fine texture into the patches.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if x.shape[-2:] == (height, width):
        return x
    b, c, t = x.shape[:3]
    frames = x.transpose(1, 2).reshape(b * t, c, *x.shape[-2:])
    frames = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return frames.reshape(b, t, c, height, width).transpose(1, 2)


def to_model_input(
    video,
    mean: Sequence[float],
    std: Sequence[float],
    size: int | Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A float32 ``(B, C, T, H, W)`` clip the backbone can take.

    Args:
        video: ``uint8 (B, T, H, W, C)`` or ``uint8 (T, H, W, C)`` frames as decoded (tensor or NumPy array):
            scaled to ``[0, 1]`` and normalised with ``mean``/``std``; or a float ``(B, C, T, H, W)`` clip,
            taken as already normalised.
        mean, std: per-channel normalisation (the model's ``config.mean/std``).
        size: resize frames to this ``H = W`` or ``(H, W)`` first (``None`` keeps them).
        device: where the result lives (uint8 frames move before the float conversion: 4× less to copy).
    """
    video = torch.as_tensor(video)
    channels = len(mean)
    if video.dtype == torch.uint8:
        if video.dim() == 4:
            video = video.unsqueeze(0)
        if video.dim() != 5 or video.shape[-1] != channels:
            raise ValueError(
                f"uint8 videos must be (B, T, H, W, {channels}) or (T, H, W, {channels}) frames, got shape "
                f"{tuple(video.shape)}"
            )
        x = video.to(device).permute(0, 4, 1, 2, 3).float().div_(255.0)
        if size is not None:
            x = resize_frames(x, size)
        m = torch.tensor(mean, device=x.device).view(1, channels, 1, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, channels, 1, 1, 1)
        return (x - m) / s
    if not video.is_floating_point():
        raise TypeError(f"videos must be uint8 frames or a float clip, got dtype {video.dtype}")
    if video.dim() != 5 or video.shape[1] != channels:
        raise ValueError(
            f"float videos must be normalised (B, {channels}, T, H, W) clips, got shape {tuple(video.shape)}; "
            f"pass decoded frames as uint8 (B, T, H, W, {channels}) to have them normalised"
        )
    x = video.to(device=device, dtype=torch.float32)
    return resize_frames(x, size) if size is not None else x
