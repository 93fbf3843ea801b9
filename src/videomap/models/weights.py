"""Model weights on disk: the one model-folder writer (:func:`save_pretrained`), the one loader
(:func:`load_model`), position-embedding resampling at load time, and a readable report of any mismatch.

A model folder is ``config.json`` + ``model.safetensors`` (plus, from training, ``classes.json`` and
``info.json``). Weights are also read from single files: ``.safetensors`` or a ``.pt/.pth/.bin`` state
dict, always with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers import infer_square_grid, resample_spatial_pos_embed, resample_temporal_pos_embed
from .config import ARCHITECTURE_FIELDS, TRAINING_FIELDS, VideoMAPConfig

logger = logging.getLogger("videomap.models")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CLASSES_NAME = "classes.json"
INFO_NAME = "info.json"
CONVERSION_NAME = "conversion.json"
# The files a model folder consists of; a folder holding only these may be replaced as a whole.
MODEL_FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CLASSES_NAME, INFO_NAME, CONVERSION_NAME)
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


# ---------------------------------------------------------------------------------------------- writing


def _fsync_dir(directory: Path) -> None:
    # Makes a rename itself durable; not every platform can open a directory, which is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then rename it over ``path``.

    The temporary file lives in the same folder because ``os.replace`` is only atomic within one file
    system. On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _config_dict(model: nn.Module, config: Any) -> dict[str, Any]:
    cfg = config if config is not None else getattr(model, "config", None)
    if cfg is None:
        return {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"cannot write a config of type {type(cfg).__name__} to {CONFIG_NAME}; pass a dict")


def _cpu_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights): the second and later get a copy.
    seen, out = set(), {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, config: Any = None,
                    files: Mapping[str, Any] | None = None) -> Path:
    """Write a model folder: ``config.json``, ``model.safetensors`` and ``files`` (file name → JSON value,
    e.g. ``{"classes.json": [...]}``). The one writer: :meth:`VideoMAP.save_pretrained
    <videomap.models.VideoMAP.save_pretrained>`, the training exports and ``videomap convert`` call it.

    ``config`` defaults to ``model.config`` (a :class:`VideoMAPConfig`, another dataclass or a mapping); a
    module without one records its class. Pass the module itself, not a ``DistributedDataParallel`` or
    ``torch.compile`` wrapper (``videomap.train.optim.unwrap_model`` gives it).

    Nothing is ever half-written. A folder that holds only model-folder files (or does not exist yet) is
    replaced as a whole: the files go to a fresh sibling folder that is then renamed into place, so a kill
    leaves either the previous folder or the new one. A folder that also holds other files (yours) keeps
    them: each file is then replaced atomically on its own. Call it on one process. Returns ``directory``.
    """
    from safetensors.torch import save as safetensors_bytes

    blob = safetensors_bytes(_cpu_tensors(model), metadata={"format": "pt"})
    texts = {CONFIG_NAME: _json_text(_config_dict(model, config))}
    texts.update({name: _json_text(value) for name, value in (files or {}).items()})
    directory = Path(directory)
    others = [p.name for p in directory.iterdir() if p.name not in {WEIGHTS_NAME, *texts, *MODEL_FOLDER_FILES}] \
        if directory.is_dir() else []
    target = directory if others else directory.with_name(f".{directory.name}.writing")
    if not others and target.exists():
        shutil.rmtree(target)  # left by a writer that was killed
    atomic_write(target / WEIGHTS_NAME, lambda f: f.write(blob))
    for name, text in texts.items():
        atomic_write(target / name, lambda f, text=text: f.write(text), mode="w")
    if not others:
        _swap_into_place(target, directory)
    return directory


def _swap_into_place(new: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    new.rename(final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------- loading


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


def load_model(source: str | os.PathLike, name: str | None = None, *, match_name: bool = False,
               with_head: bool = True, strict: bool = True, model_class: type | None = None,
               **overrides: Any):
    """The one loader: a :class:`VideoMAP` from a model folder or a weights file.

    Args:
        source: a folder written by :func:`save_pretrained`, a folder holding only ``model.safetensors``,
            or a ``.safetensors``/``.pt``/``.pth``/``.bin`` file.
        name: the registered architecture of weights saved without a ``config.json`` (required for those).
            A folder's own config decides otherwise, unless ``match_name``.
        match_name: the folder must hold ``name``'s architecture (fields not in ``overrides``), and the
            registry row's training fields (drop path) replace the saved ones: what
            ``create_model(name, checkpoint_path=...)`` promises.
        with_head: ``False`` leaves the checkpoint's classifier out (an encoder never uses it).
        strict: a missing, unexpected or misshapen tensor raises :class:`CheckpointMismatchError` with the
            full list; ``False`` logs the list and loads what fits.
        model_class: :class:`VideoMAP` or a subclass (default ``VideoMAP``).
        overrides: config fields. Position embeddings are resampled to another ``num_frames``/``img_size``;
            a head of another size (``num_classes``) is a fresh one.
    """
    from .registry import get_model_config
    from .videomap import VideoMAP

    state, saved = read_checkpoint(source)
    if not with_head:
        state = {k: v for k, v in state.items() if k not in HEAD_KEYS}
    if saved is not None:
        if match_name and name is not None:
            config = _config_from_checkpoint(name, get_model_config(name), saved, overrides)
        else:
            config = saved.replace(**overrides) if overrides else saved
    else:
        if name is None:
            raise ValueError(f"{source} holds weights without a {CONFIG_NAME}; name their architecture "
                             f"(a registered model, see videomap.list_models())")
        if with_head and "num_classes" not in overrides and "head.weight" in state:
            # Bare weights keep their classifier unless a different one was asked for.
            overrides = dict(overrides, num_classes=state["head.weight"].shape[0])
        config = get_model_config(name, **overrides)
    model = (model_class or VideoMAP)(config)
    load_state_dict_into(model, state, source=saved, strict=strict)
    return model


def from_pretrained(directory: str | os.PathLike, strict: bool = True, model_class=None, **overrides):
    """Rebuild a model from a :func:`save_pretrained` folder, with config ``overrides`` (:func:`load_model`
    for a folder that must carry its config)."""
    if not (Path(directory) / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; use create_model(name, checkpoint_path=...)")
    return load_model(directory, strict=strict, model_class=model_class, **overrides)
