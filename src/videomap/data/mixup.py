"""Batch-level Mixup / CutMix with label smoothing, for clips ``(B, C, T, H, W)``.

Each batch is mixed with itself reversed along the batch axis, with one ``lam`` per batch:
Mixup blends whole clips; CutMix pastes one box — the same box in every frame — and ``lam`` becomes
the kept area. Targets are smoothed one-hot vectors mixed with the same ``lam``, so every row sums to 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .seeding import entropy_seed

__all__ = ["Mixup", "smooth_one_hot", "soft_target_cross_entropy"]


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``(B,)`` integer labels → ``(B, num_classes)`` float rows: ``1 - smoothing + smoothing/K`` on the
    label, ``smoothing/K`` elsewhere (rows sum to 1)."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, dtype=torch.float32, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum(target * log_softmax(logits))``; ``logits``/``target`` ``(B, K)``."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class Mixup:
    """Mixup / CutMix + label smoothing as a callable on a batch.

    Args:
        num_classes: K.
        mixup_alpha: Beta(α, α) for Mixup's ``lam`` (0 disables Mixup).
        cutmix_alpha: Beta(α, α) for CutMix's ``lam`` (0 disables CutMix).
        prob: probability of mixing a batch at all (unmixed batches still get smoothed targets).
        switch_prob: when both are enabled, probability of CutMix instead of Mixup.
        label_smoothing: ε of :func:`smooth_one_hot`.
        seed: seed of the private generator; give each DDP rank its own (e.g. ``seed + rank``).

    Call: ``video (B, C, T, H, W)`` float, ``target (B,)`` int → ``(mixed video, soft targets (B, K))``.
    The input tensor is not modified.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, seed: int | None = None):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob, self.label_smoothing = float(prob), float(switch_prob), float(label_smoothing)
        # NumPy's generator, because torch has no seeded Beta sampler.
        self.rng = np.random.default_rng(entropy_seed() if seed is None else seed)

    def sample_params(self) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch; ``lam = 1`` means no mixing."""
        use_mix = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        if not use_mix or self.rng.random() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = bool(self.rng.random() < self.switch_prob)
        else:
            cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        return float(self.rng.beta(alpha, alpha)), cutmix

    def cutmix_box(self, height: int, width: int, lam: float) -> tuple[int, int, int, int]:
        """A box ``(top, bottom, left, right)`` of area about ``(1 - lam)·H·W``, centred at a random point
        and clipped to the frame."""
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(height * cut), int(width * cut)
        cy, cx = int(self.rng.integers(height)), int(self.rng.integers(width))
        return (max(cy - ch // 2, 0), min(cy + ch // 2, height), max(cx - cw // 2, 0), min(cx + cw // 2, width))

    def __call__(self, video: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if video.ndim != 5:
            raise ValueError(f"expected a batch of clips (B, C, T, H, W), got shape {tuple(video.shape)}")
        if video.shape[0] != target.shape[0]:
            raise ValueError("video and target batch sizes differ")
        lam, cutmix = self.sample_params()
        y = smooth_one_hot(target, self.num_classes, self.label_smoothing)
        if lam == 1.0:
            return video, y
        partner = video.flip(0)
        if cutmix:
            top, bottom, left, right = self.cutmix_box(video.shape[-2], video.shape[-1], lam)
            mixed = video.clone()
            mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
            # The clipped box can be smaller than asked: weight labels by the area actually pasted.
            lam = 1.0 - (bottom - top) * (right - left) / (video.shape[-2] * video.shape[-1])
        else:
            mixed = video * lam + partner * (1.0 - lam)
        return mixed, y * lam + y.flip(0) * (1.0 - lam)

    def __repr__(self) -> str:
        return (f"Mixup(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, switch_prob={self.switch_prob}, "
                f"label_smoothing={self.label_smoothing})")
