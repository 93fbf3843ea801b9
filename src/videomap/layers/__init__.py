"""Building blocks of VideoMAP backbones: patch embedding, position embeddings, norms, DropPath, MLP,
attention, the bidirectional Mamba mixer, and the two residual layers."""

from .attention import Attention
from .bimamba import MERGE_MODES, BiMamba
from .blocks import LAYER_TYPES, LayerScale, MambaLayer, TransformerLayer, validate_schedule
from .drop import DropPath, drop_path
from .linear import Linear
from .mlp import Mlp
from .norm import RMSNorm
from .patch_embed import PatchEmbed3d
from .pos_embed import (
    add_position_embeddings,
    infer_square_grid,
    resample_spatial_pos_embed,
    resample_temporal_pos_embed,
)
from .weight_init import init_dt_proj_, s4d_real_A_log, trunc_normal_

__all__ = [
    "Attention",
    "BiMamba",
    "DropPath",
    "LAYER_TYPES",
    "LayerScale",
    "Linear",
    "MERGE_MODES",
    "MambaLayer",
    "Mlp",
    "PatchEmbed3d",
    "RMSNorm",
    "TransformerLayer",
    "add_position_embeddings",
    "drop_path",
    "infer_square_grid",
    "init_dt_proj_",
    "resample_spatial_pos_embed",
    "resample_temporal_pos_embed",
    "s4d_real_A_log",
    "trunc_normal_",
    "validate_schedule",
]
