"""The two residual layers of a VideoMAP stack, and the table mapping schedule letters to them.

Both layers take and return the residual stream ``(B, L, D)``; its dtype is whatever the caller keeps it in
(fp32 in VideoMAP). Branch outputs may be bf16 under autocast: adding them to an fp32 stream promotes back
to fp32, so the stream never rounds to bf16.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .attention import Attention
from .bimamba import BiMamba
from .drop import DropPath
from .mlp import Mlp
from .norm import RMSNorm


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT), ``x * gamma``."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = float(init_value)
        self.gamma = nn.Parameter(torch.full((dim,), self.init_value))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class MambaLayer(nn.Module):
    """``x + drop_path(BiMamba(RMSNorm(x)))``.

    Submodules are named ``norm`` and ``mixer`` as in VideoMamba's ``Block``; VideoMamba's fused
    add-then-norm ordering computes the same function.
    """

    kind = "M"

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        merge: str = "mean",
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.mixer = BiMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, merge=merge)
        self.drop_path = DropPath(drop_path)

    @classmethod
    def from_config(cls, cfg: Any, drop_path: float = 0.0) -> "MambaLayer":
        """Built from a backbone config's fields (``embed_dim``, ``d_state``, ``d_conv``, ``expand``,
        ``dt_rank``, ``merge``, ``norm_eps``), e.g. a :class:`~videomap.models.VideoMAPConfig`."""
        return cls(cfg.embed_dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, dt_rank=cfg.dt_rank,
                   merge=cfg.merge, norm_eps=cfg.norm_eps, drop_path=drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, L, D)`` → ``(B, L, D)``."""
        return x + self.drop_path(self.mixer(x, norm=self.norm))


class TransformerLayer(nn.Module):
    """Pre-norm Transformer layer: ``x + drop_path(Attn(LN(x)))`` then ``x + drop_path(MLP(LN(x)))``."""

    kind = "A"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_scale_init: float | None = None,
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    @classmethod
    def from_config(cls, cfg: Any, drop_path: float = 0.0) -> "TransformerLayer":
        """Built from a backbone config's fields (``embed_dim``, ``num_heads``, ``mlp_ratio``, ``qkv_bias``,
        ``layer_scale_init``, ``norm_eps``), e.g. a :class:`~videomap.models.VideoMAPConfig`."""
        return cls(cfg.embed_dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                   layer_scale_init=cfg.layer_scale_init, norm_eps=cfg.norm_eps, drop_path=drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: ``(B, L, D)`` → ``(B, L, D)``; ``attn_mask`` as in :class:`Attention` (the backbone passes none)."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


# Schedule letter -> layer class, the one table a schedule string such as "MMMMA" * 6 is read through: the
# backbone builds layer i as LAYER_TYPES[schedule[i]].from_config(config, drop_path_i).
LAYER_TYPES: dict[str, type[nn.Module]] = {"M": MambaLayer, "A": TransformerLayer}


def validate_schedule(schedule: str) -> str:
    """Return ``schedule`` if it is a non-empty string of known layer letters; raise otherwise."""
    if not isinstance(schedule, str) or not schedule:
        raise ValueError(f"schedule must be a non-empty string of layer letters, got {schedule!r}")
    unknown = sorted(set(schedule) - set(LAYER_TYPES))
    if unknown:
        raise ValueError(f"schedule {schedule!r} has unknown layer letters {unknown}; known: {sorted(LAYER_TYPES)}")
    return schedule
