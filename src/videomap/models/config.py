"""The typed configuration of a VideoMAP backbone (DESIGN §2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from ..layers.bimamba import MERGE_MODES
from ..layers.blocks import validate_schedule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GLOBAL_POOLS = ("cls", "avg")

# Fields that change what the weights compute. A checkpoint saved with other values is a different
# architecture, not the same one at another input size.
ARCHITECTURE_FIELDS = (
    "embed_dim", "schedule", "num_heads", "patch_size", "tubelet_size", "in_chans", "d_state", "expand",
    "d_conv", "dt_rank", "merge", "mlp_ratio", "qkv_bias", "layer_scale_init", "norm_eps",
)
# Fields that only matter while training; never inherited from a checkpoint's config.
TRAINING_FIELDS = ("drop_rate", "drop_path_rate", "dynamic_size")


@dataclass(frozen=True)
class VideoMAPConfig:
    """Everything needed to rebuild a backbone; saved as ``config.json`` beside its weights.

    Attributes:
        embed_dim: token width ``D``.
        schedule: one letter per layer, ``M`` = bidirectional Mamba layer, ``A`` = Transformer layer;
            ``"MMMMA" * 6`` is an attention layer after every fourth Mamba layer.
        num_heads: attention heads of the ``A`` layers (``embed_dim`` must divide evenly).
        patch_size, tubelet_size: the patch embedding's spatial and temporal stride.
        img_size: input ``H = W`` or ``(H, W)`` the position embeddings are learned for.
        num_frames: input frames ``T`` the temporal embedding is learned for (``T' = T / tubelet_size``).
        num_classes: classifier outputs; 0 for no head (``forward`` returns pooled features).
        in_chans: input channels.
        d_state, expand, d_conv, dt_rank: Mamba's state size ``N``, ``E = expand·D``, causal-conv width and
            the rank of the step-size projection (``"auto"`` = ``ceil(D / 16)``).
        merge: how the two scan directions combine, ``"mean"`` (VideoMAP) or ``"sum"`` (VideoMamba).
        mlp_ratio, qkv_bias, layer_scale_init: Transformer layer MLP width ratio, qkv bias, LayerScale
            initial value (``None`` = no LayerScale).
        drop_rate: dropout before the classifier. drop_path_rate: stochastic depth at the last layer,
            increasing linearly from 0 at the first.
        norm_eps: epsilon of every norm.
        residual_in_fp32: keep the residual stream in fp32 under autocast.
        dynamic_size: accept other ``T/H/W`` at forward time by resampling the position embeddings.
        global_pool: ``"cls"`` (class token) or ``"avg"`` (mean of the patch tokens) before the head.
        mean, std: the per-channel normalisation the model expects its input to have had.
        name: the registry name the config came from, if any.
    """

    embed_dim: int = 384
    schedule: str = "MMMMA" * 6
    num_heads: int = 6
    patch_size: int = 16
    tubelet_size: int = 1
    img_size: int | tuple[int, int] = 224
    num_frames: int = 8
    num_classes: int = 400
    in_chans: int = 3
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | str = "auto"
    merge: str = "mean"
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_scale_init: float | None = None
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    dynamic_size: bool = False
    global_pool: str = "cls"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    name: str | None = None

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs compare and hash the same after a round trip.
        if isinstance(self.img_size, list):
            object.__setattr__(self, "img_size", tuple(self.img_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        validate_schedule(self.schedule)
        if self.merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {MERGE_MODES}, got {self.merge!r}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
        if "A" in self.schedule and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not (self.dt_rank == "auto" or (isinstance(self.dt_rank, int) and self.dt_rank > 0)):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}")
        height, width = self.image_hw
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} is not divisible by tubelet_size {self.tubelet_size}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values each, got {self.mean} and {self.std}")

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(H, W)``."""
        if isinstance(self.img_size, int):
            return self.img_size, self.img_size
        height, width = self.img_size
        return int(height), int(width)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T', H/p, W/p)`` at the configured input size."""
        height, width = self.image_hw
        return self.num_frames // self.tubelet_size, height // self.patch_size, width // self.patch_size

    @property
    def num_layers(self) -> int:
        return len(self.schedule)

    def replace(self, **changes: Any) -> VideoMAPConfig:
        """A copy with ``changes`` applied; unknown field names raise a ``TypeError`` naming them."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown VideoMAPConfig field(s) {unknown}; valid fields: {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoMAPConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ``TypeError`` naming them."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown VideoMAPConfig field(s) {unknown}; valid fields: {field_names()}")
        return cls(**data)


def field_names() -> list[str]:
    return [f.name for f in fields(VideoMAPConfig)]
