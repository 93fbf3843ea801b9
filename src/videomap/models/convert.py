"""Converting other projects' checkpoints into videomap models (``videomap convert``).

Two sources are understood:

* **VideoMamba** (``OpenGVLab/VideoMamba``, ``video_sm``): its parameter names are ours already, so the
  conversion infers the architecture from the tensor shapes, builds the matching ``videomamba_*`` model
  (directions merged by sum, VideoMamba's token order) and loads the weights unchanged. The result computes
  what VideoMamba's own model computes.
* **Image MAP** (``yunzeliu/MAP``): a 2-D model with a different stem and layer arrangement. Its weights
  become a VideoMAP *initialisation*: the ``Conv2d`` patch embedding is inflated to the ``Conv3d`` tubelet,
  the spatial position embedding is resampled, the class tokens are merged into one, and every Mamba and
  attention layer is copied into a layer of the same kind. What has no place in a VideoMAP is listed.

Pickled checkpoints are opened with ``torch.load(weights_only=True)``; only ``trust_pickle=True``
(``--trust-pickle``) lets a file run arbitrary code while it loads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..layers import infer_square_grid, resample_spatial_pos_embed
from .checkpoint import HEAD_KEYS, CheckpointMismatchError, _unwrap, key_section, load_state_dict_into
from .config import VideoMAPConfig
from .registry import MODEL_CONFIGS, get_model_config
from .videomap import VideoMAP

SOURCES = ("videomamba", "map")
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


def detect_source(state: dict[str, torch.Tensor]) -> str:
    """``"videomamba"`` or ``"map"``, from keys only the one layout has."""
    if "pos_embed_cls" in state or any(k.startswith("blocks.") for k in state):
        return "map"
    if "temporal_pos_embedding" in state or state.get("patch_embed.proj.weight", torch.empty(0)).dim() == 5:
        return "videomamba"
    if state.get("patch_embed.proj.weight", torch.empty(0)).dim() == 4:
        return "map"
    raise ValueError("cannot tell the checkpoint's layout (no patch_embed.proj.weight); pass the source explicitly")


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


# ---------------------------------------------------------------------------------------------- VideoMamba


def videomamba_config(state: dict[str, torch.Tensor], name: str | None = None, **overrides) -> VideoMAPConfig:
    """The config of a VideoMamba ``video_sm`` state dict, read off its tensor shapes.

    The registered ``videomamba_*`` row of the same width and depth is used when there is one (or the one
    ``name`` gives); ``overrides`` (e.g. ``num_frames``) change fields on top.
    """
    proj = state["patch_embed.proj.weight"]  # (D, C, tubelet, p, p)
    if proj.dim() != 5:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(proj.shape)}; a VideoMamba stem is a Conv3d")
    embed_dim, in_chans, tubelet, patch = proj.shape[0], proj.shape[1], proj.shape[2], proj.shape[-1]
    depth = _count_indexed(state, "layers.")
    grid_h, grid_w = infer_square_grid(state["pos_embed"].shape[1] - 1)
    fields = dict(
        embed_dim=embed_dim,
        schedule="M" * depth,
        merge="sum",
        in_chans=in_chans,
        patch_size=patch,
        tubelet_size=tubelet,
        img_size=grid_h * patch if grid_h == grid_w else (grid_h * patch, grid_w * patch),
        num_frames=state["temporal_pos_embedding"].shape[1] * tubelet,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        **_mamba_fields(state, embed_dim),
    )
    name = name or _registry_row(embed_dim, fields["schedule"], "sum")
    if name is not None:
        config = get_model_config(name).replace(**fields)
    else:
        config = VideoMAPConfig(**fields)
    return config.replace(**overrides)


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
    report = ConversionReport(source="videomamba", config=config.to_dict())
    resampled = {line.split()[0] for line in load.resampled}
    dropped_head = [k for k in HEAD_KEYS if k in state] if load.head_reinitialised else []
    report.transformed = [f"resampled {line}" for line in load.resampled]
    report.unmapped = list(load.unexpected) + [f"{n}: {tuple(a)} vs {tuple(b)}" for n, a, b in load.mismatched]
    report.unmapped += [f"{k} (classifier of another size)" for k in dropped_head]
    report.initialised = list(load.missing)
    if load.head_reinitialised:
        report.initialised += [k for k in HEAD_KEYS if k in model.state_dict()]
    not_loaded = resampled | set(load.unexpected) | {n for n, _, _ in load.mismatched} | set(dropped_head)
    report.loaded = sum(k not in not_loaded for k in state)
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


def inflate_patch_embed(weight_2d: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """``Conv2d`` weight ``(D, C, p, p)`` → ``Conv3d`` weight ``(D, C, tubelet, p, p)``.

    The 2-D kernel is repeated over the tubelet's frames and divided by their number, so on a clip of
    identical frames the 3-D convolution gives exactly the image model's patch embedding.
    """
    return weight_2d.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size


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
        source: ``"videomamba"``, ``"map"`` or ``"auto"`` (from the keys).
        name: the registered row to build (default: inferred for VideoMamba, MAP's own layout for MAP).
        trust_pickle: allow arbitrary pickled objects (never needed for plain state dicts).
        strict: VideoMamba only: refuse keys that do not fit instead of reporting them.
        options: :func:`convert_videomamba` overrides, or :func:`convert_map` ``num_frames``,
            ``tubelet_size``, ``num_heads`` and overrides.
    """
    state = read_upstream_checkpoint(src, trust_pickle=trust_pickle)
    kind = detect_source(state) if source == "auto" else source
    if kind not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES} or 'auto', got {source!r}")
    if kind == "videomamba":
        map_only = sorted(set(options) & {"tubelet_size", "num_heads"})
        if map_only:
            raise ValueError(f"{', '.join(map_only)} apply to MAP checkpoints only (a VideoMamba stem is kept as it is)")
        model, report = convert_videomamba(state, name, strict=strict, **options)
    else:
        model, report = convert_map(state, name, **options)
    if out_dir is not None:
        save_converted(model, report, out_dir, overwrite=overwrite)
    return model, report


def save_converted(model: VideoMAP, report: ConversionReport, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the model directory next to its final place, then move it there, so an interrupted conversion
    never leaves a half-written directory under the requested name."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        (tmp / "conversion.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videomap convert",
        description="Convert a VideoMamba (video_sm) or image MAP checkpoint into a videomap model directory.",
    )
    parser.add_argument("src", help="upstream checkpoint (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("out", help="output directory (config.json + model.safetensors + conversion.json)")
    parser.add_argument("--from", dest="source", choices=("auto",) + SOURCES, default="auto",
                        help="checkpoint layout (default: detected from the keys)")
    parser.add_argument("--model", default=None,
                        help="registered model to build (default: inferred for VideoMamba; MAP's own layer layout for MAP)")
    parser.add_argument("--num-frames", type=int, default=None, help="frames the model is built for")
    parser.add_argument("--img-size", type=int, default=None, help="image size the model is built for")
    parser.add_argument("--tubelet-size", type=int, default=None, help="MAP: frames per tubelet of the inflated stem")
    parser.add_argument("--num-heads", type=int, default=None, help=f"MAP: attention heads (MAP's default {MAP_NUM_HEADS})")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs (a new head if it differs)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="unpickle arbitrary objects (only for files from a source you trust)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="VideoMamba: report keys that do not fit instead of refusing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser


def convert_main(argv: list[str] | None = None) -> int:
    """``videomap convert SRC OUT [options]``; returns the exit status."""
    args = build_parser().parse_args(argv)
    keys = ("num_frames", "img_size", "num_classes", "tubelet_size", "num_heads")
    options = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    try:
        _, report = convert_checkpoint(
            args.src, args.out, source=args.source, name=args.model, trust_pickle=args.trust_pickle,
            strict=not args.allow_partial, overwrite=args.overwrite, **options,
        )
    except (CheckpointMismatchError, FileNotFoundError, FileExistsError, RuntimeError, ValueError, TypeError) as error:
        print(f"videomap convert: {error}", file=sys.stderr)
        return 1
    print(report.describe())
    print(f"wrote {args.out} (load it with videomap.VideoMAP.from_pretrained or create_model(..., checkpoint_path=...))")
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())
