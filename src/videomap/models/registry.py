"""Registered variants (DESIGN §2.9): rows of config overrides over one :class:`VideoMAP` class."""

from __future__ import annotations

import difflib
import fnmatch
import os
from typing import Any

from .checkpoint import load_state_dict_into, read_checkpoint
from .config import ARCHITECTURE_FIELDS, TRAINING_FIELDS, VideoMAPConfig
from .videomap import VideoMAP

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


def _config_from_checkpoint(name: str, base: VideoMAPConfig, saved: VideoMAPConfig, explicit: dict) -> VideoMAPConfig:
    """A saved config, checked against the registry row and with the caller's explicit choices on top."""
    differs = [
        f"{f}: checkpoint {getattr(saved, f)!r}, {name} {getattr(base, f)!r}"
        for f in ARCHITECTURE_FIELDS
        if f not in explicit and getattr(saved, f) != getattr(base, f)
    ]
    if differs:
        raise ValueError(
            f"the checkpoint is not a {name}:\n  " + "\n  ".join(differs)
            + "\nload it with VideoMAP.from_pretrained(path), or pass the matching fields explicitly"
        )
    inherited = {f: getattr(base, f) for f in TRAINING_FIELDS}
    return saved.replace(name=name, **inherited).replace(**explicit)


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
    base = get_model_config(name)
    if checkpoint_path is None:
        return VideoMAP(base.replace(**explicit))

    state, saved = read_checkpoint(checkpoint_path)
    if saved is not None:
        config = _config_from_checkpoint(name, base, saved, explicit)
    else:
        if "num_classes" not in explicit and "head.weight" in state:
            # A bare weights file: keep its classifier unless a different one was asked for.
            explicit["num_classes"] = state["head.weight"].shape[0]
        config = base.replace(**explicit)
    model = VideoMAP(config)
    load_state_dict_into(model, state, source=saved)
    return model
