"""Saving and loading backbones: ``config.json`` + ``model.safetensors`` directories, single weight files,
position-embedding resampling at load time, and a readable report of any mismatch."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..layers import infer_square_grid, resample_spatial_pos_embed, resample_temporal_pos_embed
from .config import VideoMAPConfig

logger = logging.getLogger("videomap.models")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HEAD_KEYS = ("head.weight", "head.bias")
# Containers that training scripts wrap a state dict in.
_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's parameters do not fit the model; the message lists every difference."""


def key_section(title: str, items, limit: int) -> list[str]:
    """Report lines for one list of keys: a titled count, at most ``limit`` items, and how many were cut."""
    if not items:
        return []
    lines = [f"  {title} ({len(items)}):"]
    lines.extend(f"    {item}" for item in items[:limit])
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return lines


@dataclass
class LoadReport:
    """What loading did: keys missing from / unexpected in the checkpoint, shape mismatches, embeddings
    resampled, and whether the head was left freshly initialised because its size differs."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    head_reinitialised: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        lines = []

        def section(title, items):
            lines.extend(key_section(title, items, limit))

        section("in the model but not in the checkpoint", self.missing)
        section("in the checkpoint but not in the model", self.unexpected)
        section(
            "shape differs (checkpoint vs model)",
            [f"{name}: {tuple(a)} vs {tuple(b)}" for name, a, b in self.mismatched],
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- reading


def _unwrap(state: dict) -> dict:
    for key in _WRAPPER_KEYS:
        inner = state.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], VideoMAPConfig | None]:
    """Read weights and, when present, the config.

    ``path`` is a directory written by :func:`save_pretrained`, a ``.safetensors`` file, or a
    ``.pt/.pth/.bin`` file holding a state dict (possibly under ``"model"``, ``"state_dict"``, …).
    """
    path = Path(path)
    if path.is_dir():
        weights, config_file = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not weights.exists():
            raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME}")
        config = None
        if config_file.exists():
            config = VideoMAPConfig.from_dict(json.loads(config_file.read_text()))
        return _read_weights_file(weights), config
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return _read_weights_file(path), None


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return _unwrap(state)


# ---------------------------------------------------------------------------------------------- adapting


def _source_spatial_grid(state_dict: dict, source: VideoMAPConfig | None) -> tuple[int, int]:
    if source is not None:
        return source.grid[1:]
    return infer_square_grid(state_dict["pos_embed"].shape[1] - 1)


def adapt_state_dict(
    state_dict: dict[str, torch.Tensor], model, source: VideoMAPConfig | None = None
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Fit a checkpoint to ``model``'s grid and head.

    Position embeddings saved for another ``T``/``H``/``W`` are resampled (bicubic in space, linear in
    time); a head of another size is dropped so the model keeps its fresh one. Returns the new state dict
    and a report of what changed.
    """
    state = dict(state_dict)
    report = LoadReport()
    own = model.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape and pos.shape[-1] == own["pos_embed"].shape[-1]:
        old_grid = _source_spatial_grid(state, source)
        state["pos_embed"] = resample_spatial_pos_embed(pos, old_grid, model.config.grid[1:])
        new_h, new_w = model.config.grid[1:]
        report.resampled.append(f"pos_embed {old_grid[0]}x{old_grid[1]} -> {new_h}x{new_w}")
    temporal = state.get("temporal_pos_embedding")
    own_temporal = own["temporal_pos_embedding"]
    if temporal is not None and temporal.shape != own_temporal.shape and temporal.shape[-1] == own_temporal.shape[-1]:
        state["temporal_pos_embedding"] = resample_temporal_pos_embed(temporal, own_temporal.shape[1])
        report.resampled.append(f"temporal_pos_embedding {temporal.shape[1]} -> {own_temporal.shape[1]} steps")
    theirs = {k: tuple(state[k].shape) for k in HEAD_KEYS if k in state}
    ours = {k: tuple(own[k].shape) for k in HEAD_KEYS if k in own}
    head_differs = theirs != ours
    if head_differs:
        for k in HEAD_KEYS:
            state.pop(k, None)
        report.head_reinitialised = True
    return state, report


def load_state_dict_into(
    model, state_dict: dict[str, torch.Tensor], source: VideoMAPConfig | None = None, strict: bool = True
) -> LoadReport:
    """Load ``state_dict`` into ``model`` after :func:`adapt_state_dict`.

    Any key missing or unexpected, or any shape that still differs, raises
    :class:`CheckpointMismatchError` listing them all (``strict=False`` logs the same list as a warning and
    loads what fits). A reinitialised head and resampled embeddings are logged.
    """
    state, report = adapt_state_dict(state_dict, model, source)
    own = model.state_dict()
    fitting = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif tensor.shape != own[name].shape:
            report.mismatched.append((name, tuple(tensor.shape), tuple(own[name].shape)))
        else:
            fitting[name] = tensor
    report.missing = [n for n in own if n not in state and not (report.head_reinitialised and n in HEAD_KEYS)]
    if not report.ok:
        message = "checkpoint does not match the model:\n" + report.describe()
        if strict:
            raise CheckpointMismatchError(message)
        logger.warning("%s\n(strict=False: loaded the %d tensors that fit)", message, len(fitting))
    model.load_state_dict(fitting, strict=False)
    for line in report.resampled:
        logger.info("videomap: resampled %s", line)
    if report.head_reinitialised:
        theirs = tuple(state_dict["head.weight"].shape) if "head.weight" in state_dict else "none"
        ours = tuple(own["head.weight"].shape) if "head.weight" in own else "none"
        logger.warning(
            "videomap: classifier head not loaded (checkpoint %s, model %s); the model keeps its own head", theirs, ours
        )
    return report


# ---------------------------------------------------------------------------------------------- save / from


def save_pretrained(model, directory: str | os.PathLike) -> None:
    """Write ``config.json`` and ``model.safetensors`` (every tensor contiguous, on CPU)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


def from_pretrained(directory: str | os.PathLike, strict: bool = True, model_class=None, **overrides):
    """Rebuild a model from a :func:`save_pretrained` directory, with config ``overrides``.

    ``model_class`` is :class:`VideoMAP` or a subclass (e.g. the hub wrapper); default ``VideoMAP``.
    """
    from .videomap import VideoMAP

    state, config = read_checkpoint(directory)
    if config is None:
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; use create_model(name, checkpoint_path=...)")
    model = (model_class or VideoMAP)(config.replace(**overrides) if overrides else config)
    load_state_dict_into(model, state, source=config, strict=strict)
    return model
