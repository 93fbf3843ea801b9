"""Typed run configuration: dataclass sections, YAML recipes with ``_base_`` inheritance, dotted overrides.

A run is described by one :class:`Config` with the sections ``model``, ``data``, ``train``, ``optim``,
``pretrain``, ``finetune`` and ``eval``. Recipes are YAML files holding a subset of those keys::

    _base_: ../base.yaml          # optional; a path or a list of paths, relative to this file
    model:
      name: videomap_tiny
    optim:
      lr: 1.5e-4

and the command line adds dotted overrides such as ``optim.lr=1e-4`` or ``optim.betas=[0.9,0.95]``.
Values are parsed as YAML scalars and then coerced to the declared field type, so ``optim.lr=1e-4``
becomes the float ``0.0001`` (plain YAML would read it as a string). A key that no section declares is an
error that names the key and lists the valid ones: a misspelt key must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Sequence, Tuple, Union

import yaml

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "OptimConfig",
    "PretrainConfig",
    "FinetuneConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "load_yaml_recipe",
    "parse_overrides",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "save_config",
]


class ConfigError(ValueError):
    """A recipe or override that does not fit the declared configuration."""


# --------------------------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """Which backbone to build and how to initialise it."""

    name: str = "videomap_tiny"
    #: Classifier outputs; ``None`` = inferred from the training data (fine-tuning) or no head (pretraining).
    num_classes: int | None = None
    #: Directory written by ``save_pretrained`` (or a pretraining run's ``encoder/``) to initialise from.
    checkpoint: str | None = None
    pretrained: bool = False
    drop_path_rate: float = 0.0
    #: Extra keyword arguments passed to ``videomap.create_model`` (e.g. ``{merge: sum}``).
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the videos are and how clips are sampled from them (DESIGN §5)."""

    train: str | None = None
    val: str | None = None
    test: str | None = None
    #: Folder the paths in the annotation lists are relative to.
    root: str = ""
    #: Annotation format: ``auto`` or a reader name (``list``, ``kinetics_csv``, ``ssv2``, ``folder``, ...).
    format: str = "auto"
    #: Class names for formats whose files carry none (``list``): a text file with one name per line, or a
    #: JSON list / ``{name: index}`` mapping; ``None`` = the names the annotations give (``"0"``, ``"1"``, ...).
    classes: str | None = None
    num_frames: int = 8
    img_size: int = 224
    num_workers: int = 2
    #: ``segment`` (TSN) or ``dense`` (every ``frame_stride``-th frame from a random start).
    sampling: str = "segment"
    frame_stride: int = 4
    #: Multi-view testing; ``None`` = the dataset's default (K400 4x3, SSv2 2x3, ...).
    test_clips: int | None = None
    test_crops: int | None = None


@dataclass
class TrainConfig:
    """The training loop: length, batch, precision, checkpoints, logging."""

    #: Global batch per micro-step, summed over all processes (each of W processes gets batch_size / W), so
    #: a recipe means the same optimisation whatever the number of processes.
    batch_size: int = 8
    #: Optimizer steps; 0 = derived from ``epochs`` and the size of the training set.
    max_steps: int = 0
    epochs: int = 0
    output_dir: str = "runs/default"
    seed: int = 0
    #: ``auto`` (continue from ``OUTPUT/checkpoints/last.pt`` when it exists), ``none``, or a checkpoint path.
    resume: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    #: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``.
    device: str = "auto"
    #: Micro-batches per optimizer step.
    grad_accum: int = 1
    #: Gradient-norm clip; ``None`` or 0 = no clipping (the norm is still computed and logged).
    clip_grad: float | None = None
    log_every: int = 10
    #: Write ``checkpoints/last.pt`` every this many steps (0 = only at the end and on SIGTERM).
    save_every: int = 500
    #: Evaluate every this many steps (0 = at the end of every epoch).
    eval_every: int = 0
    #: Consecutive non-finite steps tolerated (each one is skipped) before training stops with an error.
    max_bad_steps: int = 10
    #: ``auto`` (a bar on a terminal, log lines otherwise), ``bar``, ``log``.
    progress: Literal["auto", "bar", "log"] = "auto"


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 1.5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    #: Warmup length in optimizer steps; when 0, ``warmup_epochs`` is converted with the epoch length.
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    #: Layer-wise lr decay (1.0 = off); see :func:`videomap.train.optim.param_groups`.
    layer_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class PretrainConfig:
    """Frame-wise masked autoregressive pretraining (DESIGN §4)."""

    target: Literal["pixel", "clip"] = "pixel"
    predict: Literal["same", "next"] = "same"
    mask_ratio: float = 0.5
    #: Draw the ratio per batch from MAP's truncated normal on [0.3, 0.7] instead of using ``mask_ratio``.
    mask_ratio_random: bool = False
    #: Hide whole frames instead of tokens inside every frame.
    mask_whole_frames: bool = False
    #: Directory of a Hugging Face ``CLIPVisionModel`` (``target=clip``).
    clip_teacher: str | None = None
    norm_pix_loss: bool = True
    decoder_depth: int = 4
    decoder_dim: int = 384
    decoder_heads: int = 6
    #: ``False``: a bidirectional decoder (MAE's), the non-autoregressive control; frame-causal otherwise.
    decoder_causal: bool = True
    #: Save a reconstruction picture every this many steps (0 = only at the end).
    recon_every: int = 0


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning extras (augmentation, regularisation, EMA)."""

    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    #: RandAugment spec (timm-style string), ``None`` = off.
    rand_aug: str | None = None
    #: Random-erasing probability.
    reprob: float = 0.0
    repeated_aug: int = 1
    #: ``None`` = the dataset's default (off for SSv2, whose labels depend on left/right).
    flip: bool | None = None
    ema: bool = False
    ema_decay: float = 0.9999
    #: Fraction of the labelled training set used (the label-efficiency experiments).
    label_fraction: float = 1.0
    #: Validation metric used to pick ``OUTPUT/best/``.
    best_metric: str = "top1"


@dataclass
class EvalConfig:
    """Evaluation / feature extraction."""

    batch_size: int = 8
    #: Folder for ``results.json`` and plots (``eval``) or feature shards (``extract``); ``None`` =
    #: ``train.output_dir/eval`` or ``train.output_dir/features``.
    output_dir: str | None = None
    #: Feature pooling for ``videomap extract``: ``cls``, ``avg`` or ``frame``.
    pool: str = "cls"
    #: Layer index for ``extract`` (negative counts from the end).
    layer: int = -1


@dataclass
class Config:
    """The whole run: one field per section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), ready for YAML/JSON."""
        return config_to_dict(self)


# ------------------------------------------------------------------------------------------ type coercion

_NONE_STRINGS = {"none", "null", "~", ""}
_TRUE_STRINGS = {"true", "yes", "on", "1"}
_FALSE_STRINGS = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (as YAML parsed it) to the annotated type ``tp``, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS - {""})
        ):
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot read {value!r} as {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        if isinstance(value, str) and value.strip() in [str(a) for a in args]:
            return next(a for a in args if str(a) == value.strip())
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS | _FALSE_STRINGS:
            return value.strip().lower() in _TRUE_STRINGS
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML reads "1e-4" (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if args and len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args)) if args else tuple(value)
    if origin in (list, List):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin in (dict, Dict):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


# ---------------------------------------------------------------------------------------- dict <-> config


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _unknown_key(key: str, valid: Sequence[str], where: str) -> ConfigError:
    last = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, list(valid), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys in {where}: {', '.join(valid)}")


def _fill_section(section: Any, values: Mapping[str, Any], name: str) -> None:
    hints = typing.get_type_hints(type(section))
    valid = [f.name for f in dataclasses.fields(section)]
    for k, v in values.items():
        if k not in hints:
            raise _unknown_key(f"{name}.{k}", valid, f"'{name}'")
        setattr(section, k, _coerce(v, hints[k], f"{name}.{k}"))


def config_from_dict(d: Mapping[str, Any], base: Config | None = None) -> Config:
    """Build a :class:`Config` from a nested mapping, starting from ``base`` (or the defaults)."""
    cfg = dataclasses.replace(base) if base is not None else Config()
    # dataclasses.replace is shallow: copy every section so ``base`` is left alone.
    for f in dataclasses.fields(cfg):
        setattr(cfg, f.name, dataclasses.replace(getattr(cfg, f.name)))
    sections = _section_types()
    for name, values in (d or {}).items():
        if name not in sections:
            raise _unknown_key(name, list(sections), "the top level")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section '{name}' must be a mapping, got {values!r}")
        _fill_section(getattr(cfg, name), values, name)
    return cfg


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict of ``cfg`` (tuples become lists so YAML/JSON stay portable)."""
    return {f.name: _plain(dataclasses.asdict(getattr(cfg, f.name))) for f in dataclasses.fields(cfg)}


# ------------------------------------------------------------------------------------------------ YAML I/O


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_yaml_recipe(path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a YAML recipe, resolving ``_base_`` (a path or list of paths relative to the file).

    Later bases override earlier ones and the file itself overrides all of its bases; mappings are merged
    key by key, anything else is replaced.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    real = str(path.resolve())
    if real in _seen:
        raise ConfigError(f"_base_ cycle: {' -> '.join(_seen + (real,))}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data = dict(data)
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _deep_merge(merged, load_yaml_recipe(path.parent / b, _seen + (real,)))
    return _deep_merge(merged, data)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=1e-4", "train.resume=none"]`` into a nested dict of YAML-parsed values."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            sections = ", ".join(_section_types())
            raise ConfigError(f"override key {key!r} must be section.key, with section one of: {sections}")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw  # e.g. an unquoted path with a colon: keep the text, coercion decides
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Return a copy of ``cfg`` with dotted overrides applied (type-coerced, unknown keys rejected)."""
    return config_from_dict(parse_overrides(overrides), base=cfg)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the recipe at ``path`` (with its ``_base_`` chain), then dotted ``overrides``."""
    cfg = Config()
    if path is not None:
        cfg = config_from_dict(load_yaml_recipe(path), base=cfg)
    return apply_overrides(cfg, overrides) if overrides else cfg


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (``load_config(path)`` reads back an equal :class:`Config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=False)
    os.replace(tmp, path)
    return path
