"""Registered variants (DESIGN §2.9): rows of config overrides over one :class:`VideoMAP` class."""

from __future__ import annotations

import difflib
import fnmatch
import os
from typing import Any

from .config import VideoMAPConfig
from .videomap import VideoMAP
from .weights import load_model

# name -> overrides of VideoMAPConfig's defaults. A new variant is a new row, never a new class.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # VideoMAP: an attention layer after every fourth bidirectional Mamba layer.
    "videomap_tiny": dict(embed_dim=192, schedule="MMMMA" * 6, num_heads=3),
    "videomap_small": dict(embed_dim=384, schedule="MMMMA" * 6, num_heads=6),
    "videomap_middle": dict(embed_dim=576, schedule="MMMMA" * 8, num_heads=9),
    "videomap_base": dict(embed_dim=768, schedule="MMMMA" * 6, num_heads=12),
    # VideoMamba-compatible pure-Mamba stacks (its checkpoints load; directions merged by sum).
    "videomamba_tiny": dict(embed_dim=192, schedule="M" * 24, num_heads=3, merge="sum"),
    "videomamba_small": dict(embed_dim=384, schedule="M" * 24, num_heads=6, merge="sum"),
    "videomamba_middle": dict(embed_dim=576, schedule="M" * 32, num_heads=9, merge="sum"),
    # All-attention baselines with the same stem and head.
    "videovit_tiny": dict(embed_dim=192, schedule="A" * 12, num_heads=3),
    "videovit_small": dict(embed_dim=384, schedule="A" * 12, num_heads=6),
    "videovit_base": dict(embed_dim=768, schedule="A" * 12, num_heads=12),
}


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell-style filter such as ``"videomap_*"``."""
    names = sorted(MODEL_CONFIGS)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def _check_name(name: str) -> None:
    if name not in MODEL_CONFIGS:
        close = difflib.get_close_matches(name, MODEL_CONFIGS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (registered: {', '.join(list_models())})")


def get_model_config(name: str, **overrides: Any) -> VideoMAPConfig:
    """The config of a registered variant with ``overrides`` applied."""
    _check_name(name)
    return VideoMAPConfig(name=name, **MODEL_CONFIGS[name]).replace(**overrides)


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int | None = None,
    num_frames: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    drop_path_rate: float | None = None,
    dynamic_size: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    **overrides: Any,
) -> VideoMAP:
    """Build a registered variant.

    Args:
        name: a name from :func:`list_models`.
        pretrained: there is no weight hub; pass ``checkpoint_path`` instead.
        num_classes, num_frames, img_size, drop_path_rate, dynamic_size: the usual config fields; ``None``
            keeps the registry's (or the checkpoint's) value.
        checkpoint_path: a :meth:`VideoMAP.save_pretrained` directory or a weights file. Position
            embeddings are resampled to the requested ``num_frames``/``img_size``; a head of another size
            is replaced by a fresh one; any other difference raises with the full list.
        overrides: any other :class:`VideoMAPConfig` field.
    """
    _check_name(name)
    if pretrained and checkpoint_path is None:
        raise ValueError(
            f"create_model({name!r}, pretrained=True): videomap has no weight hub; pass "
            f"checkpoint_path=<directory with config.json + model.safetensors, or a weights file>"
        )
    explicit = dict(overrides, dynamic_size=dynamic_size)
    for key, value in (("num_classes", num_classes), ("num_frames", num_frames), ("img_size", img_size),
                       ("drop_path_rate", drop_path_rate)):
        if value is not None:
            explicit[key] = value
    if checkpoint_path is None:
        return VideoMAP(get_model_config(name, **explicit))
    return load_model(checkpoint_path, name, match_name=True, **explicit)
