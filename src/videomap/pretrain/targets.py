"""What the decoder regresses, per token (DESIGN §4.4).

A target builder maps a normalised video ``(B, C, T, H, W)`` to ``(B, T', N, P)`` targets on the student's
token grid, and scores predictions of the same shape with a per-token loss ``(B, T', N)``.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def patchify(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` → ``(B, T', N, tubelet·p·p·C)``, tokens in raster order within each frame."""
    return rearrange(video, "b c (t kt) (h p) (w q) -> b t (h w) (kt p q c)", kt=tubelet, p=patch, q=patch)


def unpatchify(patches: torch.Tensor, tubelet: int, patch: int, grid_hw: tuple[int, int],
               channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, T', N, tubelet·p·p·C)`` → ``(B, C, T, H, W)``."""
    h, w = grid_hw
    return rearrange(patches, "b t (h w) (kt p q c) -> b c (t kt) (h p) (w q)", h=h, w=w, kt=tubelet, p=patch,
                     q=patch, c=channels)


class PixelTarget(nn.Module):
    """Each token's patch, normalised per patch (MAE's ``norm_pix_loss``); loss = per-token MSE."""

    def __init__(self, tubelet: int, patch: int, norm_pix: bool = True, eps: float = 1e-6):
        super().__init__()
        self.tubelet, self.patch, self.norm_pix, self.eps = tubelet, patch, norm_pix, eps

    def dim(self, channels: int = 3) -> int:
        return self.tubelet * self.patch * self.patch * channels

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` → ``(B, T', N, P)``."""
        target = patchify(video.float(), self.tubelet, self.patch)
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.eps).sqrt()
        return target

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token mean squared error ``(B, T', N)``."""
        return (pred.float() - target).pow(2).mean(dim=-1)


class CLIPTarget(nn.Module):
    """Patch features of a frozen Hugging Face ``CLIPVisionModel``, run frame by frame.

    The student's input is normalised with its own mean/std; frames are brought back to pixels, normalised as
    the teacher expects, resized to the teacher's image size, and the teacher's patch features (last hidden
    state, class token dropped) are resampled to the student's token grid and L2-normalised. Frames of one
    tubelet are averaged. Loss = ``2 − 2·cos``.
    """

    def __init__(self, model_or_path, tubelet: int = 1, input_mean=(0.485, 0.456, 0.406),
                 input_std=(0.229, 0.224, 0.225), teacher_mean=None, teacher_std=None, batch_frames: int = 64):
        super().__init__()
        teacher = model_or_path
        if isinstance(model_or_path, (str, os.PathLike)):
            teacher = load_clip_vision_model(model_or_path)
            teacher_mean, teacher_std = teacher_mean or _preprocessor_stats(model_or_path, "image_mean"), \
                teacher_std or _preprocessor_stats(model_or_path, "image_std")
        self.teacher = teacher.eval().requires_grad_(False)
        self.tubelet, self.batch_frames = tubelet, batch_frames
        self.image_size = int(self.teacher.config.image_size)
        self.register_buffer("input_mean", torch.tensor(input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(input_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("teacher_mean", torch.tensor(teacher_mean or OPENAI_CLIP_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("teacher_std", torch.tensor(teacher_std or OPENAI_CLIP_STD).view(1, 3, 1, 1),
                             persistent=False)

    def dim(self, channels: int = 3) -> int:
        return int(self.teacher.config.hidden_size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen: never let dropout or norms switch to training
        return self

    @torch.no_grad()
    def forward(self, video: torch.Tensor, grid_hw: tuple[int, int] | None = None,
                patch: int = 16) -> torch.Tensor:
        """``(B, C, T, H, W)`` → ``(B, T', N, d_teacher)``, L2-normalised, on the student's ``grid_hw``."""
        b, _, t, h, w = video.shape
        grid_hw = grid_hw or (h // patch, w // patch)
        frames = rearrange(video.float(), "b c t h w -> (b t) c h w")
        frames = frames * self.input_std + self.input_mean
        frames = F.interpolate(frames, size=(self.image_size, self.image_size), mode="bilinear",
                               align_corners=False)
        frames = (frames - self.teacher_mean) / self.teacher_std
        dtype = next(self.teacher.parameters()).dtype
        feats = torch.cat([self.teacher(pixel_values=chunk.to(dtype)).last_hidden_state[:, 1:].float()
                           for chunk in frames.split(self.batch_frames)])
        side = int(round(feats.shape[1] ** 0.5))
        feats = rearrange(feats, "n (h w) d -> n d h w", h=side, w=side)
        if (side, side) != tuple(grid_hw):
            feats = F.interpolate(feats, size=grid_hw, mode="bilinear", align_corners=False)
        feats = rearrange(feats, "(b t kt) d h w -> b t kt (h w) d", b=b, kt=self.tubelet).mean(dim=2)
        return F.normalize(feats, dim=-1)

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token ``2 − 2·cos(pred, target)`` ``(B, T', N)`` (target already unit-norm)."""
        return 2.0 - 2.0 * (F.normalize(pred.float(), dim=-1) * target).sum(dim=-1)


def load_clip_vision_model(path: str | os.PathLike):
    """A ``CLIPVisionModel`` from a local directory (``config.json`` + weights); no hub access."""
    try:
        from transformers import CLIPVisionModel
    except ImportError as error:  # pragma: no cover - exercised only without transformers
        raise ImportError("CLIP targets need transformers: pip install 'videomap[hf]'") from error
    if not os.path.isdir(path):
        raise FileNotFoundError(f"CLIP teacher directory not found: {path} (give a local CLIPVisionModel folder)")
    return CLIPVisionModel.from_pretrained(path, local_files_only=True)


def _preprocessor_stats(path, key):
    config = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(config):
        with open(config) as f:
            value = json.load(f).get(key)
        return tuple(value) if value else None
    return None
