"""Converting other projects' checkpoints into videomap models (``videomap convert``).

Three sources are understood:

* **VideoMamba** (``OpenGVLab/VideoMamba``, ``video_sm``): its parameter names are ours already, so the
  conversion infers the architecture from the tensor shapes, builds the matching ``videomamba_*`` model
  (directions merged by sum, VideoMamba's token order) and loads the weights unchanged. The result computes
  what VideoMamba's own model computes.
* **VideoMamba image models** (``image_sm``, the ImageNet weights VideoMamba's video fine-tuning starts
  from): the same names with a ``Conv2d`` stem and no temporal embedding. They become a ``videomamba_*``
  video model as VideoMamba's fine-tuning inflates them: the 2-D kernel in the centre frame of the tubelet,
  the temporal embedding at zero. On one frame the result computes the image model's logits.
* **Image MAP** (``yunzeliu/MAP``): a 2-D model with a different stem and layer arrangement. Its weights
  become a VideoMAP *initialisation*: the ``Conv2d`` patch embedding is inflated to the ``Conv3d`` tubelet,
  the spatial position embedding is resampled, the class tokens are merged into one, and every Mamba and
  attention layer is copied into a layer of the same kind. What has no place in a VideoMAP is listed.

Pickled checkpoints are opened with ``torch.load(weights_only=True)``; only ``trust_pickle=True``
(``--trust-pickle``) lets a file run arbitrary code while it loads.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..layers import infer_square_grid, resample_spatial_pos_embed
from .config import VideoMAPConfig
from .registry import MODEL_CONFIGS, get_model_config
from .videomap import VideoMAP
from .weights import (
    CONVERSION_NAME,
    HEAD_KEYS,
    CheckpointMismatchError,
    LoadReport,
    _unwrap,
    key_section,
    load_state_dict_into,
    save_pretrained,
)

SOURCES = ("videomamba", "videomamba_image", "map")
# How a Conv2d stem becomes a Conv3d one: spread evenly over the tubelet, or all in its centre frame.
INFLATE_MODES = ("average", "centre")
# Per-layer Mamba mixer tensors, named as in VideoMamba / MAP / videomap alike.
MIXER_KEYS = (
    "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
    "A_log", "D", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
    "dt_proj_b.bias", "A_b_log", "D_b", "out_proj.weight",
)
# MAP keeps its attention blocks in a separate list, ``blocks.{j}``; these are the parts a VideoMAP ``A``
# layer has under the same names.
ATTENTION_KEYS = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    "ls1.gamma", "ls2.gamma",
)
# MAP's default head count: its constructors never set it.
MAP_NUM_HEADS = 12


@dataclass
class ConversionReport:
    """What a conversion did, for people: every source tensor is either loaded, transformed or unmapped,
    and every target tensor is either filled from the source or left at its initialisation."""

    source: str
    config: dict = field(default_factory=dict)
    loaded: int = 0
    transformed: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self, limit: int = 40) -> str:
        lines = [f"converted a {self.source} checkpoint: {self.loaded} tensors copied unchanged"]

        def section(title, items):
            lines.extend(key_section(title, items, limit))

        section("transformed", self.transformed)
        section("in the checkpoint but not mapped", self.unmapped)
        section("in the model but left at initialisation", self.initialised)
        section("notes", self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- reading


def read_upstream_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of an upstream ``.pth/.pt/.bin`` (bare, or under ``model``/``module``/``state_dict``,
    with or without a DDP ``module.`` prefix) or ``.safetensors`` file.

    Pickles are read with ``weights_only=True``, which also accepts the ``argparse.Namespace`` that training
    scripts store beside the weights; anything else needs ``trust_pickle=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if trust_pickle:
        state = torch.load(str(path), map_location="cpu", weights_only=False)
    else:
        # Namespace only sets attributes when unpickled: allowing it keeps official checkpoints loadable safely.
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise RuntimeError(
                    f"{path} cannot be read with weights_only=True ({first}). It holds Python objects besides "
                    "tensors; if you trust where the file comes from, convert it with --trust-pickle "
                    "(trust_pickle=True), which lets the file run code while it loads."
                ) from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    # VideoMamba's engine saves {"model": ..., "optimizer": ..., "args": ...}; keep only the weights.
    for key in ("model", "module", "state_dict", "model_state"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    state = _unwrap({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    if not state:
        raise ValueError(f"{path} holds no tensors under a recognised key (model, module, state_dict)")
    return state


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def detect_source(state: dict[str, torch.Tensor]) -> str:
    """``"videomamba"``, ``"videomamba_image"`` or ``"map"``, from keys and shapes only one layout has.

    Both image layouts have a ``Conv2d`` stem ``(D, C, p, p)``. VideoMamba's image model keeps its one class
    token's position in ``pos_embed`` (``1 + N`` rows for a square grid of ``N``, 197 at 224²); MAP's
    ``pos_embed`` has only the ``N`` patch rows, its class tokens' positions being in ``pos_embed_cls``.
    """
    if "pos_embed_cls" in state or any(k.startswith("blocks.") for k in state):
        return "map"
    stem = state.get("patch_embed.proj.weight")
    if stem is None:
        raise ValueError("cannot tell the checkpoint's layout (no patch_embed.proj.weight); pass the source explicitly")
    if "temporal_pos_embedding" in state or stem.dim() == 5:
        return "videomamba"
    if stem.dim() != 4:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(stem.shape)}: neither a Conv2d nor a Conv3d stem")
    rows = state["pos_embed"].shape[1] if "pos_embed" in state else 0
    if _is_square(rows - 1) and not _is_square(rows):
        return "videomamba_image"
    return "map"


# ---------------------------------------------------------------------------------------------- shapes


def _count_indexed(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if indices and indices != set(range(max(indices) + 1)):
        raise ValueError(f"the checkpoint's {prefix}* indices are not contiguous: {sorted(indices)}")
    return len(indices)


def _mamba_fields(state: dict, embed_dim: int) -> dict:
    """``d_state``, ``expand``, ``d_conv``, ``dt_rank`` read off the first Mamba layer's shapes."""
    a_log = state["layers.0.mixer.A_log"]
    inner = a_log.shape[0]
    dt_rank = state["layers.0.mixer.dt_proj.weight"].shape[1]
    return dict(
        d_state=a_log.shape[1],
        expand=inner // embed_dim,
        d_conv=state["layers.0.mixer.conv1d.weight"].shape[-1],
        dt_rank="auto" if dt_rank == math.ceil(embed_dim / 16) else dt_rank,
    )


def _registry_row(embed_dim: int, schedule: str, merge: str) -> str | None:
    for name, row in MODEL_CONFIGS.items():
        if row["embed_dim"] == embed_dim and row["schedule"] == schedule and row.get("merge", "mean") == merge:
            return name
    return None


def _require(state: dict, keys: tuple[str, ...], layout: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"not a {layout} state dict: no {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------- VideoMamba


def videomamba_config(state: dict[str, torch.Tensor], name: str | None = None, **overrides) -> VideoMAPConfig:
    """The config of a VideoMamba ``video_sm`` state dict, read off its tensor shapes.

    The registered ``videomamba_*`` row of the same width and depth is used when there is one (or the one
    ``name`` gives); ``overrides`` (e.g. ``num_frames``) change fields on top.
    """
    _require(state, ("patch_embed.proj.weight", "pos_embed", "temporal_pos_embedding", "layers.0.mixer.A_log"),
             "VideoMamba video_sm")
    proj = state["patch_embed.proj.weight"]  # (D, C, tubelet, p, p)
    if proj.dim() != 5:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(proj.shape)}; a VideoMamba stem is a Conv3d")
    tubelet = proj.shape[2]
    num_frames = state["temporal_pos_embedding"].shape[1] * tubelet
    return _videomamba_row(_videomamba_fields(state, tubelet, num_frames), name).replace(**overrides)


def _videomamba_fields(state: dict[str, torch.Tensor], tubelet_size: int, num_frames: int) -> dict:
    """Config fields of a VideoMamba stack (video or image) read off its shapes, for ``num_frames`` frames in
    tubelets of ``tubelet_size``. The stem ``patch_embed.proj.weight`` is ``(D, C, [k,] p, p)`` and
    ``pos_embed`` is ``(1, 1 + N, D)`` with the class token's row first."""
    proj = state["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    grid_h, grid_w = infer_square_grid(state["pos_embed"].shape[1] - 1)
    return dict(
        embed_dim=embed_dim,
        schedule="M" * _count_indexed(state, "layers."),
        merge="sum",
        in_chans=in_chans,
        patch_size=patch,
        tubelet_size=tubelet_size,
        img_size=grid_h * patch if grid_h == grid_w else (grid_h * patch, grid_w * patch),
        num_frames=num_frames,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        **_mamba_fields(state, embed_dim),
    )


def _videomamba_row(fields: dict, name: str | None) -> VideoMAPConfig:
    """``fields`` on top of the registered row ``name``, or of the ``videomamba_*`` row of the same width and
    depth, or of the defaults when no row has them."""
    name = name or _registry_row(fields["embed_dim"], fields["schedule"], "sum")
    if name is not None:
        return get_model_config(name).replace(**fields)
    return VideoMAPConfig(**fields)


def convert_videomamba(
    state: dict[str, torch.Tensor], name: str | None = None, strict: bool = True, **overrides
) -> tuple[VideoMAP, ConversionReport]:
    """A ``videomamba_*`` model holding a VideoMamba ``video_sm`` state dict.

    The parameter names are shared, so every tensor is copied as it is (position embeddings are resampled
    only if ``overrides`` ask for another ``num_frames``/``img_size``). With ``strict`` any key that does not
    fit raises :class:`CheckpointMismatchError` listing all of them; otherwise they are reported.
    """
    config = videomamba_config(state, name, **overrides)
    model = VideoMAP(config)
    source = videomamba_config(state, name)
    load = load_state_dict_into(model, state, source=source, strict=strict)
    return model, _report_from_load("videomamba", config, model, state, load)


def _report_from_load(
    source: str,
    config: VideoMAPConfig,
    model: VideoMAP,
    state: dict[str, torch.Tensor],
    load: LoadReport,
    converted: dict[str, str] | None = None,
) -> ConversionReport:
    """The report of a conversion that loaded (a form of) ``state`` with :func:`load_state_dict_into`.

    ``converted`` maps the source keys that were changed before loading (e.g. an inflated stem) to a line
    saying how; they count as transformed, not copied, once they have loaded.
    """
    converted = converted or {}
    report = ConversionReport(source=source, config=config.to_dict())
    resampled = {line.split()[0] for line in load.resampled}
    dropped_head = [k for k in HEAD_KEYS if k in state] if load.head_reinitialised else []
    not_loaded = set(load.unexpected) | {n for n, _, _ in load.mismatched} | set(dropped_head)
    report.transformed = [line for key, line in converted.items() if key not in not_loaded]
    report.transformed += [f"resampled {line}" for line in load.resampled]
    report.unmapped = list(load.unexpected) + [f"{n}: {tuple(a)} vs {tuple(b)}" for n, a, b in load.mismatched]
    report.unmapped += [f"{k} (classifier of another size)" for k in dropped_head]
    report.initialised = list(load.missing)
    if load.head_reinitialised:
        report.initialised += [k for k in HEAD_KEYS if k in model.state_dict()]
    not_copied = not_loaded | resampled | set(converted)
    report.loaded = sum(k not in not_copied for k in state)
    return report


# ---------------------------------------------------------------------------------------------- VideoMamba image


def videomamba_image_config(
    state: dict[str, torch.Tensor], name: str | None = None, num_frames: int = 8, tubelet_size: int = 1, **overrides
) -> VideoMAPConfig:
    """The ``videomamba_*`` video config a VideoMamba ``image_sm`` state dict converts into.

    Width, depth, patch size, image size (``pos_embed``), classes (``head``) and the Mamba fields are read off
    the shapes as for a video checkpoint; ``num_frames`` and ``tubelet_size`` are the video model's, since an
    image model has neither. ``overrides`` (e.g. ``img_size``, ``num_classes``) change fields on top.
    """
    _require(state, ("patch_embed.proj.weight", "pos_embed", "cls_token", "layers.0.mixer.A_log"),
             "VideoMamba image_sm")
    proj = state["patch_embed.proj.weight"]  # (D, C, p, p)
    if proj.dim() != 4:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(proj.shape)}; a VideoMamba image stem is a Conv2d")
    return _videomamba_row(_videomamba_fields(state, tubelet_size, num_frames), name).replace(**overrides)


def inflate_image_state(state: dict[str, torch.Tensor], tubelet_size: int, frames: int) -> dict[str, torch.Tensor]:
    """An ``image_sm`` state dict in the layout of VideoMamba's video model, as its video fine-tuning builds it.

    The ``Conv2d`` stem ``(D, C, p, p)`` becomes ``(D, C, tubelet_size, p, p)`` by centre inflation, and a
    zero ``temporal_pos_embedding (1, frames, D)`` is added (``frames`` = the target's ``T'``). Everything
    else, ``pos_embed (1, 1 + N, D)`` included, is kept as it is.
    """
    video = dict(state)
    video["patch_embed.proj.weight"] = inflate_patch_embed(state["patch_embed.proj.weight"], tubelet_size, "centre")
    pos = state["pos_embed"]
    video["temporal_pos_embedding"] = torch.zeros(1, frames, pos.shape[-1], dtype=pos.dtype)
    return video


def convert_videomamba_image(
    state: dict[str, torch.Tensor],
    name: str | None = None,
    num_frames: int = 8,
    tubelet_size: int = 1,
    strict: bool = True,
    **overrides,
) -> tuple[VideoMAP, ConversionReport]:
    """A ``videomamba_*`` video model initialised from a VideoMamba ``image_sm`` state dict.

    The stem is centre-inflated over the tubelet (:func:`inflate_patch_embed` ``"centre"``), the temporal
    embedding starts at zero, ``pos_embed`` is resampled if the target grid differs, and every other tensor
    is copied (the mixer names are the video model's; directions merged by sum). With ``num_frames=1`` and
    ``tubelet_size=1`` the model computes the image model's logits on a ``(B, C, 1, H, W)`` input. The
    classifier is kept unless ``num_classes`` asks for another. ``strict`` as in :func:`convert_videomamba`.
    """
    config = videomamba_image_config(state, name, num_frames, tubelet_size, **overrides)
    model = VideoMAP(config)
    frames = config.grid[0]
    # The inflated checkpoint at the target's T' but the image's own spatial grid: loading then resamples
    # exactly what the target changes.
    source = videomamba_image_config(state, name, config.num_frames, config.tubelet_size)
    load = load_state_dict_into(model, inflate_image_state(state, config.tubelet_size, frames), source=source,
                                strict=strict)
    stem = state["patch_embed.proj.weight"]
    k = config.tubelet_size
    inflated = {"patch_embed.proj.weight": (
        f"patch_embed.proj.weight: Conv2d {tuple(stem.shape)} inflated to Conv3d over {k} frame(s), the 2-D "
        f"kernel in frame {k // 2} of each tubelet and zeros elsewhere"
    )}
    report = _report_from_load("videomamba_image", config, model, state, load, converted=inflated)
    report.initialised.append("temporal_pos_embedding")
    report.notes.append(
        f"temporal_pos_embedding ({frames} steps) zero-initialised: an image model has no time axis, so every "
        "frame starts with the same positions"
    )
    if "head.weight" in state and not load.head_reinitialised:
        report.notes.append(
            f"the image classifier ({config.num_classes} classes) is kept; pass num_classes / --num-classes for a "
            "fresh head to fine-tune"
        )
    return model, report


# ---------------------------------------------------------------------------------------------- image MAP


def map_schedule(depth: int, num_blocks: int, every: int = 3) -> str:
    """The layer order of an image MAP encoder as a schedule string.

    MAP runs attention block ``j`` after Mamba layer ``every·j + every − 1`` (24 Mamba layers and 8 blocks
    give ``"MMMA" * 8``).
    """
    out = []
    for i in range(depth):
        out.append("M")
        if (i + 1) % every == 0 and i // every < num_blocks:
            out.append("A")
    return "".join(out)


def inflate_patch_embed(weight_2d: torch.Tensor, tubelet_size: int, mode: str = "average") -> torch.Tensor:
    """``Conv2d`` weight ``(D, C, p, p)`` → ``Conv3d`` weight ``(D, C, tubelet, p, p)``.

    ``"average"``: the 2-D kernel repeated over the tubelet's frames and divided by their number, so on a
    clip of identical frames the 3-D convolution gives exactly the image model's patch embedding.
    ``"centre"``: the 2-D kernel in frame ``tubelet // 2`` and zeros in the others (VideoMamba's video
    fine-tuning), so each tubelet's token is the image stem applied to that one frame.
    """
    if mode == "average":
        return weight_2d.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    if mode == "centre":
        weight_3d = weight_2d.new_zeros(*weight_2d.shape[:2], tubelet_size, *weight_2d.shape[2:])
        weight_3d[:, :, tubelet_size // 2] = weight_2d
        return weight_3d
    raise ValueError(f"mode must be one of {INFLATE_MODES}, got {mode!r}")


def default_map_heads(embed_dim: int) -> int:
    """MAP's head count (12, which its constructors never change) when it divides the width; otherwise one
    head per 64 channels. Attention weights do not record their head count, so ``num_heads`` overrides this."""
    if embed_dim % MAP_NUM_HEADS == 0:
        return MAP_NUM_HEADS
    return max(1, embed_dim // 64) if embed_dim % max(1, embed_dim // 64) == 0 else 1


def map_config(
    state: dict[str, torch.Tensor],
    name: str | None = None,
    num_frames: int = 8,
    tubelet_size: int = 1,
    num_heads: int | None = None,
    **overrides,
) -> VideoMAPConfig:
    """The VideoMAP config an image MAP state dict converts into.

    Without ``name``: MAP's own arrangement (``map_schedule``), MLP ratio and width, merge ``"mean"``, the
    image size it was trained at, ``num_frames`` frames and no classifier (``num_classes=0``). With ``name``:
    that registered row (its schedule, heads and MLP ratio), which must have the checkpoint's width.
    """
    proj = state["patch_embed.proj.weight"]  # (D, C, p, p)
    if proj.dim() != 4:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(proj.shape)}; an image MAP stem is a Conv2d")
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    grid_h, grid_w = infer_square_grid(state["pos_embed"].shape[1])
    common = dict(
        in_chans=in_chans,
        patch_size=patch,
        tubelet_size=tubelet_size,
        num_frames=num_frames,
        img_size=grid_h * patch,
        num_classes=0,
        **_mamba_fields(state, embed_dim),
    )
    if name is not None:
        config = get_model_config(name, **common)
        if config.embed_dim != embed_dim:
            raise ValueError(f"{name} has width {config.embed_dim}, the MAP checkpoint {embed_dim}")
        if num_heads is not None:
            config = config.replace(num_heads=num_heads)
    else:
        depth, blocks = _count_indexed(state, "layers."), _count_indexed(state, "blocks.")
        fields = dict(embed_dim=embed_dim, schedule=map_schedule(depth, blocks), merge="mean",
                      num_heads=num_heads or default_map_heads(embed_dim), **common)
        if blocks:
            fields["mlp_ratio"] = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
            fields["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
        config = VideoMAPConfig(**fields)
    return config.replace(**overrides)


def _head_count_note(config: VideoMAPConfig, declared: int | None) -> str | None:
    """A note when the target's attention splits the checkpoint's qkv weights into another number of heads.

    The checkpoint's count is ``declared`` (``num_heads``) or, undeclared, MAP's default for its width.
    """
    source_heads = declared or default_map_heads(config.embed_dim)
    if source_heads == config.num_heads:
        return None
    how = "as declared" if declared else "assumed: MAP's default, the weights do not record it"
    target = config.name or "the target"
    # Same tensor shapes, other grouping: nothing fails, so only the report can tell.
    return (
        f"attention heads changed: the checkpoint's blocks have {source_heads} heads ({how}), {target} has "
        f"{config.num_heads} heads; the qkv and proj weights load unchanged but are split into other heads, so the "
        f"attention layers compute another function (pass num_heads / --num-heads {source_heads} to keep "
        f"{source_heads} heads)"
    )


def convert_map(
    state: dict[str, torch.Tensor],
    name: str | None = None,
    num_frames: int = 8,
    tubelet_size: int = 1,
    num_heads: int | None = None,
    **overrides,
) -> tuple[VideoMAP, ConversionReport]:
    """A VideoMAP initialised from an image MAP state dict (see :func:`map_config` for the architecture).

    Mapping: Mamba layer ``i`` → the ``i``-th ``M`` layer; attention block ``j`` → the ``j``-th ``A`` layer
    (tensors whose shapes differ, e.g. another MLP ratio, are left out); ``norm_f`` as it is; the patch
    embedding inflated over the tubelet; the class tokens and their position embeddings averaged into the
    one class token and ``pos_embed[0]``; the spatial ``pos_embed`` resampled to the target grid. The
    temporal embedding starts at zero (an image model has none). The classifier, neck and the pretraining
    decoder have no counterpart and are reported as unmapped.
    """
    config = map_config(state, name, num_frames, tubelet_size, num_heads, **overrides)
    model = VideoMAP(config)
    target = model.state_dict()
    new = {}
    used: set[str] = set()
    report = ConversionReport(source="map", config=config.to_dict())

    def put(key_out: str, tensor: torch.Tensor, *sources: str, note: str | None = None) -> None:
        if key_out not in target or target[key_out].shape != tensor.shape:
            return
        new[key_out] = tensor.to(target[key_out].dtype)
        used.update(sources)
        if note:
            report.transformed.append(note)
        else:
            report.loaded += 1

    # Stem.
    w2d = state["patch_embed.proj.weight"]
    put("patch_embed.proj.weight", inflate_patch_embed(w2d, config.tubelet_size), "patch_embed.proj.weight",
        note=f"patch_embed.proj.weight: Conv2d {tuple(w2d.shape)} inflated to Conv3d over "
             f"{config.tubelet_size} frame(s), divided by {config.tubelet_size}")
    if "patch_embed.proj.bias" in state:
        put("patch_embed.proj.bias", state["patch_embed.proj.bias"], "patch_embed.proj.bias")

    # Class token(s): MAP spreads several through the sequence; VideoMAP has one in front.
    dim = config.embed_dim
    cls_pos = torch.zeros(1, 1, dim)
    if "pos_embed_cls" in state:
        cls_pos = state["pos_embed_cls"].float().mean(dim=1, keepdim=True)
    if "cls_token" in state:
        n_cls = state["cls_token"].shape[1]
        put("cls_token", state["cls_token"].float().mean(dim=1, keepdim=True), "cls_token",
            note=f"cls_token: {n_cls} class token(s) averaged into one")
    old_grid = infer_square_grid(state["pos_embed"].shape[1])
    new_grid = config.grid[1:]
    pos = torch.cat([cls_pos, state["pos_embed"].float()], dim=1)
    pos = resample_spatial_pos_embed(pos, old_grid, new_grid)
    sources = ["pos_embed"] + (["pos_embed_cls"] if "pos_embed_cls" in state else [])
    size = f"{old_grid[0]}x{old_grid[1]}" + (f" -> {new_grid[0]}x{new_grid[1]}" if tuple(new_grid) != old_grid else " kept")
    put("pos_embed", pos, *sources,
        note=f"pos_embed: {size}" + (", class-token rows averaged into row 0" if "pos_embed_cls" in state else ", row 0 zero"))

    # Layers, by kind and in order.
    mamba_slots = [i for i, kind in enumerate(config.schedule) if kind == "M"]
    attn_slots = [i for i, kind in enumerate(config.schedule) if kind == "A"]
    for i in range(_count_indexed(state, "layers.")):
        if i >= len(mamba_slots):
            break
        slot = mamba_slots[i]
        for key in ("norm.weight",) + tuple(f"mixer.{k}" for k in MIXER_KEYS):
            if f"layers.{i}.{key}" in state:
                put(f"layers.{slot}.{key}", state[f"layers.{i}.{key}"], f"layers.{i}.{key}")
    for j in range(_count_indexed(state, "blocks.")):
        if j >= len(attn_slots):
            break
        slot = attn_slots[j]
        for key in ATTENTION_KEYS:
            if f"blocks.{j}.{key}" in state:
                put(f"layers.{slot}.{key}", state[f"blocks.{j}.{key}"], f"blocks.{j}.{key}")
    if "norm_f.weight" in state:
        put("norm_f.weight", state["norm_f.weight"], "norm_f.weight")

    report.unmapped = [
        f"{k} {tuple(state[k].shape)}" for k in state if k not in used
    ]
    report.initialised = [k for k in target if k not in new]
    if _count_indexed(state, "blocks."):
        report.notes.append(
            "MAP's attention blocks act on the Mamba branch output, VideoMAP's A layers on the residual stream; "
            "the weights are an initialisation for fine-tuning, not the same function"
        )
    if attn_slots and num_heads is None and name is None:
        report.notes.append(
            f"num_heads={config.num_heads} assumed (attention weights do not record it; MAP's default is "
            f"{MAP_NUM_HEADS}); pass num_heads / --num-heads if the checkpoint used another"
        )
    if attn_slots and _count_indexed(state, "blocks."):
        note = _head_count_note(config, num_heads)
        if note:
            report.notes.append(note)
    model.load_state_dict({**target, **new})
    return model, report


# ---------------------------------------------------------------------------------------------- files


def convert_checkpoint(
    src: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    source: str = "auto",
    name: str | None = None,
    trust_pickle: bool = False,
    strict: bool = True,
    overwrite: bool = False,
    **options,
) -> tuple[VideoMAP, ConversionReport]:
    """Read an upstream checkpoint, convert it, and (with ``out_dir``) save a videomap model directory
    (``config.json`` + ``model.safetensors`` + ``conversion.json``, the report).

    Args:
        source: ``"videomamba"``, ``"videomamba_image"``, ``"map"`` or ``"auto"`` (from the keys).
        name: the registered row to build (default: inferred for VideoMamba, MAP's own layout for MAP).
        trust_pickle: allow arbitrary pickled objects (never needed for plain state dicts).
        strict: VideoMamba (video or image) only: refuse keys that do not fit instead of reporting them.
        options: :func:`convert_videomamba` overrides; :func:`convert_videomamba_image` ``num_frames``,
            ``tubelet_size`` and overrides; or :func:`convert_map` ``num_frames``, ``tubelet_size``,
            ``num_heads`` and overrides.
    """
    state = read_upstream_checkpoint(src, trust_pickle=trust_pickle)
    kind = detect_source(state) if source == "auto" else source
    if kind not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} or 'auto', got {source!r}")
    _check_options(kind, options)
    if kind == "videomamba":
        model, report = convert_videomamba(state, name, strict=strict, **options)
    elif kind == "videomamba_image":
        model, report = convert_videomamba_image(state, name, strict=strict, **options)
    else:
        model, report = convert_map(state, name, **options)
    if out_dir is not None:
        save_converted(model, report, out_dir, overwrite=overwrite)
    return model, report


def _check_options(kind: str, options: dict) -> None:
    """Refuse options that mean nothing for the source ``kind``, naming the first one."""
    if "num_heads" in options and kind != "map":
        raise ValueError(f"num_heads applies to MAP checkpoints only (a {kind} model has no attention layers)")
    if "tubelet_size" in options and kind == "videomamba":
        raise ValueError(
            "tubelet_size applies to image checkpoints only (MAP, videomamba_image); a VideoMamba video stem is kept "
            "as it is"
        )


def save_converted(model: VideoMAP, report: ConversionReport, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the model folder with its ``conversion.json`` report; an interrupted conversion never leaves a
    half-written folder under the requested name (see :func:`~videomap.models.weights.save_pretrained`)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_pretrained(model, out, files={CONVERSION_NAME: report.to_dict()})
