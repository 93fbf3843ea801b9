"""Reconstruction pictures for pixel-target pretraining: original / masked / predicted frames."""

from __future__ import annotations

import numpy as np
import torch

from .targets import patchify, unpatchify


@torch.no_grad()
def reconstruction_grid(video: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, tubelet: int, patch: int,
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), norm_pix: bool = True,
                        max_frames: int = 8) -> np.ndarray:
    """One sample's picture as ``uint8 (3·H, T·W, 3)``: rows original, masked (hidden patches grey), predicted.

    Args:
        video: normalised ``(C, T, H, W)``. pred: ``(T', N, P)`` pixel predictions (per-patch normalised when
            ``norm_pix``; they are mapped back with each true patch's mean and std, as MAE's pictures do).
        mask: ``(T', N)`` bool, ``True`` = hidden. Predicted rows show visible patches as they were and hidden
            patches as predicted.
    """
    video = video.detach().float().cpu()
    channels, frames, height, width = video.shape
    grid_hw = (height // patch, width // patch)
    mean_t = torch.tensor(mean).view(-1, 1, 1, 1)
    std_t = torch.tensor(std).view(-1, 1, 1, 1)
    pixels = (video * std_t + mean_t).clamp(0, 1)[None]  # (1, C, T, H, W) in [0, 1]

    patches = patchify(pixels, tubelet, patch)  # (1, T', N, P)
    pred = pred.detach().float().cpu()[None]
    if norm_pix:
        mu = patches.mean(dim=-1, keepdim=True)
        sigma = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        pred = pred * sigma + mu
    hidden = mask.detach().cpu()[None, ..., None]
    masked = torch.where(hidden, torch.full_like(patches, 0.5), patches)
    predicted = torch.where(hidden, pred, patches)

    rows = [unpatchify(p, tubelet, patch, grid_hw, channels)[0] for p in (patches, masked, predicted)]
    shown = min(frames, max_frames)
    picture = torch.cat([torch.cat(list(r[:, :shown].clamp(0, 1).unbind(1)), dim=-1) for r in rows], dim=-2)
    if channels == 1:
        picture = picture.expand(3, -1, -1)
    return (picture.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def save_png(image: np.ndarray, path, scale: int = 1) -> None:
    """Write a ``uint8 (H, W, 3)`` image as PNG (needs Pillow: pip install pillow)."""
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - exercised only without Pillow
        raise ImportError("saving pictures needs Pillow: pip install 'videomap[plot]'") from error
    picture = Image.fromarray(image)
    if scale != 1:
        picture = picture.resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    picture.save(path)
